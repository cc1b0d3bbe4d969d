"""Masked (absorbing-state) diffusion: MDLM (Sahoo et al., 2024), MD4 (Shi et al., 2024), LLaDA.

Forward: each token independently becomes [MASK] with probability 1 - alpha(t) and stays
masked. Reverse: the denoiser predicts the clean token at masked positions; unmasked tokens
are carried over unchanged and the mask token gets zero probability (MDLM's SUBS
parameterisation, sec. 3.2).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import (Denoiser, LossOutput, Process, index_tensor, low_discrepancy_times,
                                sample_categorical)
from dlm.schedules import SCHEDULES, LinearSchedule, Schedule, make_schedule, schedule_to_dict

OBJECTIVES = ("nelbo", "normalized")


class MaskedDiffusion(Process):
    name = "masked"
    # Exact reverse steps sample the model's distribution; confidence decoding is faster per token but,
    # with small models, collapses into runs of the most frequent token (spaces) once they are committed.
    default_sampler = "ancestral"
    samplers = ("ancestral", "confidence", "remdm")
    bound = "NELBO (upper bound on -log p)"
    infills = True
    absorbing = True  # noise is [MASK]: the model scores text with any positions left masked
    schedules = tuple(SCHEDULES)  # the noise schedules it accepts
    distills = True  # self-distillation through time applies (processes/distillation.py)
    options = ("shift", "anneal_steps")  # for a model that starts from an AR model (see __init__)
    # What `dlm train` uses unless told otherwise (measured in 5-minute runs; docs/architecture.md).
    TRAINING_DEFAULTS = {"schedule": {"name": "polynomial"}, "objective": "normalized"}

    def __init__(self, *, vocab_size: int, mask_id: int, pad_id: int | None = None, bos_id: int | None = None,
                 schedule: Schedule | None = None,
                 time_eps: float = 1e-3, objective: str = "nelbo", shift: bool = False, anneal_steps: int = 0):
        """vocab_size and mask_id come from the tokenizer. `objective` is what training
        minimises: "nelbo" (the exact bound, weight -alpha'/(1 - alpha)) or "normalized"
        (1 - alpha replaced by the fraction of the sequence actually masked: much lower
        variance, because a sequence with t near 0 no longer gets a weight near 1/t; it
        scores nothing when no token is masked, so it is a training objective, not a bound:
        for the linear schedule its expectation is the NELBO times 1 - 1/(L + 1)).
        Evaluation always reports the exact NELBO.

        For a model that starts from an AR model (Dream; Gong et al., 2024): `shift` makes token i be
        predicted from position i - 1 (the AR head's meaning; the first position keeps its own), and
        `anneal_steps` opens the attention from causal to bidirectional during the first training
        steps: each query sees each later position with a probability rising linearly from 0 to 1
        (DiffuLLaMA's attention-mask annealing; `for_step`)."""
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary of {vocab_size}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        # Zero probability on [MASK] (SUBS) and on padding and bos, which never occur in training text.
        self.banned_ids = (mask_id,) + tuple(i for i in (pad_id, bos_id) if i is not None)
        self.schedule = schedule or LinearSchedule()
        self.time_eps = time_eps
        self.objective = objective
        if anneal_steps < 0:
            raise ValueError(f"anneal_steps must not be negative, got {anneal_steps}")
        self.shift, self.anneal_steps = shift, anneal_steps
        self.ahead_probability = 1.0  # training: chance that a query sees a given later position

    def __repr__(self) -> str:
        return f"MaskedDiffusion(schedule={self.schedule}, objective={self.objective!r})"

    def model_options(self) -> dict:
        """A masked denoiser sees the whole canvas and needs no time input (the mask count says it)."""
        return {"attention": "bidirectional", "time_conditioning": False, "logit_shift": self.shift}

    def config(self) -> dict:
        """What a checkpoint stores; token ids are not stored: they come from the tokenizer."""
        return {"name": self.name, "schedule": schedule_to_dict(self.schedule), "time_eps": self.time_eps,
                "objective": self.objective, "shift": self.shift, "anneal_steps": self.anneal_steps}

    def for_step(self, step: int) -> "MaskedDiffusion":
        """The process at training step `step`: while the attention is annealed, a copy that opens it."""
        if not self.anneal_steps:
            return self
        out = copy.copy(self)
        out.ahead_probability = min(1.0, (step + 1) / self.anneal_steps)
        return out

    def forward_model(self, denoiser: Denoiser, x_t: Tensor, t: Tensor, attention_mask: Tensor | None,
                      generator: torch.Generator | None = None) -> Tensor:
        """The denoiser's logits (B, L, V); while the attention is annealed, each query sees the
        positions up to itself and each later one with probability ahead_probability (one draw for the
        batch and every head, as DiffuLLaMA)."""
        if self.ahead_probability >= 1.0:
            return denoiser(x_t, t, attention_mask=attention_mask)
        B, L = x_t.shape
        seen = torch.ones(L, L, dtype=torch.bool, device=x_t.device).tril()  # (L, L)
        seen = seen | (torch.rand(L, L, generator=generator, device=x_t.device) < self.ahead_probability)
        mask = seen[None, None]  # (1, 1, L, L)
        if attention_mask is None:
            positions = torch.arange(L, device=x_t.device).expand(B, L)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            mask = (mask & attention_mask[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=x_t.device)
        return denoiser(x_t, t, attention_mask=attention_mask, positions=positions, mask=mask)

    @classmethod
    def from_config(cls, config: dict, *, vocab_size: int, special_ids: dict[str, int]) -> "MaskedDiffusion":
        """Inverse of config(); special_ids maps "mask" (and others) to the tokenizer's ids."""
        eos = special_ids.get("eos")
        return cls(vocab_size=vocab_size, mask_id=special_ids["mask"],
                   pad_id=special_ids.get("pad") if special_ids.get("pad") != eos else None,
                   bos_id=special_ids.get("bos") if special_ids.get("bos") != eos else None,
                   schedule=make_schedule(**config.get("schedule", {"name": "linear"})),
                   time_eps=config.get("time_eps", 1e-3), objective=config.get("objective", "nelbo"),
                   shift=bool(config.get("shift", False)), anneal_steps=int(config.get("anneal_steps", 0)))

    # -- forward process --------------------------------------------------------------
    def prior(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
        """x_1: every position masked (the absorbing state needs no randomness)."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def corrupt(self, x0: Tensor, t: Tensor, *, loss_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) = Cat(alpha_t x_0 + (1 - alpha_t) m)  (MDLM eq. 2), per token.
        x0 (B, L), t (B,) or per token (B, L); positions where loss_mask is False are never masked."""
        alpha = self.schedule.alpha(t.double())
        alpha = alpha[:, None] if alpha.dim() == 1 else alpha  # (B, 1) or (B, L)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)  # (B, L)
        masked = u >= alpha  # P(masked) = 1 - alpha_t
        if loss_mask is not None:
            masked &= loss_mask
        return torch.where(masked, self.mask_id, x0)

    # -- denoiser output --------------------------------------------------------------
    def x0_logits(self, logits: Tensor) -> Tensor:
        """Logits of p_theta(x_0 | x_t) in float32 with zero probability on [MASK] (SUBS), padding and bos."""
        return logits.float().index_fill(-1, index_tensor(self.banned_ids, logits.device), float("-inf"))

    # -- objective --------------------------------------------------------------------
    def nelbo_weight(self, t: Tensor) -> Tensor:
        """-alpha'(t) / (1 - alpha(t)): the continuous-time NELBO weight (MDLM eq. 10)."""
        t = t.double()
        return -self.schedule.alpha_prime(t) / (1.0 - self.schedule.alpha(t))

    def loss(self, denoiser: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput:
        """NELBO = E_t [ -alpha'(t)/(1 - alpha(t)) sum_{l masked} -log p_theta(x0_l | x_t) ]
        (MDLM eq. 10, MD4 eq. 5), one t per sequence, low-discrepancy across the batch.
        x0 (B, L); loss_mask (B, L) bool: False positions (prompt, padding) are neither
        noised nor scored; attention_mask (B, L) bool: False for padding."""
        B, L = x0.shape
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        if t is None:
            t = low_discrepancy_times(B, eps=self.time_eps, generator=generator, device=x0.device)  # (B,)
        x_t = self.corrupt(x0, t, loss_mask=loss_mask, generator=generator)  # (B, L)
        masked = (x_t == self.mask_id) & loss_mask  # (B, L): only these are scored (a dropped prompt's [MASK]s are not)
        logits = self.forward_model(denoiser, x_t, t, attention_mask, generator)  # (B, L, V)

        # Cross-entropy at masked positions only: (N_masked, V) rather than (B, L, V).
        ce = F.cross_entropy(self.x0_logits(logits[masked]), x0[masked], reduction="none")  # (N_masked,)
        row = masked.nonzero()[:, 0]  # (N_masked,) which sequence each masked token is in
        ce_sum = torch.zeros(B, device=x0.device, dtype=torch.float64).index_add_(0, row, ce.double())  # (B,)

        num_tokens = loss_mask.sum(dim=1)  # (B,)
        nelbo = self.nelbo_weight(t) * ce_sum  # (B,) nats
        if self.objective == "nelbo":
            weights = self.nelbo_weight(t)
        else:  # "normalized": replace 1 - alpha(t) by the fraction of scored tokens actually masked
            weights = -self.schedule.alpha_prime(t.double()) * num_tokens / masked.sum(1).clamp(min=1)
        per_seq = weights[row] * ce.double()  # (N_masked,)
        loss = (per_seq.sum() / num_tokens.sum().clamp(min=1)).float()
        return LossOutput(loss=loss, nelbo=nelbo, num_tokens=num_tokens)

    def nelbo(self, denoiser: Denoiser, x0: Tensor, *, u: Tensor, loss_mask: Tensor | None = None,
              attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """An unbiased estimate of each sequence's NELBO, in nats, with bounded weights; (B,).

        Integrating the binomial mask count against -alpha'/(1 - alpha) turns the continuous-time
        NELBO into sum_{m=1..N} (1/m) E_{|S|=m} [sum_{l in S} -log p(x_l | x outside S)], for
        every schedule (the any-order autoregressive form; LLaDA eq. 6). So: draw the number of
        masked tokens m uniformly from {1..N} (N scored positions; u (B,) in [0, 1) stratifies
        it), mask exactly m random positions, and score N x their mean cross-entropy. No 1/t
        weight: its variance is a fraction of the time-sampled estimator's."""
        B, L = x0.shape
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        n = loss_mask.sum(dim=1)  # (B,)
        m = (u.to(x0.device).double() * n).floor().long().clamp(min=0) + 1  # (B,) in 1..N
        m = torch.minimum(m, n.clamp(min=1))
        scores = torch.rand(x0.shape, generator=generator, device=x0.device).masked_fill(~loss_mask, 2.0)
        rank = scores.argsort(dim=1).argsort(dim=1)  # (B, L): a random order of the scored positions
        masked = (rank < m[:, None]) & loss_mask  # (B, L): exactly m masked
        x_t = torch.where(masked, self.mask_id, x0)
        t = self.schedule.alpha_inverse(1.0 - m.double() / n.clamp(min=1)).float()  # the time of that mask rate
        logits = denoiser(x_t, t, attention_mask=attention_mask)  # (B, L, V)
        ce = F.cross_entropy(self.x0_logits(logits[masked]), x0[masked], reduction="none")  # (N_masked,)
        ce_sum = torch.zeros(B, device=x0.device, dtype=torch.float64).index_add_(0, masked.nonzero()[:, 0],
                                                                                 ce.double())  # (B,)
        return torch.where(n > 0, n / m * ce_sum, 0.0)

    # -- what self-distillation asks of an absorbing process ---------------------------
    def time_count(self, batch: int, length: int) -> int:
        """How many noise levels a batch of (batch, length) draws: one per sequence."""
        return batch

    def token_times(self, t: Tensor, length: int) -> Tensor:
        """(B,) times -> (B, L), each token at its sequence's time."""
        return t[:, None].expand(-1, length) if t.dim() == 1 else t

    def predict(self, denoiser: Denoiser, x_t: Tensor, x0: Tensor, t: Tensor, *,
                attention_mask: Tensor | None = None) -> Tensor:
        """The denoiser's logits (B, L, V) for x_t; x0 is not read (it is for processes that condition on clean text)."""
        return denoiser(x_t, t, attention_mask=attention_mask)

    # -- reverse process --------------------------------------------------------------
    def unmask_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """P(a masked token at time t is unmasked by time s < t) = (alpha_s - alpha_t) / (1 - alpha_t)
        (MDLM eq. 7, the D3PM posterior of the absorbing process); elementwise, e.g. (B,) -> (B,)."""
        a_t, a_s = self.schedule.alpha(t.double()), self.schedule.alpha(s.double())
        return ((a_s - a_t) / (1.0 - a_t).clamp_min(1e-300)).clamp(0.0, 1.0)

    def step(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor, *,
             generator: torch.Generator | None = None) -> Tensor:
        """x_s ~ q(x_s | x_t, x0 ~ p_theta): each masked token is revealed with probability
        (alpha_s - alpha_t)/(1 - alpha_t) as a draw from p_theta(x0 | x_t); unmasked tokens stay.
        x_t (B, L); logits (B, L, V) (already tempered/filtered by the sampler); t, s (B,)."""
        is_mask = x_t == self.mask_id  # (B, L)
        rho = self.unmask_probability(t, s)[:, None]  # (B, 1)
        u = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        reveal = is_mask & (u < rho)  # (B, L)
        x_s = x_t.clone()
        x_s[reveal] = sample_categorical(self.x0_logits(logits[reveal]), generator=generator)  # (N_reveal,)
        return x_s
