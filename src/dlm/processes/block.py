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

Starting from an AR model (Fast-dLLM v2, Wu et al., 2025; SDAR, Cheng et al., 2025; Dream and
DiffuLLaMA, Gong et al., 2024) three options keep what the AR model knows:

- `shift`: token i is predicted from the final hidden state of the slot before it (the AR head's
  meaning), and the clean stream starts with bos. Each noisy block starts with an *anchor*, a copy
  of the clean token before the block (bos for the first), which stands in for that token in the
  block's view; the block's first token is predicted from the anchor, which sees the block's
  unmasked tokens, so no token of a block is predicted blind to its block. No query attends to a
  [MASK] slot (it carries nothing but its position): with blocks of one token the anchor then
  sees what the AR model's token sees, and with a causal clean stream the model is the AR model
  exactly (layout: `Anchored`).
- `clean="causal"`: a clean query sees the clean tokens up to itself (the AR model's attention)
  instead of its whole block (BD3-LM's block-causal stream).
- `ar_weight`: add the next-token cross-entropy of the clean stream (causal, shifted: an AR model
  on the same weights) to the loss, as TiDAR (Liu et al., 2025) trains its AR half, so that the
  model keeps predicting committed text as the AR model it started from did.
- a curriculum (`for_step`): the noisy block's attention to later positions of its own block
  is switched on at random with a probability that rises from 0 to 1 over `anneal_steps`
  (DiffuLLaMA's attention-mask annealing), and the block size grows 1, 2, 4, ... up to
  `block_size` over `warmup_steps` (LLaDA 2.0's block-size warm-up).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import Denoiser, LossOutput, Process, low_discrepancy_times
from dlm.processes.masked import MaskedDiffusion
from dlm.schedules import Schedule, make_schedule, schedule_to_dict

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # spreads one stratified u over the blocks of a sequence


def block_ids(length: int, block_size: int, *, start: int = 0, device=None) -> Tensor:
    """Block index of each position, counting from `start` (positions before it get negative
    blocks, so that `start` is always a block boundary); -> (length,)."""
    return torch.div(torch.arange(length, device=device) - start, block_size, rounding_mode="floor")


CLEAN_ATTENTION = ("block", "causal")


def training_mask(length: int, block_size: int, attention_mask: Tensor | None = None,
                  device=None, *, clean: str = "block", ahead: Tensor | None = None) -> Tensor:
    """The (B or 1, 1, 2L, 2L) bool mask of [x_t, x_0] described in the module docstring. `clean`:
    "block" or "causal" clean stream. `ahead` (L, L) bool: which later positions of its own block a
    noisy query may see (attention annealing; None = all of them)."""
    blk = block_ids(length, block_size, device=device)  # (L,)
    same = blk[:, None] == blk[None, :]  # (L, L)
    before = blk[:, None] > blk[None, :]  # (L, L): key block strictly earlier than the query's
    upto = torch.ones(length, length, dtype=torch.bool, device=device).tril()  # (L, L): key at or before the query
    noisy_rows = torch.cat([same if ahead is None else same & (upto | ahead), before], dim=1)  # (L, 2L)
    clean_rows = torch.cat([torch.zeros_like(same), (same | before) if clean == "block" else upto], dim=1)
    mask = torch.cat([noisy_rows, clean_rows], dim=0)[None, None]  # (1, 1, 2L, 2L)
    if attention_mask is not None:
        keys = torch.cat([attention_mask, attention_mask], dim=1)  # (B, 2L)
        mask = mask & keys[:, None, None, :]
        mask = mask | torch.eye(2 * length, dtype=torch.bool, device=device)  # padding attends itself: no empty rows
    return mask


@dataclass(frozen=True)
class Anchored:
    """The training layout of a shifted block model: [noisy blocks, bos, x_0]. Noisy block k holds an
    *anchor*, a copy of the clean token before the block (bos for the first), then the block's noisy
    tokens; token i of the block is predicted from the hidden state of the slot before it (the anchor
    for the first), so the AR head keeps its meaning and the first token sees its block too. The
    anchor stands in for its clean original, which the block's queries do not see. N = L + K noisy
    slots (K blocks), then bos, then the L clean tokens."""
    text: Tensor  # (N,) the text position each noisy slot holds (-1: bos as the first block's anchor)
    anchor: Tensor  # (N,) bool
    block: Tensor  # (N,) block index
    rows: Tensor  # (L,) the noisy slot of each text position
    shift_from: Tensor  # (N + 1 + L,) the slot whose hidden state predicts each slot


@functools.lru_cache(maxsize=32)
def anchored_layout(length: int, block_size: int, device: torch.device) -> Anchored:
    K = -(-length // block_size)
    starts = torch.arange(K, device=device) * block_size  # (K,)
    sizes = (length - starts).clamp(max=block_size)  # (K,)
    block = torch.repeat_interleave(torch.arange(K, device=device), sizes + 1)  # (N,)
    first = torch.cumsum(sizes + 1, 0) - (sizes + 1)  # (K,) slot of each block's anchor
    inner = torch.arange(block.numel(), device=device) - first[block]  # (N,) 0 for the anchor
    text = starts[block] - 1 + inner  # (N,)
    anchor = inner == 0
    n = block.numel()
    rows = torch.nonzero(~anchor)[:, 0]  # (L,): text position order
    noisy_from = torch.where(anchor, torch.arange(n, device=device), torch.arange(n, device=device) - 1)
    clean_from = n + torch.arange(length, device=device)  # clean j <- clean j - 1 (bos at index n for j = 0)
    shift_from = torch.cat([noisy_from, torch.tensor([n], device=device), clean_from])
    return Anchored(text=text, anchor=anchor, block=block, rows=rows, shift_from=shift_from)


def anchored_mask(layout: Anchored, hidden: Tensor, *, clean: str = "block", block_size: int,
                  ahead: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
    """The (B, 1, M, M) bool mask of the anchored layout (M = N + 1 + L). hidden (B, L) bool: the
    text positions that are [MASK] in x_t, which no query attends to (a [MASK] says nothing, and so
    the anchor of a one-token block sees exactly what the AR model's token does). Noisy slot of block k
    -> the slots of its block (all of them, or up to itself and `ahead` (N, N) while attention is
    annealed), the clean text before the block's anchor, and bos after the first block. bos -> itself.
    Clean token j -> clean tokens up to j (causal) or of blocks <= its own ("block"), and bos."""
    text, block = layout.text, layout.block
    n, L = text.numel(), hidden.shape[1]
    device = text.device
    slots = torch.arange(n, device=device)
    same = block[:, None] == block[None, :]  # (N, N)
    noisy_noisy = same if ahead is None else same & ((slots[None, :] <= slots[:, None]) | ahead)
    c = torch.arange(-1, L, device=device)  # (1 + L,) text position of bos and the clean tokens
    anchor_at = text[layout.anchor][block]  # (N,) the text position of each slot's anchor
    noisy_clean = c[None, :] < anchor_at[:, None]  # (N, 1 + L): before the anchor (bos: -1 < anchor unless the anchor is bos)
    if clean == "block":
        cb = torch.div(c.clamp(min=0), block_size, rounding_mode="floor")
        clean_clean = (c[None, :] == -1) | ((cb[None, :] <= cb[:, None]) & (c[:, None] >= 0))  # (1 + L, 1 + L)
    else:
        clean_clean = c[None, :] <= c[:, None]
    clean_clean = clean_clean & ((c[:, None] >= 0) | (c[None, :] == -1))  # the bos query sees only itself
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)  # (N, M)
    bottom = torch.cat([torch.zeros(1 + L, n, dtype=torch.bool, device=device), clean_clean], dim=1)  # (1 + L, M)
    mask = torch.cat([top, bottom], dim=0)[None]  # (1, M, M)
    # keys: no [MASK] slot is seen (per sequence), nor padding
    slot_hidden = torch.zeros(hidden.shape[0], n, dtype=torch.bool, device=device)
    slot_hidden[:, layout.rows] = hidden
    keys = torch.cat([~slot_hidden, torch.ones(hidden.shape[0], 1 + L, dtype=torch.bool, device=device)], dim=1)
    if attention_mask is not None:
        real = torch.ones(hidden.shape[0], n, dtype=torch.bool, device=device)
        real[:, layout.rows] = attention_mask
        real[:, layout.anchor] = True
        keys = keys & torch.cat([real, torch.ones_like(attention_mask[:, :1]), attention_mask], dim=1)
    mask = mask & keys[:, None, :]
    mask = mask | torch.eye(mask.shape[-1], dtype=torch.bool, device=device)  # every slot sees itself
    return mask[:, None]  # (B, 1, M, M)


def warmup_sizes(block_size: int) -> list[int]:
    """The block sizes of the warm-up: 1, 2, 4, ... below block_size, then block_size."""
    sizes, b = [], 1
    while b < block_size:
        sizes.append(b)
        b *= 2
    return sizes + [block_size]


class BlockDiffusion(Process):
    name = "block"
    bound = "NELBO (upper bound on -log p), masked diffusion within blocks"
    default_sampler = "block"
    samplers = ("block",)  # an instance with shift and a causal clean stream adds "speculative" (__init__)
    infills = False  # a block sees only the text before it
    absorbing = True  # within a block: the masked process
    extends_context = True  # the sampler slides a window over its cache: it can write past max_len
    distills = True  # self-distillation through time applies, inside each block (processes/distillation.py)
    options = ("shift", "clean", "anneal_steps", "warmup_steps", "ar_weight")  # see the module docstring
    TRAINING_DEFAULTS = MaskedDiffusion.TRAINING_DEFAULTS
    schedules = MaskedDiffusion.schedules

    def __init__(self, *, vocab_size: int, mask_id: int, pad_id: int | None = None, bos_id: int | None = None,
                 eos_id: int | None = None, block_size: int = 16,
                 schedule: Schedule | None = None, time_eps: float = 1e-3, objective: str = "nelbo",
                 shift: bool = False, clean: str = "block", anneal_steps: int = 0, warmup_steps: int = 0,
                 ar_weight: float = 0.0):
        """`shift`, `clean`, `anneal_steps` and `warmup_steps`: see the module docstring (the last two
        act in training only, through `for_step`). Padding and bos get zero probability unless they are
        end-of-text (`eos_id`), which text contains."""
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if clean not in CLEAN_ATTENTION:
            raise ValueError(f"clean attention must be one of {CLEAN_ATTENTION}, got {clean!r}")
        if anneal_steps < 0 or warmup_steps < 0:
            raise ValueError("anneal_steps and warmup_steps must not be negative")
        if shift and bos_id is None:
            raise ValueError("a shifted block model starts its clean stream with bos: the tokenizer needs one")
        # the clean stream is then an AR model: it can take an AR loss and verify drafts (sampling/speculative.py)
        self.ar_stream = shift and clean == "causal"
        if ar_weight < 0 or (ar_weight and not self.ar_stream):
            raise ValueError("ar_weight (an AR loss on the clean stream) needs shift and a causal clean stream, and "
                             "must not be negative")
        self.masked = MaskedDiffusion(vocab_size=vocab_size, mask_id=mask_id, pad_id=pad_id if pad_id != eos_id else None,
                                      bos_id=bos_id if bos_id != eos_id else None, schedule=schedule,
                                      time_eps=time_eps, objective=objective)
        self.vocab_size, self.mask_id, self.block_size = vocab_size, mask_id, block_size
        self.pad_id, self.bos_id = pad_id, bos_id
        self.shift, self.clean = shift, clean
        self.anneal_steps, self.warmup_steps = anneal_steps, warmup_steps
        self.ar_weight = ar_weight
        self.ahead_probability = 1.0  # training: chance that a noisy query sees a later position of its block
        if self.ar_stream:
            self.samplers = ("block", "speculative")

    schedule = property(lambda self: self.masked.schedule)
    objective = property(lambda self: self.masked.objective)

    def __repr__(self) -> str:
        extra = f", shift=True, clean={self.clean!r}" if self.shift else (
            f", clean={self.clean!r}" if self.clean != "block" else "")
        return (f"BlockDiffusion(block_size={self.block_size}, schedule={self.schedule}, "
                f"objective={self.objective!r}{extra})")

    def min_steps(self, length: int) -> int:
        """Blocks are generated in turn, each in at least one step."""
        return max(-(-length // self.block_size), 1)

    def model_options(self) -> dict:
        # The process passes its own block mask; "bidirectional" is what the model does without one.
        return {"attention": "bidirectional", "time_conditioning": False, "logit_shift": self.shift}

    def config(self) -> dict:
        return {"name": self.name, "block_size": self.block_size, "schedule": schedule_to_dict(self.schedule),
                "time_eps": self.masked.time_eps, "objective": self.objective, "shift": self.shift,
                "clean": self.clean, "anneal_steps": self.anneal_steps, "warmup_steps": self.warmup_steps,
                "ar_weight": self.ar_weight}

    @classmethod
    def from_config(cls, config: dict, *, vocab_size: int, special_ids: dict[str, int]) -> "BlockDiffusion":
        return cls(vocab_size=vocab_size, mask_id=special_ids["mask"], pad_id=special_ids.get("pad"),
                   bos_id=special_ids.get("bos"), eos_id=special_ids.get("eos"),
                   block_size=int(config.get("block_size", 16)),
                   schedule=make_schedule(**config.get("schedule", {"name": "linear"})),
                   time_eps=config.get("time_eps", 1e-3), objective=config.get("objective", "nelbo"),
                   shift=bool(config.get("shift", False)), clean=config.get("clean", "block"),
                   anneal_steps=int(config.get("anneal_steps", 0)), warmup_steps=int(config.get("warmup_steps", 0)),
                   ar_weight=float(config.get("ar_weight", 0.0)))

    def for_step(self, step: int) -> "BlockDiffusion":
        """The process at training step `step`: the warm-up's block size, the annealing's probability."""
        if not self.anneal_steps and not self.warmup_steps:
            return self
        out = copy.copy(self)
        if self.warmup_steps and step < self.warmup_steps:
            sizes = warmup_sizes(self.block_size)
            out.block_size = sizes[step * len(sizes) // self.warmup_steps]
        if self.anneal_steps:
            out.ahead_probability = min(1.0, (step + 1) / self.anneal_steps)
        return out

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

    # -- what self-distillation asks of an absorbing process ---------------------------
    def time_count(self, batch: int, length: int) -> int:
        """One noise level per block."""
        return batch * self.num_blocks(length)

    def token_times(self, t: Tensor, length: int) -> Tensor:
        """(B, K) block times (or (B,)) -> (B, L)."""
        t = self.per_token(t, length)
        return t[:, None].expand(-1, length) if t.dim() == 1 else t

    def unmask_probability(self, t: Tensor, s: Tensor) -> Tensor:
        return self.masked.unmask_probability(t, s)

    def predict(self, denoiser: Denoiser, x_t: Tensor, x0: Tensor, t: Tensor, *,
                attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, L, V) of each noisy block given the clean blocks of x0 before it."""
        return self.denoise(denoiser, x_t, x0, attention_mask)

    # -- the denoiser on [x_t, x_0] ------------------------------------------------------
    def denoise(self, denoiser: Denoiser, x_t: Tensor, x0: Tensor, attention_mask: Tensor | None,
                generator: torch.Generator | None = None, clean_logits: bool = False):
        """Logits for the noisy half (B, L, V) from one pass over [x_t, x_0] (B, 2L), or over
        [x_t, bos, x_0] (B, 2L + 1) for a shifted model. While attention is annealed (training),
        the noisy queries' view of later positions in their block is drawn from `generator`.
        `clean_logits` (shifted models): also return the clean stream's (B, L, V), where position j
        is predicted from the clean text before it, as by an AR model."""
        B, L = x0.shape
        device = x0.device
        if attention_mask is None:
            positions = torch.arange(L, device=device).expand(B, L)  # (B, L)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        t = torch.zeros(B, device=device)  # the masked denoiser reads the noise level off the canvas
        if not self.shift:
            ahead = None
            if self.ahead_probability < 1.0:  # one draw for the batch and every head (DiffuLLaMA)
                ahead = torch.rand(L, L, generator=generator, device=device) < self.ahead_probability  # (L, L)
            mask = training_mask(L, self.block_size, attention_mask, device=device, clean=self.clean, ahead=ahead)
            logits = denoiser(torch.cat([x_t, x0], dim=1), t, positions=torch.cat([positions, positions], dim=1),
                              mask=mask)  # (B, 2L, V)
            return logits[:, :L]
        layout = anchored_layout(L, self.block_size, torch.device(device))
        n = layout.text.numel()
        ahead = None
        if self.ahead_probability < 1.0:
            ahead = torch.rand(n, n, generator=generator, device=device) < self.ahead_probability  # (N, N)
        mask = anchored_mask(layout, x_t == self.mask_id, clean=self.clean, block_size=self.block_size, ahead=ahead,
                             attention_mask=attention_mask)
        bos = torch.full_like(x0[:, :1], self.bos_id)  # (B, 1) at position 0; the tokens move one place on
        clean = torch.cat([bos, x0], dim=1)  # (B, 1 + L)
        noisy = clean[:, layout.text + 1]  # (B, N): anchors (and placeholders for the noisy tokens)
        noisy[:, layout.rows] = x_t
        places = torch.cat([positions[:, :1] * 0, positions + 1], dim=1)  # (B, 1 + L): bos at 0
        tokens = torch.cat([noisy, clean], dim=1)  # (B, N + 1 + L)
        logits = denoiser(tokens, t, positions=torch.cat([places[:, layout.text + 1], places], dim=1), mask=mask,
                          shift_from=layout.shift_from)  # (B, N + 1 + L, V)
        noisy_logits = logits[:, layout.rows]  # (B, L, V)
        return (noisy_logits, logits[:, n + 1:]) if clean_logits else noisy_logits

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
        logits = self.denoise(denoiser, x_t, x0, attention_mask, generator=generator, clean_logits=bool(self.ar_weight))
        if self.ar_weight:
            logits, clean = logits
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
        if self.ar_weight:  # TiDAR's joint objective: the clean stream stays an AR model (next-token cross-entropy)
            ar = F.cross_entropy(self.x0_logits(clean[loss_mask]), x0[loss_mask])
            loss = loss + self.ar_weight * ar
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
