"""Monte-Carlo estimate of a process's NELBO over a set of chunks, in bits, with its standard error.

For diffusion the NELBO is an upper bound on -log p(x) (so bits/char is a bound too); each
chunk's bound is estimated with `samples_per_chunk` stratified draws of the process's
lowest-variance unbiased estimator (`process.nelbo`). Two standard errors come with it:

- `stderr`: the Monte-Carlo standard error, how far the figure could move if the same chunks
  were evaluated with other random draws: sqrt(sum_i s_i^2 / K) / N from each chunk's spread
  s_i over its K samples (conservative: stratified samples vary less than independent ones);
- `stderr_chunks`: the standard error of the mean over chunks, which adds chunk-to-chunk
  variation: the error bar for the population of text the chunks were drawn from.
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
    stderr_nats_per_token: float  # Monte-Carlo standard error (the chunks held fixed)
    chunks_stderr_nats_per_token: float  # standard error over chunks (Monte-Carlo + chunk variation)
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
        """Monte-Carlo standard error of bits_per_char."""
        return self.stderr_nats_per_token / LN2 * self.tokens_per_char

    @property
    def stderr_chunks(self) -> float:
        """Standard error of bits_per_char over chunks (for the text the chunks stand for)."""
        return self.chunks_stderr_nats_per_token / LN2 * self.tokens_per_char

    def to_dict(self) -> dict:
        return {**asdict(self), "bits_per_token": self.bits_per_token, "bits_per_char": self.bits_per_char,
                "stderr": self.stderr, "stderr_bits_per_token": self.stderr_nats_per_token / LN2,
                "stderr_chunks": self.stderr_chunks}


def stratified_uniforms(num_chunks: int, samples: int, *, generator: torch.Generator | None) -> Tensor:
    """u[i, k] = (u_i + k/K) mod 1, one u_i ~ U[0, 1) per chunk: each chunk's K samples cover
    [0, 1) evenly (Kingma et al., 2021, app. I.1); -> (N, K)."""
    device = generator.device if generator is not None else None  # a CUDA generator draws on the GPU
    u = torch.rand(num_chunks, 1, generator=generator, dtype=torch.float64, device=device)
    return (u + torch.arange(samples, dtype=torch.float64, device=u.device)[None] / samples) % 1.0


@torch.no_grad()
def estimate_likelihood(process: ForwardProcess, denoiser: Denoiser, chunks: Tensor, *, samples_per_chunk: int = 4,
                        batch_size: int = 64, tokens_per_char: float = 1.0,
                        generator: torch.Generator | None = None,
                        loss_masks: Tensor | None = None) -> LikelihoodEstimate:
    """chunks (N, L) token ids, every position scored, or those where loss_masks (N, L) is True
    (prompt/response pairs: the response given the prompt); returns the NELBO per scored token
    and its error."""
    if chunks.dim() != 2 or chunks.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, L) tensor of chunks, got shape {tuple(chunks.shape)}")
    N, L = chunks.shape
    K = 1 if process.exact else samples_per_chunk  # an exact likelihood needs no repeats
    u = stratified_uniforms(N, K, generator=generator)  # (N, K)
    rows = chunks.repeat_interleave(K, dim=0)  # (N K, L): chunk i occupies rows i K .. i K + K - 1
    masks = None if loss_masks is None else loss_masks.repeat_interleave(K, dim=0)
    flat_u = u.reshape(-1)  # (N K,)
    nelbo = torch.empty(N * K, dtype=torch.float64)
    for start in range(0, N * K, batch_size):
        stop = min(start + batch_size, N * K)
        nelbo[start:stop] = process.nelbo(denoiser, rows[start:stop], u=flat_u[start:stop], generator=generator,
                                          loss_mask=None if masks is None else masks[start:stop]).double().cpu()
    # nats per scored token: each chunk's bound over the mean number of scored tokens per chunk, so
    # that the mean is total nats / total scored tokens (the ratio, when rows score different counts)
    scored = float(L) if loss_masks is None else max(loss_masks.sum().item() / N, 1.0)
    samples = nelbo.view(N, K) / scored  # (N, K)
    per_chunk = samples.mean(dim=1)  # (N,)
    chunks_stderr = per_chunk.std().item() / math.sqrt(N) if N > 1 else float("nan")
    if K > 1:
        mc_stderr = math.sqrt(samples.var(dim=1).sum().item() / K) / N
    else:  # one sample per chunk: the Monte-Carlo part cannot be separated; report the larger error
        mc_stderr = chunks_stderr
    return LikelihoodEstimate(nats_per_token=per_chunk.mean().item(), stderr_nats_per_token=mc_stderr,
                              chunks_stderr_nats_per_token=chunks_stderr, num_chunks=N, samples_per_chunk=K,
                              tokens_per_char=tokens_per_char)
