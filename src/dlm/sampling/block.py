"""Block diffusion sampling (BD3-LM, Arriola et al., 2025, alg. 2): blocks left to right, each
denoised by exact masked-diffusion reverse steps while it attends to the clean text before it.

With `use_cache` the clean text's keys and values are computed once and kept (an exact KV
cache: block-causal attention means a committed block's keys never change). A block is
committed inside the first forward pass of the next block: that pass reads [clean block,
noisy block], caches the first and denoises the second, so committing costs no extra pass
(BD3-LM sec. 4). Without the cache every pass recomputes the whole clean prefix; the two
give the same tokens (a test checks it at temperature 0).

Past the trained context the cache keeps only the last `max_len - block_size` tokens: RoPE
attention depends on relative positions only, so a sliding window lets the model write
beyond the length it was trained on.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.errors import DlmError
from dlm.models.transformer import KVCache
from dlm.processes.base import Denoiser, ForwardProcess
from dlm.processes.block import block_ids
from dlm.sampling.ancestral import depends_on_time
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, draw, filter_logits
from dlm.sampling.confidence import (CONFIDENCE_RULES, block_steps, confidence_scores, select_commits,
                                     transfer_counts)
from dlm.sampling.result import Callback, SampleOutput, StepRecorder


def generation_start(canvas: Canvas, what: str) -> int:
    """The first editable column, checking that the editable positions are one suffix shared by
    every row (a left-to-right sampler cannot write a span with fixed text after it)."""
    editable = canvas.editable
    if not bool(editable.any()):
        return canvas.shape[1]
    start = int(editable.any(0).nonzero()[0])
    if not bool(editable[:, start:].all()) or bool(editable[:, :start].any()):
        raise DlmError(f"{what} writes left to right, so it cannot fill a span that has text after it; use a "
                       f"masked, uniform or gaussian diffusion model, or end the text with the span")
    return start


@torch.no_grad()
def sample_blocks(denoiser: Denoiser, process: ForwardProcess, canvas: Canvas, *, steps: int,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  threshold: float | None = None, factor: float | None = None, confidence: str | None = None,
                  sub_block: int | None = None,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  record_history: bool = False, use_cache: bool = True, window: int | None = None) -> SampleOutput:
    """Generate the canvas's editable suffix block by block; `steps` in all, split over the blocks.

    Inside a block, by default, exact masked reverse steps (random order). With `confidence` (a
    rule of the confidence sampler: prob, margin, entropy) or `threshold` / `factor` (which imply
    "prob"), each step draws every masked position of the block and commits the surest (LLaDA's
    order), at least the step budget's share, plus every position surer than `threshold` (or
    Fast-dLLM's `factor` count), so a sure model commits several tokens per pass and a block may
    finish before its steps run out. `sub_block` (Fast-dLLM v2) commits only inside the first
    sub-block of this many tokens that still has masks, while the pass reads the whole block.

    `window`: the most tokens a block attends to before itself (default: the model's max_len
    minus the block size, when the denoiser has a config; no limit otherwise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    if threshold is not None and factor is not None:
        raise ValueError("use either a threshold or a factor, not both")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if factor is not None and factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    if confidence is None and (threshold is not None or factor is not None):
        confidence = "prob"
    if confidence is not None and confidence not in CONFIDENCE_RULES:
        raise ValueError(f"confidence must be one of {CONFIDENCE_RULES}, got {confidence!r}")
    if sub_block is not None and sub_block < 1:
        raise ValueError(f"sub_block must be >= 1, got {sub_block}")
    start_time = time.perf_counter()
    b = process.block_size
    shift = getattr(process, "shift", False)
    clean_causal = getattr(process, "clean", "block") == "causal"
    g = generation_start(canvas, "block diffusion")
    if shift:  # the clean stream starts with bos, at position 0, as in training
        canvas = with_bos(canvas, process.bos_id)
        g += 1
    B, L = canvas.shape
    device = canvas.tokens.device
    n_blocks = -(-(L - g) // b)
    if steps < n_blocks:
        raise ValueError(f"{n_blocks} blocks need at least {n_blocks} steps (one per block), got {steps}")
    per_block = block_steps(steps, n_blocks) if n_blocks else []
    subs = -(-b // sub_block) if sub_block else 1  # sub-blocks per (whole) block
    if confidence is not None and min(per_block, default=subs) < subs:
        raise ValueError(f"{steps} steps give {min(per_block)} per block, fewer than its {subs} sub-blocks of "
                         f"{sub_block}; use at least {n_blocks * subs} steps or a larger sub-block")
    config = getattr(denoiser, "config", None)
    if window is None and config is not None:
        window = max(config.max_len - b, 0)
    positions = (canvas.attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    blk = block_ids(L, b, start=g, device=device)  # (L,): the generation starts a block
    x = canvas.tokens.clone()
    cache = KVCache(capacity=L + 1) if use_cache else None  # preallocated to the canvas (+ an anchor)
    pending = slice(max(0, g - window) if window is not None else 0, g)  # clean columns not yet in the cache (the prompt, then each finished block)
    reuse = not depends_on_time(denoiser)
    nfe, step = 0, 0
    record = StepRecorder(canvas if not shift else without_bos(canvas), steps=steps, callback=callback,
                          record_history=record_history, start=start_time)
    unpad = (lambda z: z[:, 1:]) if shift else (lambda z: z)  # the caller's columns

    def forward(lo: int, hi: int, t: Tensor) -> Tensor:
        """Logits of columns [lo, hi) (the block being denoised), given the clean columns before. A
        shifted model reads an anchor before the block, a copy of column lo - 1 (see processes/block.py),
        whose hidden state predicts the block's first token; no query sees a [MASK] of the block."""
        nonlocal pending
        if use_cache:
            ctx_lo = pending.start
            cached = cache.valid if cache.valid is not None else torch.zeros(B, 0, dtype=torch.bool, device=device)
        else:
            ctx_lo = max(0, lo - window) if window is not None else 0
            cached = torch.zeros(B, 0, dtype=torch.bool, device=device)
        context, noisy = torch.arange(ctx_lo, lo, device=device), torch.arange(lo, hi, device=device)
        anchor = torch.tensor([lo - 1], device=device) if shift else noisy[:0]
        slots = torch.cat([context, anchor, noisy])  # (n,) the canvas column each slot reads
        n, n_ctx = len(slots), len(context)
        clean = torch.arange(n, device=device) < n_ctx  # (n,)
        q_blk = blk[slots]  # (n,)
        # clean query -> clean keys up to itself (causal) or of blocks <= its own; noisy query -> clean keys of
        # earlier blocks + its own block (shifted: the clean keys before the anchor, which stands in for column lo - 1)
        clean_rule = (slots[None, :] <= slots[:, None]) if clean_causal else (q_blk[None, :] <= q_blk[:, None])
        noisy_rule = ~clean[None, :] | ((slots[None, :] < lo - 1) if shift else (q_blk[None, :] < q_blk[:, None]))
        allowed = torch.where(clean[:, None], clean[None, :] & clean_rule, noisy_rule)  # (n, n)
        if shift and ctx_lo == 0 and n_ctx:  # bos sees only itself (as in training)
            allowed[0] = slots == slots[0]
            allowed[0, n_ctx:] = False
        seen = cached[:, None, :].expand(B, n, -1).clone()  # (B, n, Lc)
        if shift and use_cache and not n_ctx and seen.shape[2]:
            seen[:, n_ctx:, -1] = False  # column lo - 1 is the last cached one: the block's queries see its anchor instead
        keys = canvas.attention_mask[:, slots]  # (B, n)
        if shift:
            keys = keys & ~((x[:, slots] == process.mask_id) & ~clean[None, :])  # no query sees a [MASK]
        mask = torch.cat([seen, allowed[None].expand(B, -1, -1) & keys[:, None, :]], dim=2)
        mask[:, :, cached.shape[1]:] |= torch.eye(n, dtype=torch.bool, device=device)  # every slot sees itself
        mask = mask[:, None]  # (B, 1, n, Lc + n)
        commit = n_ctx if use_cache else 0
        shift_from = None
        if shift:  # a block slot is predicted from the slot before it: the anchor for the first
            shift_from = torch.arange(n, device=device)
            shift_from[n_ctx + 1:] -= 1
        logits = denoiser(x[:, slots], t, positions=positions[:, slots], mask=mask, cache=cache,
                          commit=commit, attention_mask=canvas.attention_mask[:, slots],
                          **({"shift_from": shift_from} if shift else {}))  # (B, n, V)
        if use_cache:
            pending = slice(lo, lo)
            if window is not None:
                cache.crop(window)
        return logits[:, n - (hi - lo):]  # (B, hi - lo, V)

    for k in range(n_blocks):
        lo, hi = g + k * b, min(g + (k + 1) * b, L)
        x[:, lo:hi] = torch.where(canvas.editable[:, lo:hi],
                                  process.prior((B, hi - lo), generator=generator, device=device), x[:, lo:hi])
        if confidence is None:
            grid = torch.linspace(1.0, 0.0, per_block[k] + 1, dtype=torch.float64)  # host copy for the callback's t
            times = grid.to(device)  # one copy per block, not two per step
            logits = None
            for i in range(per_block[k]):
                t, s = times[i].expand(B), times[i + 1].expand(B)
                if logits is None or not reuse:
                    logits = forward(lo, hi, t.float())
                    nfe += 1
                proposal = filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k,
                                         top_p=top_p)
                new = process.step(x[:, lo:hi], proposal, t, s, generator=generator)
                new = torch.where(canvas.editable[:, lo:hi], new, x[:, lo:hi])
                changed = torch.zeros_like(canvas.editable)
                changed[:, lo:hi] = new != x[:, lo:hi]
                if bool(changed.any()):
                    logits = None
                x[:, lo:hi] = new
                step += 1
                record.step(step, unpad(x), unpad(changed), nfe=nfe, t=float(grid[i + 1]))
        else:  # the surest first, sub-block by sub-block
            width = sub_block or b
            for j, steps_j in enumerate(block_steps(per_block[k], subs)):
                s_lo, s_hi = min(lo + j * width, hi), min(lo + (j + 1) * width, hi)
                span = torch.zeros(hi - lo, dtype=torch.bool, device=device)
                span[s_lo - lo:s_hi - lo] = True
                writable = canvas.editable[:, lo:hi] & span  # (B, n): this sub-block's editable positions
                counts = transfer_counts(((x[:, lo:hi] == process.mask_id) & writable).sum(1), steps_j)  # (B, steps_j)
                for i in range(steps_j):
                    still = (x[:, lo:hi] == process.mask_id) & writable  # (B, n)
                    if not bool(still.any()):
                        break  # this sub-block is done: its remaining steps cost nothing
                    remaining = (x[:, lo:hi] == process.mask_id).float().mean(1)  # (B,) the block's masked share
                    logits = process.x0_logits(forward(lo, hi, remaining))  # (B, n, V)
                    nfe += 1
                    x0 = draw(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                    p = torch.softmax(logits.double(), dim=-1)  # (B, n, V)
                    conf = confidence_scores(p, x0, confidence, generator=generator)  # (B, n)
                    commit = select_commits(conf, still, counts[:, i], threshold=threshold, factor=factor)
                    x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi])
                    changed = torch.zeros_like(canvas.editable)
                    changed[:, lo:hi] = commit
                    scores = torch.zeros(B, L, dtype=conf.dtype, device=device)
                    scores[:, lo:hi] = conf
                    step += 1
                    record.step(step, unpad(x), unpad(changed), nfe=nfe, confidence=unpad(scores),
                                t=lambda: float((x[:, g:] == process.mask_id).float().mean()))
        if use_cache:
            pending = slice(pending.start, hi)  # the finished block joins the clean context
    return record.output(unpad(x), nfe=nfe, steps=step)


def with_bos(canvas: Canvas, bos_id: int) -> Canvas:
    """The canvas with a bos column in front: fixed, real, at position 0 of every row."""
    B = canvas.shape[0]
    ones = torch.ones(B, 1, dtype=torch.bool, device=canvas.tokens.device)
    return Canvas(torch.cat([torch.full((B, 1), bos_id, dtype=torch.long, device=ones.device), canvas.tokens], 1),
                  torch.cat([~ones, canvas.editable], 1), torch.cat([ones, canvas.attention_mask], 1))


def without_bos(canvas: Canvas) -> Canvas:
    return Canvas(canvas.tokens[:, 1:], canvas.editable[:, 1:], canvas.attention_mask[:, 1:])
