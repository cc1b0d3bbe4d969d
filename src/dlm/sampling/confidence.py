"""Confidence decoding (LLaDA, Nie et al., 2025, Algorithm 5 "low-confidence remasking" and
its `generate.py`): predict every masked position, commit the k most confident, keep the
rest masked; optionally left to right over semi-autoregressive blocks.

Parallel decoding (Fast-dLLM, Wu et al., 2025, sec. 3.3) commits more when the model is sure:
`threshold` commits every masked position of the block whose confidence exceeds it, `factor`
commits the largest n with (n + 1)(1 - c_(n)) < factor (c_(n) the n-th highest confidence);
both on top of the step budget's k, which is then a minimum (with one step per token, "at
least one per step", as Fast-dLLM). Confidence rules (Dream, Ye et al., 2025): the drawn
token's probability, the top-1 minus top-2 margin, the negative entropy, or random order."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from dlm.models.transformer import KVCache
from dlm.processes.base import Denoiser
from dlm.processes.masked import MaskedDiffusion
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, draw
from dlm.sampling.result import Callback, SampleOutput, StepRecorder


def transfer_counts(num_masked: Tensor, steps: int) -> Tensor:
    """Tokens to commit at each step: n // S per step, the remainder one each in the first
    steps (LLaDA's `get_num_transfer_tokens`, the linear schedule); (B,) -> (B, S)."""
    base = num_masked // steps  # (B,)
    remainder = num_masked % steps  # (B,)
    extra = torch.arange(steps, device=num_masked.device)[None] < remainder[:, None]  # (B, S)
    return base[:, None] + extra.long()


CONFIDENCE_RULES = ("prob", "margin", "entropy", "random")
CACHE_MODES = ("none", "prefix", "dual")


class BlockCache:
    """Fast-dLLM's approximate caches around the block being decoded (see sample_confidence)."""

    def __init__(self, denoiser: Denoiser, canvas: Canvas, mode: str):
        self.denoiser, self.canvas, self.mode = denoiser, canvas, mode
        self.positions = (canvas.attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        self.cache, self.lo, self.hi = None, 0, 0

    def logits(self, x: Tensor, t: Tensor, in_block: Tensor, fresh: bool) -> Tensor:
        """(B, L, V) logits; exact at the first step of a block (`fresh`), then only the re-run
        columns are recomputed, in place (the others keep their first-step values, which the
        sampler does not use: it commits only inside the block)."""
        B, L = x.shape
        real = self.canvas.attention_mask
        if fresh:
            cols = in_block.any(0).nonzero()[:, 0]  # the block's columns
            if not torch.equal(in_block, in_block.any(0, keepdim=True) & self.canvas.editable):
                raise ValueError("a cache needs the blocks to cover the same columns in every row "
                                 "(generation canvases do; use cache='none' for this canvas)")
            self.lo, self.hi = int(cols.min()), int(cols.max()) + 1
            full = KVCache()
            mask = real[:, None, None, :]  # (B, 1, 1, L)
            self.full_logits = self.denoiser(x, t, positions=self.positions, mask=mask, cache=full, commit=L,
                                             attention_mask=real)
            keep = torch.arange(L, device=x.device)
            keep = keep < self.lo if self.mode == "prefix" else (keep < self.lo) | (keep >= self.hi)
            self.cache = full.select(keep)
            return self.full_logits
        lo, hi = self.lo, (L if self.mode == "prefix" else self.hi)
        keys = torch.cat([self.cache.valid, real[:, lo:hi]], dim=1)  # (B, Lc + n)
        out = self.denoiser(x[:, lo:hi], t, positions=self.positions[:, lo:hi], mask=keys[:, None, None, :],
                            cache=self.cache)
        self.full_logits[:, lo:hi] = out
        return self.full_logits



def confidence_scores(p: Tensor, x0: Tensor, rule: str, *, generator: torch.Generator | None = None) -> Tensor:
    """How sure the model is of each position's draw; p (B, L, V) float64 probabilities, x0 (B, L)
    the drawn tokens -> (B, L), higher = surer. "prob": p(x0) (LLaDA, MaskGIT); "margin": top-1
    minus top-2 probability; "entropy": sum_v p_v log p_v (<= 0); "random": uniform in [0, 1)."""
    if rule == "prob":
        return p.gather(-1, x0[..., None]).squeeze(-1)
    if rule == "margin":
        top2 = p.topk(2, dim=-1).values  # (B, L, 2)
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        return torch.special.xlogy(p, p).sum(-1)
    if rule == "random":
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    raise ValueError(f"confidence must be one of {CONFIDENCE_RULES}, got {rule!r}")


def factor_counts(scores: Tensor, candidates: Tensor, factor: float) -> Tensor:
    """Fast-dLLM's factor rule: the largest n with (n + 1)(1 - c_(n)) < factor among each row's
    candidates (c_(n) its n-th highest score), at least 1 where a row has any; (B, L) -> (B,)."""
    c = torch.where(candidates, scores, float("-inf")).sort(dim=-1, descending=True).values  # (B, L)
    n = torch.arange(1, c.shape[-1] + 1, device=c.device, dtype=torch.float64)  # (L,)
    ok = ((n + 1) * (1.0 - c) < factor) & torch.isfinite(c)  # (B, L)
    # the rule holds for a prefix of the sorted scores (1 - c_(n) grows with n): count it
    largest = (ok.long().cumprod(-1)).sum(-1)  # (B,)
    return torch.maximum(largest, candidates.any(-1).long())


def select_commits(confidence: Tensor, open_positions: Tensor, k_rows: Tensor, *, threshold: float | None = None,
                   factor: float | None = None) -> Tensor:
    """Which open positions a step commits; (B, L) bool. Each row commits its k most confident open
    positions (k_rows (B,), the step budget); `threshold` adds every open position surer than it, at
    least one (Fast-dLLM, sec. 3.3); `factor` adds Fast-dLLM's factor count instead."""
    candidates = torch.where(open_positions, confidence, float("-inf"))  # (B, L)
    if threshold is not None:  # every sure position, at least one
        sure = (open_positions & (confidence > threshold)).sum(1)
        k_rows = torch.maximum(k_rows, torch.maximum(sure, open_positions.any(1).long()))
    elif factor is not None:
        k_rows = torch.maximum(k_rows, factor_counts(confidence, open_positions, factor))
    k_rows = torch.minimum(k_rows, open_positions.sum(1))
    changed = torch.zeros_like(open_positions)
    # Rows that commit the same count share one batched topk, which picks per row what LLaDA's loop of
    # one topk per row picks, ties included (a sort would break ties otherwise). Aligned canvases under
    # a step budget have one count, so one call; the counts come to the host once per step.
    for k in k_rows.unique().tolist():
        if k:
            rows = (k_rows == k).nonzero()[:, 0]  # (R,)
            changed[rows[:, None], candidates[rows].topk(k, dim=-1).indices] = True  # (R, k) set
    return changed


def block_steps(steps: int, num_blocks: int) -> list[int]:
    """Split the step budget over blocks: S // N each (as LLaDA), the remainder to the first blocks."""
    return [steps // num_blocks + (b < steps % num_blocks) for b in range(num_blocks)]


@torch.no_grad()
def sample_confidence(denoiser: Denoiser, process: MaskedDiffusion, canvas: Canvas, *, steps: int,
                      block_length: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, threshold: float | None = None, factor: float | None = None,
                      confidence: str = "prob", eos_id: int | None = None, cache: str = "none",
                      generator: torch.Generator | None = None,
                      callback: Callback | None = None, record_history: bool = False) -> SampleOutput:
    """Fill the canvas's editable positions in `steps` forward passes (or fewer, see below).

    Blocks are runs of `block_length` editable positions, counted left to right in each row
    (for a prompt followed by a generated region these are LLaDA's blocks exactly); blocks are
    decoded in order and each gets steps // num_blocks steps. In a step, every masked position
    gets a token drawn from p_theta (argmax at temperature 0, float64 Gumbel-max otherwise);
    its confidence is the probability of that token under the untempered p_theta; the
    `transfer_counts` most confident masked positions of the current block are committed.
    A step that would commit nothing in any row is skipped without a forward pass.

    `threshold` / `factor` (Fast-dLLM) commit more than the step's k when the model is sure
    (see the module docstring); a block that is finished early skips its remaining steps.
    `confidence` picks the rule that ranks positions: prob, margin, entropy or random.
    With `eos_id`, once every row has written an end-of-text token, the blocks left are filled
    with it without a forward pass (variable length: what follows eos is not text).
    `cache` (Fast-dLLM, sec. 3.2; needs blocks aligned across rows and a model that takes a
    KVCache): "prefix" computes the keys/values of the text before the current block once per
    block and re-runs only the block and what follows it; "dual" also keeps those of what
    follows, and re-runs only the block. Both are approximations for a bidirectional model (the
    cached tokens would have attended to the block as it changes); "none" is exact.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    confidence_rule = confidence
    if confidence_rule not in CONFIDENCE_RULES:
        raise ValueError(f"confidence must be one of {CONFIDENCE_RULES}, got {confidence_rule!r}")
    if threshold is not None and factor is not None:
        raise ValueError("use either a threshold or a factor, not both")
    if factor is not None and factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start = time.perf_counter()
    B, L = canvas.shape
    mask_id = process.mask_id
    editable = canvas.editable
    x = torch.where(editable, mask_id, canvas.tokens)  # (B, L)
    rank = editable.long().cumsum(dim=1) - 1  # (B, L) index of each editable position in its row
    n_edit = int(editable.sum(dim=1).max()) if B else 0
    block_length = block_length or max(n_edit, 1)
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    num_blocks = max(math.ceil(n_edit / block_length), 1)
    if steps < num_blocks:
        raise ValueError(f"{steps} steps cannot cover {num_blocks} blocks of {block_length} tokens: "
                         f"use at least {num_blocks} steps or a longer block length")

    nfe, step_index = 0, 0
    record = StepRecorder(canvas, steps=steps, callback=callback, record_history=record_history, start=start,
                          generated=n_edit)
    block_cache = BlockCache(denoiser, canvas, cache) if cache != "none" else None
    for b, steps_b in enumerate(block_steps(steps, num_blocks)):
        in_block = editable & (rank >= b * block_length) & (rank < (b + 1) * block_length)  # (B, L)
        fresh = True  # the block's first forward pass: a cache is (re)built from it
        counts = transfer_counts((in_block & (x == mask_id)).sum(dim=1), steps_b)  # (B, steps_b)
        for i in range(steps_b):
            step_index += 1
            still_masked = editable & (x == mask_id)  # (B, L)
            changed = torch.zeros_like(editable)
            confidence = None
            open_in_block = still_masked & in_block  # (B, L)
            adaptive = threshold is not None or factor is not None
            if bool((open_in_block.any(1) & ((counts[:, i] > 0) | adaptive)).any()):
                masked_fraction = still_masked.sum(1) / editable.sum(1).clamp(min=1)  # (B,) the current t
                if block_cache is not None:
                    raw = block_cache.logits(x, masked_fraction.float(), in_block, fresh)
                else:
                    raw = denoiser(x, masked_fraction.float(), attention_mask=canvas.attention_mask)
                fresh = False
                logits = process.x0_logits(raw)  # (B, L, V)
                nfe += 1
                x0 = draw(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # (B, L)
                p = torch.softmax(logits.double(), dim=-1)  # (B, L, V)
                confidence = confidence_scores(p, x0, confidence_rule, generator=generator)  # (B, L)
                changed = select_commits(confidence, open_in_block, counts[:, i], threshold=threshold, factor=factor)
                x = torch.where(changed, x0, x)
            record.step(step_index, x, changed, nfe=nfe, confidence=confidence,  # t: the masked share left
                        t=lambda: float((editable & (x == mask_id)).sum() / editable.sum().clamp(min=1)))
        if eos_id is not None and b < num_blocks - 1 and bool(((x == eos_id) & editable).any(1).all()):
            x = torch.where(editable & (x == mask_id), eos_id, x)  # every row has ended: stop early
            break
    return record.output(x, nfe=nfe, steps=step_index)
