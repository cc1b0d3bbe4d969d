"""Noise schedules alpha(t) = P(a token is still clean at time t), t in [0, 1].

alpha(0) = 1 (clean data), alpha(1) = 0 or nearly (pure noise), decreasing in between. The
masked-diffusion NELBO weights its cross-entropy by -alpha'(t) / (1 - alpha(t)) (Sahoo et
al., MDLM, 2024, eq. 10; Shi et al., MD4, 2024, eq. 5), so each schedule gives its derivative
in closed form. The continuous-time NELBO itself does not depend on the schedule (MD4,
sec. 4.1: it is invariant to alpha's shape); the schedule changes only its variance in
training and where a sampler spends its steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor


class Schedule(Protocol):
    name: str

    def alpha(self, t: Tensor) -> Tensor: ...

    def alpha_prime(self, t: Tensor) -> Tensor: ...

    def alpha_inverse(self, a: Tensor) -> Tensor:
        """The t at which alpha(t) = a."""


@dataclass(frozen=True)
class LinearSchedule:
    """alpha(t) = 1 - t (MDLM's and LLaDA's default); the NELBO weight is 1/t."""

    name: str = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def alpha_inverse(self, a: Tensor) -> Tensor:
        return 1.0 - a


@dataclass(frozen=True)
class CosineSchedule:
    """alpha(t) = 1 - cos(pi/2 (1 - t)) (MD4, after MaskGIT's cosine mask ratio)."""

    name: str = "cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def alpha_inverse(self, a: Tensor) -> Tensor:
        return 1.0 - torch.arccos((1.0 - a).clamp(-1.0, 1.0)) / (0.5 * math.pi)


@dataclass(frozen=True)
class LogLinearSchedule:
    """Total noise sigma(t) = -log(1 - (1 - eps) t) (SEDD, MDLM), i.e. alpha(t) = 1 - (1 - eps) t.

    The eps keeps alpha(1) = eps > 0, so the last step is not singular.
    """

    eps: float = 1e-3
    name: str = "loglinear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def alpha_inverse(self, a: Tensor) -> Tensor:
        return ((1.0 - a) / (1.0 - self.eps)).clamp(max=1.0)


@dataclass(frozen=True)
class PolynomialSchedule:
    """alpha(t) = 1 - t^p (MD4's polynomial schedule); p > 1 keeps more tokens clean early on."""

    power: float = 2.0
    name: str = "polynomial"

    def __post_init__(self):
        if self.power <= 0:
            raise ValueError(f"polynomial schedule power must be positive, got {self.power}")

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t**self.power

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -self.power * t ** (self.power - 1.0)

    def alpha_inverse(self, a: Tensor) -> Tensor:
        return (1.0 - a).clamp(min=0.0) ** (1.0 / self.power)


SCHEDULES: dict[str, type] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "loglinear": LogLinearSchedule,
    "polynomial": PolynomialSchedule,
}


def make_schedule(name: str, **params) -> Schedule:
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**params)


def schedule_to_dict(schedule: Schedule) -> dict:
    """{"name": ..., **params}: what a checkpoint's config.json stores; make_schedule(**d) inverts it."""
    return asdict(schedule)
