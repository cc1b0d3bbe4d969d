"""Ancestral sampling: the exact reverse step of the forward process on a uniform time grid
(DDPM-style; for masked diffusion MDLM sec. 3.3 / D3PM's posterior)."""

from __future__ import annotations

import time

import torch

from dlm.processes.base import Denoiser, ForwardProcess
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.result import Callback, SampleOutput, StepRecorder


def depends_on_time(denoiser: Denoiser) -> bool:
    """Whether the denoiser's output may change with t alone; unknown callables are assumed to."""
    return bool(getattr(denoiser, "time_conditioned", True))


@torch.no_grad()
def sample_ancestral(denoiser: Denoiser, process: ForwardProcess, canvas: Canvas, *, steps: int,
                     temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     record_history: bool = False) -> SampleOutput:
    """x_1 ~ prior at the editable positions, then x_s ~ p(x_s | x_t) for t = 1, 1 - 1/S, ..., 0.

    Caching (MDLM sec. 3.3): when a step changes no token and the denoiser ignores t, the
    next step's logits are the same, so they are reused and the step costs no forward pass.
    With more steps than tokens most steps change nothing, and nfe stays below the token count.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start = time.perf_counter()
    B, L = canvas.shape
    device = canvas.tokens.device
    noise = process.prior((B, L), generator=generator, device=device)  # (B, L)
    x = torch.where(canvas.editable, noise, canvas.tokens)  # (B, L)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # on the host: the callback's t needs no sync
    times = grid.to(device)  # one copy to the canvas's device, not two per step
    reuse = not depends_on_time(denoiser)
    logits, nfe = None, 0
    record = StepRecorder(canvas, steps=steps, callback=callback, record_history=record_history, start=start)
    for i in range(steps):
        t = times[i].expand(B)  # (B,)
        s = times[i + 1].expand(B)
        if logits is None or not reuse:
            logits = denoiser(x, t.float(), attention_mask=canvas.attention_mask)  # (B, L, V)
            nfe += 1
        proposal = filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k, top_p=top_p)
        x_s = process.step(x, proposal, t, s, generator=generator)
        x_s = torch.where(canvas.editable, x_s, canvas.tokens)  # fixed positions never change
        changed = x_s != x  # (B, L)
        if bool(changed.any()):
            logits = None  # the canvas moved: the next step needs a fresh forward pass
        x = x_s
        record.step(i + 1, x, changed, nfe=nfe, t=float(grid[i + 1]))
    return record.output(x, nfe=nfe, steps=steps)
