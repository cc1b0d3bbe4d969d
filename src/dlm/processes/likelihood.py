"""Monte-Carlo estimate of a process's NELBO over a set of chunks, in bits, with its standard error.

For diffusion the NELBO is an upper bound on -log p(x) (so bits/char is a bound too); each
chunk's bound is estimated with `samples_per_chunk` stratified times. The standard error is
that of the mean over chunks: it covers the Monte-Carlo noise (times and masks) and the
chunk-to-chunk variation, so it is the error bar for the corpus the chunks were drawn from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from dlm.processes.base import Denoiser, ForwardProcess

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LikelihoodEstimate:
    nats_per_token: float
    stderr_nats_per_token: float
    num_chunks: int
    samples_per_chunk: int
    tokens_per_char: float  # of the text the chunks came from; converts per-token to per-char

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / LN2

    @property
    def bits_per_char(self) -> float:
        return self.bits_per_token * self.tokens_per_char

    @property
    def stderr(self) -> float:
        """Standard error of bits_per_char."""
        return self.stderr_nats_per_token / LN2 * self.tokens_per_char

    def to_dict(self) -> dict:
        return {**asdict(self), "bits_per_token": self.bits_per_token, "bits_per_char": self.bits_per_char,
                "stderr": self.stderr, "stderr_bits_per_token": self.stderr_nats_per_token / LN2}


def stratified_times(num_chunks: int, samples: int, *, eps: float, generator: torch.Generator | None) -> Tensor:
    """t[i, k] = eps + (1 - eps) ((u_i + k/K) mod 1), one u_i per chunk; -> (N, K)."""
    u = torch.rand(num_chunks, 1, generator=generator, dtype=torch.float64)
    t = (u + torch.arange(samples, dtype=torch.float64)[None] / samples) % 1.0  # (N, K)
    return (eps + (1.0 - eps) * t).float()


@torch.no_grad()
def estimate_likelihood(process: ForwardProcess, denoiser: Denoiser, chunks: Tensor, *, samples_per_chunk: int = 4,
                        batch_size: int = 64, tokens_per_char: float = 1.0,
                        generator: torch.Generator | None = None) -> LikelihoodEstimate:
    """chunks (N, L) token ids, every position scored; returns the NELBO per token and its error."""
    if chunks.dim() != 2 or chunks.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, L) tensor of chunks, got shape {tuple(chunks.shape)}")
    N, L = chunks.shape
    K = samples_per_chunk
    times = stratified_times(N, K, eps=getattr(process, "time_eps", 1e-3), generator=generator)  # (N, K)
    rows = chunks.repeat_interleave(K, dim=0)  # (N K, L): chunk i occupies rows i K .. i K + K - 1
    flat_t = times.reshape(-1)  # (N K,)
    nelbo = torch.empty(N * K, dtype=torch.float64)
    for start in range(0, N * K, batch_size):
        stop = min(start + batch_size, N * K)
        out = process.loss(denoiser, rows[start:stop], t=flat_t[start:stop].to(chunks.device), generator=generator)
        nelbo[start:stop] = out.nelbo.double().cpu()
    per_chunk = nelbo.view(N, K).mean(dim=1) / L  # (N,) nats per token
    if N > 1:
        stderr = per_chunk.std(unbiased=True).item() / math.sqrt(N)
    else:  # one chunk: only the Monte-Carlo spread across its samples is measurable
        stderr = (nelbo.std(unbiased=True).item() / L / math.sqrt(K)) if K > 1 else float("nan")
    return LikelihoodEstimate(nats_per_token=per_chunk.mean().item(), stderr_nats_per_token=stderr,
                              num_chunks=N, samples_per_chunk=K, tokens_per_char=tokens_per_char)
