"""Remasking for self-correction: ReMDM (Wang et al., 2025, "Remasking discrete diffusion models
with inference-time scaling").

Masked diffusion's ancestral sampler never revisits a committed token. ReMDM's reverse step
lets a committed token be masked again with probability sigma_t, and keeps the marginals of
the forward process (ReMDM eq. 4, for s < t, alpha_s >= alpha_t):

    z_t unmasked:  z_s = z_t with probability 1 - sigma_t, else [MASK]
    z_t masked:    z_s ~ p_theta(x | z_t) with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),
                   else [MASK]

with 0 <= sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t); sigma = 0 is MDLM's step.
Two of the paper's schedules for sigma_t:

- "cap":  sigma_t = min(eta, sigma_max)
- "loop": the noise level follows alpha(t) down to t_on, is then held at alpha(t_on) until
  t_off while tokens are remasked with sigma = eta (and unmasked at the matching rate, so
  the number of masks stays the same on average), and runs from alpha(t_on) to 1 over the
  remaining time.

More steps than tokens then buy quality instead of idle steps.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.processes.base import Denoiser, sample_categorical
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.result import Callback, SampleOutput, StepRecorder

REMASKING_SCHEDULES = ("cap", "loop")


def loop_alphas(alpha, grid: Tensor, t_on: float, t_off: float) -> Tensor:
    """alpha along the time grid for ReMDM-loop: alpha(t) above t_on, alpha(t_on) from t_on to
    t_off, then from alpha(t_on) to 1 as t goes from t_off to 0; grid (S + 1,) -> (S + 1,)."""
    a_on = alpha(torch.tensor(t_on, dtype=torch.float64))
    late = a_on + (1.0 - a_on) * (1.0 - grid / t_off)  # linear in t from a_on at t_off to 1 at 0
    return torch.where(grid >= t_on, alpha(grid), torch.where(grid >= t_off, a_on, late))


@torch.no_grad()
def sample_remdm(denoiser: Denoiser, process, canvas: Canvas, *, steps: int, schedule: str = "cap",
                 eta: float = 0.02, t_on: float = 0.55, t_off: float = 0.05, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                 callback: Callback | None = None, record_history: bool = False) -> SampleOutput:
    """ReMDM sampling of a masked-diffusion process on a uniform time grid of `steps` steps.
    At every step a forward pass predicts all positions (committed tokens may be remasked, so
    logits cannot be reused). eta = 0 with the "cap" schedule is the ancestral MDLM sampler."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule not in REMASKING_SCHEDULES:
        raise ValueError(f"schedule must be one of {REMASKING_SCHEDULES}, got {schedule!r}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if schedule == "loop" and not 0 < t_off < t_on < 1:
        raise ValueError(f"ReMDM-loop needs 0 < t_off < t_on < 1, got t_on={t_on}, t_off={t_off}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start = time.perf_counter()
    B, L = canvas.shape
    device = canvas.tokens.device
    mask_id = process.mask_id
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # (S + 1,)
    alphas = process.schedule.alpha(grid) if schedule == "cap" else loop_alphas(process.schedule.alpha, grid, t_on,
                                                                                    t_off)
    x = torch.where(canvas.editable, mask_id, canvas.tokens)  # (B, L)
    nfe = 0
    record = StepRecorder(canvas, steps=steps, callback=callback, record_history=record_history, start=start)
    for i in range(steps):
        a_t, a_s = float(alphas[i]), float(alphas[i + 1])
        if schedule == "loop" and a_s == a_t:
            sigma = eta if a_t > 0 else 0.0  # the loop phase: remask at rate eta, unmask to match
        else:
            sigma_max = min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 0.0
            sigma = min(eta, sigma_max)
        t = torch.full((B,), float(grid[i]), device=device)
        logits = denoiser(x, t, attention_mask=canvas.attention_mask)  # (B, L, V)
        nfe += 1
        proposal = filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k, top_p=top_p)
        # ReMDM eq. 4: the probability that a masked token is revealed, and that a committed one is remasked
        reveal_p = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t) if a_t < 1 else 0.0
        u = torch.rand((B, L), generator=generator, device=device, dtype=torch.float64)
        masked = x == mask_id
        reveal = canvas.editable & masked & (u < reveal_p)  # (B, L)
        remask = canvas.editable & ~masked & (u < sigma)  # (B, L)
        x_s = x.clone()
        x_s[reveal] = sample_categorical(proposal[reveal], generator=generator)
        x_s[remask] = mask_id
        if i == steps - 1:  # t = 0: nothing may stay masked (a final draw for any left)
            left = canvas.editable & (x_s == mask_id)
            x_s[left] = sample_categorical(proposal[left], generator=generator)
        changed = x_s != x
        x = x_s
        record.step(i + 1, x, changed, nfe=nfe, t=float(grid[i + 1]))
    return record.output(x, nfe=nfe, steps=steps)
