"""Self-distillation through time (SDTT; Deschenaux & Gulcehre, 2024, arXiv 2410.21035): a student
learns to do in one sampling step what its teacher does in two, so that it samples with half the
steps; then it becomes the teacher and the step count halves again.

For an absorbing process (masked, or masked inside blocks) with the teacher's step size dt = 1/N:
from z_t (x0 noised at time t), the teacher's first step reveals each masked position with
probability rho1 = (alpha(t - dt) - alpha(t)) / (1 - alpha(t)) as a draw from p_T(. | z_t),
giving z_s; its second step reveals with rho2 = (alpha(t - 2dt) - alpha(t - dt)) / (1 - alpha(t - dt))
a draw from p_T(. | z_s). Given that position i is revealed at all in these two steps, its token
is distributed as

    c_i = w p_T(. | z_t)_i + (1 - w) E[p_T(. | z_s)_i | i still masked in z_s],   w = rho1 / (rho1 + (1 - rho1) rho2)

which is what the student's one step of size 2 dt (reveal with the same total probability, draw
from p_S(. | z_t)) must write. The target is SDTT's construction from one draw of z_s, "the
teacher's prediction at a position it revealed in the first step, its prediction after the
first step elsewhere" (p_hat_i below), mixed with p_T(. | z_t) so that its expectation is c_i:

    target_i = lam p_T(. | z_t)_i + (1 - lam) p_hat_i,   lam = (w - rho1) / (1 - rho1)

(`target="sdtt"` keeps lam = 0: the released SDTT code's target, whose expectation weights the
first step by rho1, about dt/t, instead of w, about 1/2.) The loss is the divergence between the
student's p_S(. | z_t) and the target at every masked position: SDTT's reverse KL
KL(p_S || target) by default (its released default), or the forward KL KL(target || p_S), whose
minimiser is the expected target c_i itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import Denoiser, LossOutput, gumbel_noise, low_discrepancy_times

DIVERGENCES = ("reverse_kl", "forward_kl")
TARGETS = ("composition", "sdtt")


def two_step_target(p_t: Tensor, p_s: Tensor, revealed: Tensor, rho1: Tensor, rho2: Tensor, *,
                    target: str = "composition") -> Tensor:
    """The distillation target at every position; p_t, p_s (B, L, V) the teacher's distributions at z_t
    and z_s, revealed (B, L) bool: revealed by the first step; rho1, rho2 (B, L) the two steps'
    reveal probabilities. -> (B, L, V) float64 (see the module docstring)."""
    p_hat = torch.where(revealed[..., None], p_t, p_s)  # (B, L, V): SDTT's target
    if target == "sdtt":
        return p_hat
    if target != "composition":
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    rho1, rho2 = rho1.double(), rho2.double()
    total = rho1 + (1.0 - rho1) * rho2  # P(revealed within the two steps)
    w = torch.where(total > 0, rho1 / total.clamp_min(1e-300), 1.0)  # (B, L)
    lam = torch.where(rho1 < 1, (w - rho1) / (1.0 - rho1).clamp_min(1e-300), 1.0)[..., None]  # (B, L, 1)
    return lam * p_t + (1.0 - lam) * p_hat


def divergence(student_logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """KL(p_S || target) ("reverse_kl") or KL(target || p_S) ("forward_kl") per position, nats;
    student_logits (N, V), target (N, V) probabilities -> (N,). Tokens the target rules out (the
    mask) have no mass under the student either (the process bans them before this)."""
    log_s = F.log_softmax(student_logits.float(), dim=-1)  # (N, V); -inf at banned tokens
    s = log_s.exp()
    log_s = log_s.masked_fill(s == 0, 0.0)  # finite where the mass is 0 (0 log 0 = 0, and no NaN gradient)
    t = target.to(log_s.dtype)
    log_t = t.clamp_min(1e-30).log()
    if kind == "reverse_kl":
        return (s * (log_s - log_t)).sum(-1)
    if kind == "forward_kl":
        return (t * (log_t - log_s)).masked_fill(t == 0, 0.0).sum(-1)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}")


class SelfDistillation:
    """The SDTT objective for an absorbing process (one that declares `distills = True`: masked, block).

    `teacher` is a denoiser (frozen by the caller), `teacher_steps` the teacher's sampling steps N of
    the current round (per block for block diffusion): its step size is 1/N, the student's 2/N."""

    def __init__(self, process, teacher: Denoiser, *, teacher_steps: int, divergence: str = "reverse_kl",
                 target: str = "composition"):
        if not process.distills:
            raise ValueError(f"self-distillation needs a masked or block diffusion process, not {process!r}")
        if teacher_steps < 2:
            raise ValueError(f"the teacher needs at least 2 steps to distil one from, got {teacher_steps}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.process, self.teacher, self.teacher_steps = process, teacher, teacher_steps
        self.divergence, self.target = divergence, target

    def teacher_probs(self, x_t: Tensor, x0: Tensor, t: Tensor, attention_mask: Tensor | None) -> Tensor:
        """p_T(. | x_t) as float64 probabilities with the process's banned tokens at zero; (B, L, V)."""
        with torch.no_grad():
            logits = self.process.predict(self.teacher, x_t, x0, t, attention_mask=attention_mask)
        return torch.softmax(self.process.x0_logits(logits).double(), dim=-1)

    def targets(self, x0: Tensor, *, loss_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                generator: torch.Generator | None = None, t: Tensor | None = None,
                x_t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One draw of (t, z_t, the masked positions, the target (B, L, V) float64); `t` (B,) or (B, K)
        and `x_t` may be given (a test fixes them), else t ~ U[2dt, 1] low-discrepancy and z_t ~ q(. | x0)."""
        process = self.process
        B, L = x0.shape
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        dt = 1.0 / self.teacher_steps
        if t is None:  # 1. a time per sequence (per block), where two teacher steps fit: t in [2dt, 1]
            u = low_discrepancy_times(process.time_count(B, L), eps=0.0, generator=generator,
                                      device=x0.device).double()
            t = (2 * dt + (1 - 2 * dt) * u).view(B, -1).squeeze(-1)  # (B,) or (B, K)
        if x_t is None:
            x_t = process.corrupt(x0, t, loss_mask=loss_mask, generator=generator)  # (B, L)
        masked = (x_t == process.mask_id) & loss_mask  # (B, L)
        tok_t = process.token_times(t.double(), L)  # (B, L)
        mid, end = (tok_t - dt).clamp_min(0.0), (tok_t - 2 * dt).clamp_min(0.0)
        rho1 = process.unmask_probability(tok_t, mid)  # (B, L)
        rho2 = process.unmask_probability(mid, end)  # (B, L)
        # 2. the teacher's first step: reveal with rho1, a draw from p_T(. | z_t) (float64 Gumbel-max)
        p_t = self.teacher_probs(x_t, x0, t.float(), attention_mask)  # (B, L, V)
        u1 = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        revealed = masked & (u1 < rho1)  # (B, L)
        drawn = (p_t.clamp_min(1e-300).log() + gumbel_noise(tuple(p_t.shape), generator=generator,
                                                           device=x0.device)).argmax(-1)  # (B, L)
        z_s = torch.where(revealed, drawn, x_t)
        # 3. the teacher after its first step (a masked denoiser reads the noise level off the canvas)
        p_s = self.teacher_probs(z_s, x0, t.float(), attention_mask)  # (B, L, V)
        return t, x_t, masked, two_step_target(p_t, p_s, revealed, rho1, rho2, target=self.target)

    def loss(self, student: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> LossOutput:
        """Mean divergence over the masked positions of z_t; `nelbo` carries each sequence's summed
        divergence (nats), which is what the training log shows."""
        B = x0.shape[0]
        t, x_t, masked, target = self.targets(x0, loss_mask=loss_mask, attention_mask=attention_mask,
                                              generator=generator)
        # 4. the student in one step from z_t
        logits = self.process.x0_logits(self.process.predict(student, x_t, x0, t.float(),
                                                             attention_mask=attention_mask))  # (B, L, V)
        per = divergence(logits[masked], target[masked], self.divergence)  # (N_masked,)
        row = masked.nonzero()[:, 0]
        per_seq = torch.zeros(B, dtype=torch.float64, device=x0.device).index_add_(0, row, per.double())  # (B,)
        loss = per.sum() / masked.sum().clamp(min=1)
        num_tokens = masked.new_ones(masked.shape).sum(1) if loss_mask is None else loss_mask.sum(1)
        return LossOutput(loss=loss, nelbo=per_seq, num_tokens=num_tokens)
