"""Block diffusion: autoregressive over blocks, masked diffusion within each (BD3-LM, Arriola et al., 2025).

log p(x) = sum_k log p(x^k | x^<k), and each block's term is bounded by the masked-diffusion
NELBO conditioned on the clean blocks before it (BD3-LM eq. 6). Block size 1 is the AR
model (a single masked token predicted from the clean prefix); block size L is masked
diffusion over the whole sequence.

Training runs the noised and the clean sequence in one pass (BD3-LM sec. 3.2, "vectorized
training"): the model reads [x_t, x_0] (B, 2L) with both halves at positions 0..L-1 and
the mask

    noisy query in block k  -> noisy keys of block k, clean keys of blocks < k
    clean query in block k  -> clean keys of blocks <= k          (block-causal)

so the clean half builds exactly the keys and values that the sampler later caches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import Denoiser, LossOutput, low_discrepancy_times
from dlm.processes.masked import MaskedDiffusion
from dlm.schedules import Schedule, make_schedule, schedule_to_dict

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # spreads one stratified u over the blocks of a sequence


def block_ids(length: int, block_size: int, *, start: int = 0, device=None) -> Tensor:
    """Block index of each position, counting from `start` (positions before it get negative
    blocks, so that `start` is always a block boundary); -> (length,)."""
    return torch.div(torch.arange(length, device=device) - start, block_size, rounding_mode="floor")


def training_mask(length: int, block_size: int, attention_mask: Tensor | None = None,
                  device=None) -> Tensor:
    """The (B or 1, 1, 2L, 2L) bool mask of [x_t, x_0] described in the module docstring."""
    blk = block_ids(length, block_size, device=device)  # (L,)
    same = blk[:, None] == blk[None, :]  # (L, L)
    before = blk[:, None] > blk[None, :]  # (L, L): key block strictly earlier than the query's
    noisy_rows = torch.cat([same, before], dim=1)  # (L, 2L)
    clean_rows = torch.cat([torch.zeros_like(same), same | before], dim=1)  # (L, 2L)
    mask = torch.cat([noisy_rows, clean_rows], dim=0)[None, None]  # (1, 1, 2L, 2L)
    if attention_mask is not None:
        keys = torch.cat([attention_mask, attention_mask], dim=1)  # (B, 2L)
        mask = mask & keys[:, None, None, :]
        mask = mask | torch.eye(2 * length, dtype=torch.bool, device=device)  # padding attends itself: no empty rows
    return mask


class BlockDiffusion:
    name = "block"
    bound = "NELBO (upper bound on -log p), masked diffusion within blocks"
    default_sampler = "block"
    samplers = ("block",)
    infills = False  # a block sees only the text before it
    absorbing = True  # within a block: the masked process
    extends_context = True  # the sampler slides a window over its cache: it can write past max_len
    TRAINING_DEFAULTS = MaskedDiffusion.TRAINING_DEFAULTS
    schedules = MaskedDiffusion.schedules

    def __init__(self, *, vocab_size: int, mask_id: int, pad_id: int | None = None, bos_id: int | None = None,
                 block_size: int = 16,
                 schedule: Schedule | None = None, time_eps: float = 1e-3, objective: str = "nelbo"):
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.masked = MaskedDiffusion(vocab_size=vocab_size, mask_id=mask_id, pad_id=pad_id, bos_id=bos_id,
                                      schedule=schedule,
                                      time_eps=time_eps, objective=objective)
        self.vocab_size, self.mask_id, self.block_size = vocab_size, mask_id, block_size

    schedule = property(lambda self: self.masked.schedule)
    objective = property(lambda self: self.masked.objective)

    def __repr__(self) -> str:
        return f"BlockDiffusion(block_size={self.block_size}, schedule={self.schedule}, objective={self.objective!r})"

    def model_options(self) -> dict:
        # The process passes its own block mask; "bidirectional" is what the model does without one.
        return {"attention": "bidirectional", "time_conditioning": False}

    def config(self) -> dict:
        return {"name": self.name, "block_size": self.block_size, "schedule": schedule_to_dict(self.schedule),
                "time_eps": self.masked.time_eps, "objective": self.objective}

    @classmethod
    def from_config(cls, config: dict, *, vocab_size: int, special_ids: dict[str, int]) -> "BlockDiffusion":
        return cls(vocab_size=vocab_size, mask_id=special_ids["mask"], pad_id=special_ids.get("pad"),
                   bos_id=special_ids.get("bos"), block_size=int(config.get("block_size", 16)),
                   schedule=make_schedule(**config.get("schedule", {"name": "linear"})),
                   time_eps=config.get("time_eps", 1e-3), objective=config.get("objective", "nelbo"))

    # -- the masked process inside a block -----------------------------------------------
    def prior(self, shape, *, generator=None, device="cpu") -> Tensor:
        return self.masked.prior(shape, generator=generator, device=device)

    def x0_logits(self, logits: Tensor) -> Tensor:
        return self.masked.x0_logits(logits)

    def step(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor, *, generator=None) -> Tensor:
        """The masked reverse step, applied to the block being denoised."""
        return self.masked.step(x_t, logits, t, s, generator=generator)

    def corrupt(self, x0: Tensor, t: Tensor, *, loss_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Mask each block at its own time; t (B, K) for K = ceil(L / block_size) blocks, or (B,)."""
        return self.masked.corrupt(x0, self.per_token(t, x0.shape[1]), loss_mask=loss_mask, generator=generator)

    def per_token(self, t: Tensor, length: int) -> Tensor:
        """(B, K) block times -> (B, L) token times ((B,) passes through)."""
        if t.dim() == 1:
            return t
        return t.repeat_interleave(self.block_size, dim=1)[:, :length]

    def num_blocks(self, length: int) -> int:
        return -(-length // self.block_size)

    # -- the denoiser on [x_t, x_0] ------------------------------------------------------
    def denoise(self, denoiser: Denoiser, x_t: Tensor, x0: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Logits for the noisy half (B, L, V) from one pass over [x_t, x_0] (B, 2L)."""
        B, L = x0.shape
        if attention_mask is None:
            positions = torch.arange(L, device=x0.device).expand(B, L)  # (B, L)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        mask = training_mask(L, self.block_size, attention_mask, device=x0.device)
        t = torch.zeros(B, device=x0.device)  # the masked denoiser reads the noise level off the canvas
        logits = denoiser(torch.cat([x_t, x0], dim=1), t, positions=torch.cat([positions, positions], dim=1),
                          mask=mask)  # (B, 2L, V)
        return logits[:, :L]

    # -- objective ---------------------------------------------------------------------
    def loss(self, denoiser: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput:
        """sum_k E_{t_k} [ -alpha'(t_k)/(1 - alpha(t_k)) sum_{l in block k, masked} -log p(x_l | x_t^k, x^<k) ]
        (BD3-LM eq. 8), one time per block, low-discrepancy over the batch's blocks. t (B, K)."""
        B, L = x0.shape
        K = self.num_blocks(L)
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        if t is None:
            t = low_discrepancy_times(B * K, eps=self.masked.time_eps, generator=generator,
                                      device=x0.device).view(B, K)
        tok_t = self.per_token(t, L)  # (B, L)
        x_t = self.corrupt(x0, t, loss_mask=loss_mask, generator=generator)
        masked = (x_t == self.mask_id) & loss_mask  # (B, L): a [MASK] in the condition (dropped prompt) is not scored
        logits = self.denoise(denoiser, x_t, x0, attention_mask)
        ce = F.cross_entropy(self.x0_logits(logits[masked]), x0[masked], reduction="none")  # (N_masked,)
        weight = self.masked.nelbo_weight(tok_t)  # (B, L) float64
        nelbo = torch.zeros(B, dtype=torch.float64, device=x0.device).index_put_(
            (masked.nonzero()[:, 0],), weight[masked] * ce.double(), accumulate=True)  # (B,)
        num_tokens = loss_mask.sum(dim=1)
        if self.objective == "nelbo":
            per_token = weight[masked] * ce.double()
        else:  # "normalized": each block's 1 - alpha(t_k) replaced by the fraction of it actually masked
            blk = block_ids(L, self.block_size, device=x0.device).expand(B, L)  # (B, L)
            flat = torch.arange(B, device=x0.device)[:, None] * K + blk  # (B, L): one id per (sequence, block)
            scored = torch.zeros(B * K, device=x0.device).index_add_(0, flat.flatten(), loss_mask.flatten().float())
            hidden = torch.zeros(B * K, device=x0.device).index_add_(0, flat.flatten(), masked.flatten().float())
            ratio = (scored / hidden.clamp(min=1)).double()[flat]  # (B, L)
            per_token = (-self.schedule.alpha_prime(tok_t.double()) * ratio)[masked] * ce.double()
        loss = (per_token.sum() / num_tokens.sum().clamp(min=1)).float()
        return LossOutput(loss=loss, nelbo=nelbo, num_tokens=num_tokens)

    def nelbo(self, denoiser: Denoiser, x0: Tensor, *, u: Tensor, loss_mask: Tensor | None = None,
              attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Unbiased per-sequence NELBO (nats, (B,)) by the exact-count estimator in each block
        (see MaskedDiffusion.nelbo): block k masks m_k ~ U{1..N_k} of its N_k scored tokens and
        scores N_k/m_k times their cross-entropy. u (B,) stratifies block 0; block k uses
        (u + k phi) mod 1 (phi the golden ratio), so every u_k is uniform. With one block this is
        exactly MaskedDiffusion.nelbo (same draws); with blocks of one token every m_k = 1 and it is
        the exact AR log-likelihood of the model, with no Monte-Carlo noise."""
        B, L = x0.shape
        K, b = self.num_blocks(L), self.block_size
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        pad = K * b - L
        u_k = (u.to(x0.device).double()[:, None] + GOLDEN * torch.arange(K, device=x0.device)) % 1.0  # (B, K)
        scores = torch.rand(x0.shape, generator=generator, device=x0.device).masked_fill(~loss_mask, 2.0)
        scores = F.pad(scores, (0, pad), value=3.0).view(B, K, b)  # (B, K, b)
        in_block = F.pad(loss_mask, (0, pad), value=False).view(B, K, b)
        n = in_block.sum(-1)  # (B, K) scored tokens per block
        m = torch.minimum((u_k * n).floor().long() + 1, n.clamp(min=1))  # (B, K) in 1..N_k
        rank = scores.argsort(dim=-1).argsort(dim=-1)  # (B, K, b)
        masked = ((rank < m[..., None]) & in_block).view(B, K * b)[:, :L]  # (B, L)
        x_t = torch.where(masked, self.mask_id, x0)
        logits = self.denoise(denoiser, x_t, x0, attention_mask)
        ce = F.cross_entropy(self.x0_logits(logits[masked]), x0[masked], reduction="none")  # (N_masked,)
        scale = (n.double() / m.double()).repeat_interleave(b, dim=1)[:, :L]  # (B, L): N_k / m_k
        return torch.zeros(B, dtype=torch.float64, device=x0.device).index_put_(
            (masked.nonzero()[:, 0],), scale[masked] * ce.double(), accumulate=True)
