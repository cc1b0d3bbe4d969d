"""Optimizers (AdamW; Muon for hidden matrices) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlm.training.performance import bf16_is_fast


OPTIMIZERS = ("muon", "adamw")


def build_optimizer(model: nn.Module, *, name: str = "adamw", lr: float, weight_decay: float,
                    betas: tuple[float, float]):
    """AdamW everywhere ("adamw"), or Muon for the transformer blocks' matrices and AdamW for the
    rest ("muon": embeddings, norms and biases are not hidden matrices, Muon does not apply).
    Weight decay on 2-D weights only, never on norms and biases (nanoGPT)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in params if name == "muon" and p.dim() == 2 and n.startswith("blocks.")]
    chosen = set(map(id, hidden))
    rest = [p for _, p in params if id(p) not in chosen]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in rest)
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    if not hidden:
        return adamw
    return Optimizers(adamw, Muon(hidden, lr=lr, weight_decay=weight_decay))


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to lr * min_lr_ratio at
    `total_steps` (Loshchilov & Hutter, SGDR, eq. 5, one cycle). `step` counts from 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to each G (U V^T of its SVD), approximately, by a quintic
    Newton-Schulz iteration with Jordan et al.'s coefficients; (..., A, B) -> (..., A, B).

    In bfloat16, as Jordan et al. run it, where the hardware has bf16 matrix units: the iteration
    only has to land the singular values near 1, and on an AMX CPU bf16 products are 2.7x faster
    than float32 (a 384x1536 matrix: 26 ms against 71 ms). Elsewhere in float32: a CPU without
    bf16 units (AVX2 only) emulates bf16 products about 150x slower than float32 ones, which made
    the optimizer step most of a training step."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16 if bf16_is_fast(G.device) else torch.float32)
    wide = X.shape[-2] <= X.shape[-1]
    if not wide:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., small, small)
        X = a * X + (b * A + c * A @ A) @ X
    return X if wide else X.mT


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024): momentum SGD whose update of each 2-D weight is orthogonalised
    by Newton-Schulz, scaled by 0.2 sqrt(max(A, B)) so that its RMS matches AdamW's (Liu et al.,
    "Muon is scalable for LLM training", 2025, eq. 4): it then shares AdamW's learning rate and
    weight decay. Weights of one shape are orthogonalised together in one batched product."""

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, items in by_shape.items():
                # Sharded weights (FSDP2) are orthogonalised whole: Newton-Schulz needs the full matrix.
                whole = [u.full_tensor() if hasattr(u, "full_tensor") else u for _, u in items]
                orthogonal = newton_schulz(torch.stack(whole), group["ns_steps"])  # (n, A, B)
                scale = 0.2 * math.sqrt(max(shape))
                for (p, _), o in zip(items, orthogonal):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(_like(o.to(p.dtype), p), alpha=-group["lr"] * scale)


def _like(update: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`update` (whole) cut to the shard of `p` this process holds, when `p` is sharded."""
    if not hasattr(p, "placements"):
        return update
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(update, p.device_mesh, p.placements, src_data_rank=None)


class Optimizers:
    """Several optimizers stepped as one (Muon for hidden matrices, AdamW for the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
