"""Gaussian diffusion on learned token embeddings: Diffusion-LM (Li et al., 2022), scored with
the continuous-time variational bound of VDM (Kingma et al., Variational Diffusion Models, 2021).

Forward: each token w becomes its learned embedding E(w) (E numbers, trained with the model),
then q(z_t | w) = N(sqrt(ab(t)) E(w), (1 - ab(t)) I) for t in [0, 1] (variance preserving;
Ho et al., 2020, eq. 4, in continuous time). ab(t) ("alpha bar") falls from just below 1 at
t = 0 to just above 0 at t = 1, so the log-SNR lambda(t) = log(ab / (1 - ab)) is finite at both
ends. Reverse: the denoiser predicts the clean embedding x0_hat(z_t, t) directly (the
x0-parameterisation, Diffusion-LM sec. 4.2); the samplers (dlm.sampling.gaussian) put it into
the DDPM or DDIM update. Rounding: a vector x becomes a token through
p(w | x) = softmax(rounding_logits(x)), the head tied to E (Diffusion-LM sec. 4.1), with the
special tokens that never occur in data (mask, pad, bos) banned.

The denoiser is any EmbeddingDenoiser: our Transformer with ``embed_dim > 0``, or a test's oracle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import LossOutput, Process, index_tensor, low_discrepancy_times, never_in_text

ALPHA_BAR_MIN = 1e-4  # ab(1) for both schedules: lambda(1) = log(1e-4 / (1 - 1e-4)) ~ -9.2


class EmbeddingDenoiser(Protocol):
    """What Gaussian diffusion needs from a model: a denoiser of vectors, its embedding, its rounding head."""

    def __call__(self, x_t: Tensor, t: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """x_t (B, L, E) noisy embeddings, t (B,) in [0, 1] -> (B, L, E) predicted clean embeddings x0_hat."""

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, E) their learned embeddings E(w)."""

    def rounding_logits(self, x: Tensor) -> Tensor:
        """(B, L, E) vectors -> (B, L, V) logits of the token each vector stands for."""


# -- noise schedules ab(t) --------------------------------------------------------------
class GaussianSchedule:
    """ab(t) = alpha_bar(t) on t in [0, 1], decreasing, with 0 < ab(1) < ab(0) < 1.

    A schedule gives ab, its derivative and its inverse in closed form; the log-SNR and its
    derivative follow. These are not the masked schedules of dlm.schedules: there alpha(t) is
    the probability that a token is still clean, here it is the signal's share of the variance.
    """

    name: str

    def alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_bar_prime(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_alpha_bar(self, ab: Tensor) -> Tensor:
        """The t at which alpha_bar(t) = ab (clipped to [0, 1])."""
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log SNR(t) = log(ab / (1 - ab))  (VDM sec. 2)."""
        ab = self.alpha_bar(t)
        return ab.log() - torch.log1p(-ab)

    def snr_prime(self, t: Tensor) -> Tensor:
        """d/dt SNR(t) = ab'(t) / (1 - ab(t))^2 (< 0): the weight of VDM's eq. 17."""
        return self.alpha_bar_prime(t) / (1.0 - self.alpha_bar(t)) ** 2

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """The t at which lambda(t) = lam: ab = sigmoid(lam)."""
        return self.t_of_alpha_bar(torch.sigmoid(lam))

    def log_snr_range(self) -> tuple[float, float]:
        """(lambda(1), lambda(0)) = (lambda_min, lambda_max)."""
        ends = self.log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SqrtSchedule(GaussianSchedule):
    """ab(t) = 1 - sqrt(s + (c - s) t), c = (1 - ab_min)^2  (Diffusion-LM's sqrt schedule 1 - sqrt(t/T + s)).

    Diffusion-LM's sqrt schedule starts at a noise level that is already useful for embedded
    tokens (1 - ab(0) = sqrt(s) = 0.01, so sigma_0 = 0.1) and rises fast in the first steps. Its
    ab(1) = 1 - sqrt(1 + s) is negative (their discrete chain clips beta at 0.999); here the
    argument s + t is instead scaled linearly from s at t = 0 to (1 - ab_min)^2 at t = 1, so
    that ab(1) = ab_min exactly (a 2e-4 relative change of the time axis for the defaults).
    """

    s: float = 1e-4
    alpha_bar_min: float = ALPHA_BAR_MIN
    name: str = "sqrt"

    def __post_init__(self):
        if not 0 < self.s < (1 - self.alpha_bar_min) ** 2 or not 0 < self.alpha_bar_min < 1:
            raise ValueError(f"need 0 < s < (1 - alpha_bar_min)^2 and 0 < alpha_bar_min < 1: {self}")

    @property
    def slope(self) -> float:
        return (1.0 - self.alpha_bar_min) ** 2 - self.s  # c - s

    def alpha_bar(self, t: Tensor) -> Tensor:
        return 1.0 - torch.sqrt(self.s + self.slope * t)

    def alpha_bar_prime(self, t: Tensor) -> Tensor:
        return -self.slope / (2.0 * torch.sqrt(self.s + self.slope * t))

    def t_of_alpha_bar(self, ab: Tensor) -> Tensor:
        return (((1.0 - ab) ** 2 - self.s) / self.slope).clamp(0.0, 1.0)


@dataclass(frozen=True)
class CosineSchedule(GaussianSchedule):
    """ab(t) = cos^2(pi/2 (tau + s) / (1 + s)), tau = tau_max t  (Nichol & Dhariwal, 2021, eq. 17).

    Two departures from eq. 17, both to keep lambda finite at the ends: no division by f(0), so
    ab(0) = cos^2(pi/2 s/(1 + s)) ~ 1 - 1.6e-4 (sigma_0 ~ 0.0125: z_0 keeps a little noise and
    SNR(0) ~ 6.4e3 rather than infinity); and tau runs to tau_max < 1, solved so that
    ab(1) = ab_min (instead of clipping beta at 0.999).
    """

    s: float = 0.008
    alpha_bar_min: float = ALPHA_BAR_MIN
    name: str = "cosine"

    def __post_init__(self):
        if not 0 < self.s or not 0 < self.alpha_bar_min < math.cos(0.5 * math.pi * self.s / (1 + self.s)) ** 2:
            raise ValueError(f"need s > 0 and 0 < alpha_bar_min < alpha_bar(0): {self}")

    @property
    def tau_max(self) -> float:
        """cos(pi/2 (tau_max + s)/(1 + s)) = sqrt(ab_min)."""
        return (1.0 + self.s) * math.acos(math.sqrt(self.alpha_bar_min)) * 2.0 / math.pi - self.s

    def angle(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (self.tau_max * t + self.s) / (1.0 + self.s)

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.cos(self.angle(t)) ** 2

    def alpha_bar_prime(self, t: Tensor) -> Tensor:
        # d/dt cos^2(theta) = -sin(2 theta) theta', theta' = pi/2 tau_max / (1 + s)
        return -torch.sin(2.0 * self.angle(t)) * 0.5 * math.pi * self.tau_max / (1.0 + self.s)

    def t_of_alpha_bar(self, ab: Tensor) -> Tensor:
        theta = torch.acos(ab.clamp(0.0, 1.0).sqrt())
        return ((theta * 2.0 / math.pi * (1.0 + self.s) - self.s) / self.tau_max).clamp(0.0, 1.0)


GAUSSIAN_SCHEDULES: dict[str, type] = {"sqrt": SqrtSchedule, "cosine": CosineSchedule}
DEFAULT_SCHEDULE = "sqrt"


def make_gaussian_schedule(spec: str | dict | None = None) -> GaussianSchedule:
    """A schedule from its name, or a dict {"name": ..., **params} as config() stores it;
    None, "" or a dict without a name give the default (sqrt)."""
    params = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = params.pop("name", None) or DEFAULT_SCHEDULE
    if name not in GAUSSIAN_SCHEDULES:
        raise ValueError(f"unknown Gaussian noise schedule {name!r}; choose one of {sorted(GAUSSIAN_SCHEDULES)}")
    return GAUSSIAN_SCHEDULES[name](**params)


# -- the process --------------------------------------------------------------------------
class GaussianDiffusion(Process):
    name = "gaussian"
    attention = "bidirectional"
    bound = "variational bound (VDM, Kingma et al. 2021) on -log p, with the rounding decoder"
    default_sampler = "ddim"
    samplers = ("ddpm", "ddim")
    infills = True
    absorbing = False
    schedules = tuple(GAUSSIAN_SCHEDULES)  # the noise schedules its config accepts
    TRAINING_DEFAULTS: dict = {}  # Diffusion-LM's sqrt schedule; nothing measured here favours another

    def __init__(self, *, vocab_size: int, embed_dim: int = 16, schedule: GaussianSchedule | None = None,
                 time_eps: float = 0.0, banned_ids: tuple[int, ...] = ()):
        """embed_dim is the width E of the learned embedding the noise lives in. 16 by default:
        Diffusion-LM's setting for E2E (128 for ROCStories); a character vocabulary of ~100 tokens
        fits comfortably in 16 dimensions, and every extra dimension is one more coordinate of
        noise the denoiser must remove per token. banned_ids (mask, pad, bos: never in data) get
        zero probability under the rounding. time_eps: training draws t ~ U[time_eps, 1]; 0 by
        default, because both schedules keep SNR(0) finite (see `loss` for what > 0 costs)."""
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if not 0.0 <= time_eps < 1.0:
            raise ValueError(f"time_eps must be in [0, 1), got {time_eps}")
        if any(not 0 <= i < vocab_size for i in banned_ids):
            raise ValueError(f"banned ids {banned_ids} must lie in the vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.schedule = schedule or SqrtSchedule()
        self.time_eps = time_eps
        self.banned_ids = tuple(banned_ids)

    def __repr__(self) -> str:
        return f"GaussianDiffusion(schedule={self.schedule}, embed_dim={self.embed_dim})"

    def model_options(self) -> dict:
        """A vector denoiser of width embed_dim that sees the whole canvas and the noise level."""
        return {"attention": "bidirectional", "time_conditioning": True, "embed_dim": self.embed_dim}

    def config(self) -> dict:
        """What a checkpoint stores; token ids are not stored: they come from the tokenizer."""
        return {"name": self.name, "schedule": self.schedule.to_dict(), "embed_dim": self.embed_dim,
                "time_eps": self.time_eps}

    @classmethod
    def from_config(cls, config: dict, *, vocab_size: int, special_ids: dict[str, int]) -> "GaussianDiffusion":
        """Inverse of config(); keys other processes use ("objective", "block_size") are ignored.
        special_ids maps "mask", "pad", "bos" to the tokenizer's ids: they are banned."""
        banned = never_in_text(special_ids)
        return cls(vocab_size=vocab_size, embed_dim=int(config.get("embed_dim", 16)),
                   schedule=make_gaussian_schedule(config.get("schedule")),
                   time_eps=float(config.get("time_eps", 0.0)), banned_ids=banned)

    # -- forward process --------------------------------------------------------------
    def alpha_bar(self, t: Tensor) -> Tensor:
        """ab(t) in float64; t (B,) -> (B,)."""
        return self.schedule.alpha_bar(t.double())

    def prior(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
        """z_1 ~ N(0, I) for a token canvas of `shape` (B, L) -> (B, L, E) float32."""
        return torch.randn((*shape, self.embed_dim), generator=generator, device=device)

    def corrupt(self, x0: Tensor, t: Tensor, *, loss_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """z_t ~ q(z_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)  (Ho et al., 2020, eq. 4).
        x0 (B, L, E) clean embeddings, t (B,); positions where loss_mask (B, L) is False stay clean."""
        ab = self.alpha_bar(t).to(x0.device)[:, None, None]  # (B, 1, 1)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)  # (B, L, E)
        z = ab.sqrt().to(x0.dtype) * x0 + (1.0 - ab).sqrt().to(x0.dtype) * eps.to(x0.dtype)
        if loss_mask is not None:
            z = torch.where(loss_mask[..., None], z, x0)
        return z

    # -- denoiser output --------------------------------------------------------------
    def x0_logits(self, logits: Tensor) -> Tensor:
        """Rounding logits (B, L, V) as float32 logits over tokens, the banned ids at -inf."""
        if not self.banned_ids:
            return logits.float()
        return logits.float().index_fill(-1, index_tensor(self.banned_ids, logits.device), float("-inf"))

    # -- the variational bound --------------------------------------------------------
    def _embed(self, denoiser: EmbeddingDenoiser, ids: Tensor) -> Tensor:
        emb = denoiser.embed_tokens(ids)  # (B, L, E)
        if emb.shape != (*ids.shape, self.embed_dim):
            raise ValueError(f"the denoiser embeds tokens as {tuple(emb.shape)}, but this process needs "
                             f"(B, L, {self.embed_dim}): build the model with embed_dim={self.embed_dim} "
                             f"(process.model_options())")
        return emb

    def reconstruction_and_prior(self, denoiser: EmbeddingDenoiser, x0: Tensor, emb: Tensor, *,
                                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two ends of the bound, per position (B, L):
        -log p(w | z_0) with one draw z_0 = alpha_0 E(w) + sigma_0 eps and the decoder
        p(w | z_0) = softmax(x0_logits(rounding_logits(z_0 / alpha_0))); and the closed form
        KL(q(z_1 | w) || N(0, I)) = 1/2 (ab_1 |E(w)|^2 - E ab_1 - E log(1 - ab_1))  (VDM sec. 3)."""
        B, L = x0.shape
        zero = torch.zeros(B, device=x0.device)
        alpha_0 = float(self.alpha_bar(torch.zeros(1)).sqrt())  # on the host: no wait for the GPU
        z0 = self.corrupt(emb, zero, generator=generator)  # (B, L, E)
        logits = self.x0_logits(denoiser.rounding_logits(z0 / alpha_0))  # (B, L, V)
        recon = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view(B, L)  # (B, L)
        ab_1 = float(self.alpha_bar(torch.ones(1)))
        sq = emb.double().pow(2).sum(-1)  # (B, L) |E(w)|^2
        kl = 0.5 * (ab_1 * sq - self.embed_dim * (ab_1 + math.log1p(-ab_1)))  # (B, L)
        return recon, kl

    def loss(self, denoiser: EmbeddingDenoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput:
        """Diffusion-LM's end-to-end objective (sec. 4.1, with the x0 target of sec. 4.2), per
        scored token and averaged over them:
            |x0_hat(z_t, t) - E(w)|^2  +  -log p(w | z_0)  +  |sqrt(ab_1) E(w)|^2,
        one t ~ U[time_eps, 1] per sequence (low-discrepancy across the batch), squares summed
        over the E dimensions. The first term is L_simple with the x0 target (their sum over
        steps becomes the expectation over t); z_0 = alpha_0 E(w) + sigma_0 eps is the schedule's
        own t = 0 latent, the rounding input z_0 / alpha_0 = E(w) + sqrt(1/SNR(0)) eps (for sqrt:
        noise 0.1); the last term is their prior term ||sqrt(ab_T) x_0||^2. Gradients reach E
        through all three (E is trained end to end).

        x0 (B, L) token ids; loss_mask (B, L) bool: False positions (prompt, padding) keep their
        clean embedding in z_t and are not scored (default: every position that attention_mask
        keeps). `nelbo` (B,) is an unbiased estimate of the same bound as `nelbo()`, from this
        forward pass, with VDM's eq. 17 weight -SNR'(t)/2 (higher variance than `nelbo()`'s
        log-SNR sampling). With time_eps > 0 it leaves out the diffusion term on [0, time_eps)
        and underestimates the bound: keep time_eps at 0 when the figure matters."""
        B, L = x0.shape
        if loss_mask is None:
            loss_mask = (torch.ones_like(x0, dtype=torch.bool) if attention_mask is None
                         else attention_mask.bool())
        if t is None:
            t = low_discrepancy_times(B, eps=self.time_eps, generator=generator, device=x0.device)  # (B,)
        emb = self._embed(denoiser, x0)  # (B, L, E)
        z_t = self.corrupt(emb, t, loss_mask=loss_mask, generator=generator)  # (B, L, E)
        x0_hat = denoiser(z_t, t, attention_mask=attention_mask)  # (B, L, E)
        mse = (x0_hat.float() - emb.float()).pow(2).sum(-1)  # (B, L)
        recon, kl = self.reconstruction_and_prior(denoiser, x0, emb, generator=generator)  # (B, L) each
        ab_1 = float(self.alpha_bar(torch.ones(1)))
        prior_term = ab_1 * emb.float().pow(2).sum(-1)  # (B, L)

        scored = loss_mask.float()
        num_tokens = loss_mask.sum(dim=1)  # (B,)
        per_token = (mse + recon + prior_term) * scored  # (B, L)
        loss = per_token.sum() / num_tokens.sum().clamp(min=1)

        # VDM eq. 17: L_diffusion = -1/2 E_{t ~ U[0, 1]} [SNR'(t) |E(w) - x0_hat|^2]; t ~ U[time_eps, 1] covers (1 - time_eps).
        weight = -0.5 * self.schedule.snr_prime(t.double()) * (1.0 - self.time_eps)  # (B,)
        bound = (recon.double() + kl + weight.to(x0.device)[:, None] * mse.double()) * scored.double()  # (B, L)
        return LossOutput(loss=loss.float(), nelbo=bound.sum(dim=1).detach(), num_tokens=num_tokens)

    def nelbo(self, denoiser: EmbeddingDenoiser, x0: Tensor, *, u: Tensor, loss_mask: Tensor | None = None,
              attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """An unbiased one-draw estimate, in nats per sequence, of the variational bound on
        -log p(w) (VDM sec. 3, continuous time), for the model
            z_1 ~ N(0, I);  z_1 -> z_0 by the reverse diffusion whose step from t to s is
            q(z_s | z_t, x = x0_hat(z_t, t)) in the limit of infinitely many steps;
            w_l ~ p(w_l | z_0) = softmax(x0_logits(rounding_logits(z_0,l / alpha_0))) per position,
        scored on the positions loss_mask keeps (default: all that attention_mask keeps; the others
        stay clean in z_t, so it bounds -log p(scored | unscored)). The bound is
            E_{z_0}[-log p(w | z_0)]  +  KL(q(z_1 | w) || N(0, I))  +  L_diffusion,
            L_diffusion = -1/2 int_0^1 SNR'(t) E_eps |E(w) - x0_hat(z_t, t)|^2 dt   (VDM eq. 17)
                        =  1/2 int_{lambda_min}^{lambda_max} e^lambda E_eps |E(w) - x0_hat|^2 dlambda,
        the second form by the change of variables SNR = e^lambda (VDM sec. 5.1: the integral
        depends on the schedule only through SNR(0) and SNR(1)). It is sampled uniformly in
        lambda, stratified by u (B,) in [0, 1): lambda = lambda_max - u (lambda_max - lambda_min),
        weight (lambda_max - lambda_min)/2 e^lambda: per token that is
        (lambda_max - lambda_min)/2 |eps - eps_hat|^2, bounded where the denoiser is any good,
        unlike the 1/t-like weight of uniform t near t = 0. E is part of the model, so this bounds
        -log p of the token sequence for any E. Reconstruction: one draw of z_0; prior: closed form."""
        B, L = x0.shape
        if loss_mask is None:
            loss_mask = (torch.ones_like(x0, dtype=torch.bool) if attention_mask is None
                         else attention_mask.bool())
        lam_min, lam_max = self.schedule.log_snr_range()
        lam = lam_max - u.double().to(x0.device) * (lam_max - lam_min)  # (B,) uniform on (lambda_min, lambda_max]
        t = self.schedule.t_of_log_snr(lam)  # (B,)
        emb = self._embed(denoiser, x0)  # (B, L, E)
        z_t = self.corrupt(emb, t, loss_mask=loss_mask, generator=generator)  # (B, L, E)
        x0_hat = denoiser(z_t, t.float(), attention_mask=attention_mask)  # (B, L, E)
        mse = (x0_hat.double() - emb.double()).pow(2).sum(-1)  # (B, L)
        recon, kl = self.reconstruction_and_prior(denoiser, x0, emb, generator=generator)  # (B, L) each
        weight = 0.5 * (lam_max - lam_min) * self.schedule.log_snr(t).exp()  # (B,) e^lambda at the t used
        bound = (recon.double() + kl + weight[:, None] * mse) * loss_mask.double()  # (B, L)
        return bound.sum(dim=1)

    # -- reverse process --------------------------------------------------------------
    def step(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor, *,
             generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("Gaussian diffusion has no token-level reverse step: its reverse process moves vectors "
                        "with the denoiser's x0_hat; sample it with sample_ddpm or sample_ddim "
                        "(dlm.sampling.gaussian)")
