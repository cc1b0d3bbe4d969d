"""What every forward process shares: the Denoiser and ForwardProcess interfaces, the loss
record, low-discrepancy time sampling and float64 Gumbel-max categorical sampling."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """x_t (B, L) token ids, t (B,) in [0, 1] -> logits over the clean token (B, L, V)."""


@dataclass
class LossOutput:
    loss: Tensor  # () the training objective to minimise
    nelbo: Tensor  # (B,) NELBO of each sequence in nats: a one-sample Monte-Carlo estimate
    num_tokens: Tensor  # (B,) positions each sequence is scored on (the NELBO covers these)


class ForwardProcess(Protocol):
    """A forward (noising) process with its objective and its exact reverse step.

    Besides the methods, each process says what it is to the layers above, so that nothing
    above `processes/` branches on which process it is:
      name             registry key ("masked", "uniform", "gaussian", "block", "ar")
      bound            what `nelbo` estimates, in words (e.g. "NELBO (upper bound on -log p)")
      default_sampler  the SAMPLERS entry `dlm generate` uses by default
      samplers         the SAMPLERS entries that can sample it
      infills          whether it can generate a span that has fixed text after it
      absorbing        whether its noise is a [MASK] token (mask_id), so that the model gives the
                       likelihood of text with some positions left masked (marginalised over them)
      exact            whether `nelbo` is the exact -log p (AR): one evaluation pass per chunk suffices,
                       and the model can judge text left to right
      extends_context  whether its samplers slide a window over a KV cache, so they write past max_len
      min_steps(n)     the fewest sampler steps that can generate n tokens (one per block for block diffusion)
      schedules        the noise schedule names its config accepts
      TRAINING_DEFAULTS  config entries `dlm train` uses unless told otherwise
      model_options()  ModelConfig fields the denoiser must have (attention, time_conditioning, ...)
    """

    name: str
    bound: str
    default_sampler: str
    samplers: tuple[str, ...]
    infills: bool
    absorbing: bool
    exact: bool
    extends_context: bool

    def min_steps(self, length: int) -> int: ...

    def model_options(self) -> dict: ...

    def config(self) -> dict: ...

    def prior(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor: ...

    def corrupt(self, x0: Tensor, t: Tensor, *, loss_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor: ...

    def loss(self, denoiser: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput: ...

    def nelbo(self, denoiser: Denoiser, x0: Tensor, *, u: Tensor, loss_mask: Tensor | None = None,
              attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """(B,) unbiased estimates of each sequence's NELBO in nats; u (B,) in [0, 1) stratifies them."""

    def x0_logits(self, logits: Tensor) -> Tensor:
        """The denoiser's logits as a distribution over clean tokens (e.g. no [MASK])."""

    def step(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor, *,
             generator: torch.Generator | None = None) -> Tensor: ...


class Process:
    """What every process inherits: the defaults of the protocol's optional parts."""

    exact = False  # nelbo is an exact -log p (AR): evaluation then needs one pass per chunk
    extends_context = False  # its sampler slides a window over a KV cache, so it writes past max_len
    distills = False  # self-distillation through time applies (absorbing processes: processes/distillation.py)
    options: tuple[str, ...] = ()  # config keys beyond the common ones that `dlm train` may set (shift, ...)

    def min_steps(self, length: int) -> int:
        """The fewest steps a sampler needs to generate `length` tokens: one, unless blocks come in turn."""
        return 1

    def for_step(self, step: int) -> "Process":
        """The process as it trains at optimizer step `step` (0-based). A curriculum (block diffusion's
        block-size warm-up and attention annealing) returns a configured copy; by default it is itself."""
        return self


def never_in_text(special_ids: dict[str, int | None]) -> tuple[int, ...]:
    """The special ids a process gives zero probability: [MASK], and padding and bos, which never occur
    in training text, unless one of them is also end-of-text (Qwen's bos and pad, LLaDA's pad), which does."""
    eos = special_ids.get("eos")
    ids = [special_ids.get("mask")] + [special_ids.get(k) for k in ("pad", "bos") if special_ids.get(k) != eos]
    return tuple(dict.fromkeys(i for i in ids if i is not None))


@functools.lru_cache(maxsize=64)
def _index_on(ids: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor(ids, dtype=torch.long, device=device)


def index_tensor(ids, device: torch.device | str) -> Tensor:
    """Token ids as a long tensor on `device`, made once per (ids, device) and shared (read it,
    never write it): building it at every step is a host-to-device copy that waits for the GPU."""
    return _index_on(tuple(int(i) for i in ids), torch.device(device))


def low_discrepancy_times(batch_size: int, *, eps: float = 1e-3, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
    """Stratified times t_i = eps + (1 - eps) ((u + i/B) mod 1), one u ~ U[0, 1) per batch
    (Kingma et al., Variational Diffusion Models, 2021, app. I.1; MDLM sec. 3.5.1).

    Each t_i is still uniform on [eps, 1], but the batch covers the interval evenly, which cuts
    the variance of the NELBO estimate. eps keeps the 1/t weight of the linear schedule finite.
    """
    u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
    t = (u + torch.arange(batch_size, device=device, dtype=torch.float64) / batch_size) % 1.0  # (B,)
    return (eps + (1.0 - eps) * t).float()


def gumbel_noise(shape: tuple[int, ...], *, generator: torch.Generator | None, device) -> Tensor:
    """Standard Gumbel noise -log(-log u) in float64: float32 noise truncates the tail and
    measurably lowers diversity (Zheng et al., 2024, "Masked diffusion models are secretly
    time-agnostic masked models and exploit inaccurate categorical sampling")."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp_min(1e-300)))


def sample_categorical(logits: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """One draw from softmax(logits) over the last axis by float64 Gumbel-max; (..., V) -> (...)."""
    g = gumbel_noise(tuple(logits.shape), generator=generator, device=logits.device)
    return (logits.double() + g).argmax(dim=-1)
