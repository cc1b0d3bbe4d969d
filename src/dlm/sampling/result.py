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


class StepRecorder:
    """What every sampler does after each step and at the end, in one place: hand the step to
    the callback, keep the canvas when a history was asked for, and build the SampleOutput
    (timed from the recorder's creation to the end of the device's work)."""

    def __init__(self, canvas, *, steps: int, callback: Callback | None, record_history: bool,
                 generated: int | None = None, start: float | None = None):
        self.start = time.perf_counter() if start is None else start  # a time.perf_counter() reading
        self.steps, self.callback, self.record_history = steps, callback, record_history
        B = canvas.editable.shape[0]
        self.generated = generated if generated is not None else (int(canvas.editable.sum(1).max()) if B else 0)
        self.history: list[Tensor] = []

    def step(self, step: int, tokens: Tensor, changed: Tensor, *, nfe: int, t: float | Callable[[], float],
             confidence: Tensor | None = None) -> None:
        """After step `step` (1-based): tokens, changed (B, L). `t` may be a function, called only
        when there is a callback (computing it can cost a device sync)."""
        if self.record_history:
            self.history.append(tokens.clone())
        if self.callback is not None:
            self.callback(StepInfo(step=step, steps=self.steps, tokens=tokens, changed=changed,
                                   confidence=confidence, t=t() if callable(t) else t, nfe=nfe))

    def output(self, tokens: Tensor, *, nfe: int, steps: int) -> SampleOutput:
        return SampleOutput(tokens=tokens, nfe=nfe, steps=steps, seconds=elapsed(self.start, tokens),
                            generated=self.generated, history=self.history)

