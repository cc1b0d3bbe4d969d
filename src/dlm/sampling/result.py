"""What samplers hand back: a StepInfo to the callback after every step, a SampleOutput at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


def elapsed(start: float, tokens: Tensor) -> float:
    """Seconds since `start` (a time.perf_counter() reading), counted once the device holding
    `tokens` has finished the work queued on it: CUDA kernels run asynchronously, and a sampler
    with no sync in its loop (autoregressive) would otherwise report only the launch time."""
    if tokens.is_cuda:
        torch.cuda.synchronize(tokens.device)
    return time.perf_counter() - start


@dataclass
class StepInfo:
    step: int  # 1-based index of the step just taken
    steps: int  # total number of steps
    tokens: Tensor  # (B, L) the canvas after this step
    changed: Tensor  # (B, L) bool: positions written in this step
    confidence: Tensor | None  # (B, L) float: the sampler's confidence in each written token, else None
    t: float  # the noise level reached (1 = all noise, 0 = clean)
    nfe: int  # forward passes so far


Callback = Callable[[StepInfo], None]


@dataclass
class SampleOutput:
    tokens: Tensor  # (B, L) the final canvas
    nfe: int  # denoiser forward passes (a batched pass counts once)
    steps: int  # sampler steps taken
    seconds: float  # wall-clock time of the sampling loop
    generated: int  # positions written per row (the editable positions of the widest row)
    history: list[Tensor] = field(default_factory=list)  # (B, L) canvas after each step, when asked for

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per forward pass: how parallel the decoding was (AR decoding is 1)."""
        return self.generated / max(self.nfe, 1)
