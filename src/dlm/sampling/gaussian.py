"""Sampling Gaussian embedding diffusion (Diffusion-LM): ancestral DDPM steps (Ho et al., 2020)
and DDIM steps (Song et al., 2021), with Diffusion-LM's clamping trick (Li et al., 2022, sec. 4.2).

Both run the same loop on a uniform grid t = 1, 1 - 1/S, ..., 0 and differ only in the update
from x_t to x_s given x0_hat; each step draws its noise z (B, L, E) at the same point, so DDIM
with eta = 1 follows exactly the trajectory of DDPM under the same generator.

Fixed positions (prompt, infill context, padding: canvas.editable False) are conditioned on by
replacement: the start is a draw of q(x_1 | E(w)) and every update there uses the true clean
embedding E(w) in place of x0_hat. For DDPM that update is a draw of q(x_s | x_t, E(w)), for DDIM
one of q_sigma(x_s | x_t, E(w)); both keep the marginal q(x_s | E(w)) = N(sqrt(ab_s) E(w),
(1 - ab_s) I) (DDIM Lemma 1), so at every step the fixed positions hold a sample of the forward
process at the current noise level, from the same noise z (no extra randomness). This is what an
unconditionally trained denoiser has seen next to the positions it denoises; padding is hidden
from attention by canvas.attention_mask and its vectors do not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from dlm.processes.base import sample_categorical
from dlm.processes.gaussian import EmbeddingDenoiser
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.result import Callback, SampleOutput, StepRecorder

Update = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]  # (x_t, x0, ab_t, ab_s, z) -> x_s


def ddpm_posterior(x_t: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (B, L, E) and variance (B, 1, 1) of q(x_s | x_t, x_0), s < t  (Ho et al., 2020, eq. 7):
        mean = sqrt(ab_s) beta_ts / (1 - ab_t) x_0 + sqrt(alpha_ts) (1 - ab_s) / (1 - ab_t) x_t,
        var  = (1 - ab_s) / (1 - ab_t) beta_ts,   alpha_ts = ab_t / ab_s,  beta_ts = 1 - alpha_ts.
    ab_t, ab_s (B,) float64; the arithmetic is float64."""
    ab_t, ab_s = ab_t.double()[:, None, None], ab_s.double()[:, None, None]  # (B, 1, 1)
    alpha_ts = ab_t / ab_s
    beta_ts = 1.0 - alpha_ts
    mean = (ab_s.sqrt() * beta_ts / (1.0 - ab_t)) * x0.double() + \
        (alpha_ts.sqrt() * (1.0 - ab_s) / (1.0 - ab_t)) * x_t.double()  # (B, L, E)
    var = (1.0 - ab_s) / (1.0 - ab_t) * beta_ts  # (B, 1, 1)
    return mean, var


def ddpm_update(x_t: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, z: Tensor) -> Tensor:
    """x_s = mean + sqrt(var) z, a draw of q(x_s | x_t, x0) for z ~ N(0, I); (B, L, E) -> (B, L, E)."""
    mean, var = ddpm_posterior(x_t, x0, ab_t, ab_s)
    return (mean + var.clamp(min=0).sqrt() * z.double()).to(x_t.dtype)


def ddim_update(x_t: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, z: Tensor, *, eta: float) -> Tensor:
    """x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z  (Song et al., 2021, eq. 12),
    eps_hat = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t),
    sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)  (eq. 16); (B, L, E) -> (B, L, E)."""
    ab_t, ab_s = ab_t.double()[:, None, None], ab_s.double()[:, None, None]  # (B, 1, 1)
    x_t64, x0_64 = x_t.double(), x0.double()
    eps_hat = (x_t64 - ab_t.sqrt() * x0_64) / (1.0 - ab_t).sqrt()  # (B, L, E)
    sigma = eta * ((1.0 - ab_s) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_s).clamp(min=0).sqrt()  # (B, 1, 1)
    direction = (1.0 - ab_s - sigma ** 2).clamp(min=0).sqrt()  # (B, 1, 1)
    return (ab_s.sqrt() * x0_64 + direction * eps_hat + sigma * z.double()).to(x_t.dtype)


def _check(denoiser, process, steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not all(hasattr(denoiser, a) for a in ("embed_tokens", "rounding_logits")):
        raise TypeError("Gaussian diffusion samples need a denoiser of embeddings (embed_tokens, rounding_logits): "
                        "a model built with embed_dim > 0")
    if not hasattr(process, "alpha_bar"):
        raise TypeError(f"DDPM/DDIM sampling needs a Gaussian process with alpha_bar(t); got {process!r}")


@torch.no_grad()
def _reverse_diffusion(denoiser: EmbeddingDenoiser, process, canvas: Canvas, *, steps: int, update: Update,
                       temperature: float, top_k: int | None, top_p: float | None,
                       generator: torch.Generator | None, callback: Callback | None, record_history: bool,
                       clamp: bool) -> SampleOutput:
    """The loop both samplers share; `update` is the only difference between them."""
    start = time.perf_counter()
    B, L = canvas.shape
    device = canvas.tokens.device
    fixed = ~canvas.editable[..., None]  # (B, L, 1)
    embedded = denoiser.embed_tokens(canvas.tokens)  # (B, L, E) in the denoiser's own precision
    dtype = embedded.dtype  # its vector inputs must match its weights (bf16 in, bf16 out); the loop is float32
    clean = embedded.float()  # (B, L, E): E(w), used at the fixed positions
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    ab = process.alpha_bar(grid).to(device)  # (S + 1,) ab at each grid point

    # 1. x_1: N(0, I) where editable; sqrt(ab_1) E(w) + sqrt(1 - ab_1) eps ~ q(x_1 | E(w)) where fixed.
    noise = process.prior((B, L), generator=generator, device=device)  # (B, L, E)
    x = torch.where(fixed, (ab[0].sqrt() * clean + (1 - ab[0]).sqrt() * noise).float(), noise)  # (B, L, E)
    table = denoiser.embed_tokens(torch.arange(process.vocab_size, device=device)[None])[0].float()  # (V, E)
    half_sq_norm = 0.5 * table.pow(2).sum(-1)  # (V,): ||x - E_v||^2 = ||x||^2 - 2 (x . E_v - ||E_v||^2 / 2)
    tokens, nfe = canvas.tokens, 0
    record = StepRecorder(canvas, steps=steps, callback=callback, record_history=record_history, start=start)
    for i in range(steps):
        t = torch.full((B,), float(grid[i]), device=device)  # (B,)
        # 2. predict the clean embedding and round it (Diffusion-LM sec. 4.2).
        x0_hat = denoiser(x.to(dtype), t, attention_mask=canvas.attention_mask).float()  # (B, L, E)
        nfe += 1
        dots = denoiser.rounding_logits(x0_hat.to(dtype))  # (B, L, V): x0_hat . E_v
        logits = process.x0_logits(dots)  # (B, L, V)
        rounded = logits.argmax(-1)  # (B, L)
        if clamp:  # the clamping trick: x0_hat -> the nearest embedding (L2, as Diffusion-LM's code rounds)
            nearest = process.x0_logits(dots - half_sq_norm).argmax(-1)  # (B, L)
            x0_hat = denoiser.embed_tokens(nearest).float()  # (B, L, E)
        x0 = torch.where(fixed, clean, x0_hat)  # replacement conditioning: the true E(w) at fixed positions
        # 3. x_s from x_t and x0 (DDPM eq. 7 or DDIM eq. 12), noise drawn here for both.
        z = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)  # (B, L, E)
        x = update(x, x0, ab[i].expand(B), ab[i + 1].expand(B), z)
        if i == steps - 1 and temperature > 0:  # the final rounding may be sampled: p(w | x0_hat), tempered
            proposal = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            rounded = sample_categorical(proposal, generator=generator)  # (B, L)
        new_tokens = torch.where(canvas.editable, rounded, canvas.tokens)  # (B, L)
        changed = new_tokens != tokens  # (B, L)
        tokens = new_tokens
        # confidence: p(token | x0_hat), (B, L), computed only for a callback
        confidence = logits.softmax(-1).gather(-1, tokens[..., None])[..., 0] if callback is not None else None
        record.step(i + 1, tokens, changed, nfe=nfe, t=float(grid[i + 1]), confidence=confidence)
    return record.output(tokens, nfe=nfe, steps=steps)


def sample_ddpm(denoiser: EmbeddingDenoiser, process, canvas: Canvas, *, steps: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, record_history: bool = False, clamp: bool = True) -> SampleOutput:
    """Ancestral sampling, x_s ~ q(x_s | x_t, x0_hat) (Ho et al., 2020, eq. 7), t = 1 -> 0 in `steps` steps.

    x0_hat is the denoiser's prediction, snapped to its rounded token's embedding when `clamp`
    (Diffusion-LM sec. 4.2). The tokens are the rounding argmax of the last x0_hat, written at
    editable positions only; with temperature > 0 that last rounding is instead a draw from
    p(w | x0_hat) = softmax(rounding logits / temperature), after top-k/top-p (intermediate steps,
    which the callback shows, always use the argmax). One forward pass per step."""
    _check(denoiser, process, steps)
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    return _reverse_diffusion(denoiser, process, canvas, steps=steps, update=ddpm_update, temperature=temperature,
                              top_k=top_k, top_p=top_p, generator=generator, callback=callback,
                              record_history=record_history, clamp=clamp)


def sample_ddim(denoiser: EmbeddingDenoiser, process, canvas: Canvas, *, steps: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, record_history: bool = False, eta: float = 0.0,
                clamp: bool = True) -> SampleOutput:
    """DDIM (Song et al., 2021, eq. 12 and 16): eta = 0 is deterministic given the start noise,
    eta = 1 is the DDPM posterior; otherwise as sample_ddpm (clamping, rounding, temperature)."""
    _check(denoiser, process, steps)
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")

    def update(x_t: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, z: Tensor) -> Tensor:
        return ddim_update(x_t, x0, ab_t, ab_s, z, eta=eta)

    return _reverse_diffusion(denoiser, process, canvas, steps=steps, update=update, temperature=temperature,
                              top_k=top_k, top_p=top_p, generator=generator, callback=callback,
                              record_history=record_history, clamp=clamp)
