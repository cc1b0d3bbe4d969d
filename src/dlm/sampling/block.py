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
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.confidence import block_steps
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
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  record_history: bool = False, use_cache: bool = True, window: int | None = None) -> SampleOutput:
    """Generate the canvas's editable suffix block by block; `steps` in all, split over the blocks.

    `window`: the most tokens a block attends to before itself (default: the model's max_len
    minus the block size, when the denoiser has a config; no limit otherwise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start_time = time.perf_counter()
    b = process.block_size
    B, L = canvas.shape
    device = canvas.tokens.device
    g = generation_start(canvas, "block diffusion")
    n_blocks = -(-(L - g) // b)
    if steps < n_blocks:
        raise ValueError(f"{n_blocks} blocks need at least {n_blocks} steps (one per block), got {steps}")
    per_block = block_steps(steps, n_blocks) if n_blocks else []
    config = getattr(denoiser, "config", None)
    if window is None and config is not None:
        window = max(config.max_len - b, 0)
    positions = (canvas.attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    blk = block_ids(L, b, start=g, device=device)  # (L,): the generation starts a block
    x = canvas.tokens.clone()
    cache = KVCache() if use_cache else None
    pending = slice(max(0, g - window) if window is not None else 0, g)  # clean columns not yet in the cache (the prompt, then each finished block)
    reuse = not depends_on_time(denoiser)
    nfe, step = 0, 0
    record = StepRecorder(canvas, steps=steps, callback=callback, record_history=record_history, start=start_time)

    def forward(lo: int, hi: int, t: Tensor) -> Tensor:
        """Logits of columns [lo, hi) (the block being denoised), given the clean columns before."""
        nonlocal pending
        if use_cache:
            ctx_lo, ctx_hi = pending.start, pending.stop
            cached = cache.valid if cache.valid is not None else torch.zeros(B, 0, dtype=torch.bool, device=device)
        else:
            ctx_lo, ctx_hi = (max(0, lo - window) if window is not None else 0), lo
            cached = torch.zeros(B, 0, dtype=torch.bool, device=device)
        cols = torch.arange(ctx_lo, hi, device=device)
        tokens = x[:, ctx_lo:hi]  # (B, n): clean context then the noisy block
        real = canvas.attention_mask[:, ctx_lo:hi]  # (B, n)
        q_blk = blk[ctx_lo:hi]  # (n,)
        clean = cols < lo  # (n,)
        # clean query -> clean keys of blocks <= its own; noisy query -> clean keys + its own block
        allowed = torch.where(clean[:, None], clean[None, :] & (q_blk[None, :] <= q_blk[:, None]),
                              ~clean[None, :] | (q_blk[None, :] < q_blk[:, None]))  # (n, n)
        mask = torch.cat([cached[:, None, :].expand(B, len(cols), -1), allowed[None].expand(B, -1, -1)], dim=2)
        mask = mask & torch.cat([cached, real], dim=1)[:, None, :]
        mask[:, :, cached.shape[1]:] |= torch.eye(len(cols), dtype=torch.bool, device=device)  # padding sees itself
        mask = mask[:, None]  # (B, 1, n, Lc + n)
        commit = ctx_hi - ctx_lo if use_cache else 0
        logits = denoiser(tokens, t, positions=positions[:, ctx_lo:hi], mask=mask, cache=cache,
                          commit=commit, attention_mask=real)  # (B, n, V)
        if use_cache:
            pending = slice(lo, lo)
            if window is not None:
                cache.crop(window)
        return logits[:, lo - ctx_lo:]  # (B, hi - lo, V)

    for k in range(n_blocks):
        lo, hi = g + k * b, min(g + (k + 1) * b, L)
        x[:, lo:hi] = torch.where(canvas.editable[:, lo:hi],
                                  process.prior((B, hi - lo), generator=generator, device=device), x[:, lo:hi])
        grid = torch.linspace(1.0, 0.0, per_block[k] + 1, dtype=torch.float64)  # host copy for the callback's t
        times = grid.to(device)  # one copy per block, not two per step
        logits = None
        for i in range(per_block[k]):
            t, s = times[i].expand(B), times[i + 1].expand(B)
            if logits is None or not reuse:
                logits = forward(lo, hi, t.float())
                nfe += 1
            proposal = filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k, top_p=top_p)
            new = process.step(x[:, lo:hi], proposal, t, s, generator=generator)
            new = torch.where(canvas.editable[:, lo:hi], new, x[:, lo:hi])
            changed = torch.zeros_like(canvas.editable)
            changed[:, lo:hi] = new != x[:, lo:hi]
            if bool(changed.any()):
                logits = None
            x[:, lo:hi] = new
            step += 1
            record.step(step, x, changed, nfe=nfe, t=float(grid[i + 1]))
        if use_cache:
            pending = slice(pending.start, hi)  # the finished block joins the clean context
    return record.output(x, nfe=nfe, steps=step)
