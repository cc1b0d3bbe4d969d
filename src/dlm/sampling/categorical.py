"""Turning logits into the distribution a sampler draws from: temperature, top-k, top-p."""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.processes.base import gumbel_noise


def check_knobs(*, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Logits of the tempered, truncated distribution; (..., V) -> (..., V) float32.

    temperature 0 keeps only the argmax (greedy). top-k keeps the k largest logits; top-p
    keeps the smallest set whose probability reaches p (Holtzman et al., 2020, eq. 3)."""
    logits = logits.float()
    if temperature == 0:
        greedy = torch.full_like(logits, float("-inf"))
        return greedy.scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # (..., V)
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False  # the most likely token always stays (a p that rounds to 0 in float32)
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def draw(logits: Tensor, *, temperature: float, top_k: int | None = None, top_p: float | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """A token per position: argmax at temperature 0, else float64 Gumbel-max from the
    filtered distribution (LLaDA's `add_gumbel_noise`, in the equivalent additive form
    argmax(l/T + g)); (..., V) -> (...)."""
    if temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    g = gumbel_noise(tuple(filtered.shape), generator=generator, device=filtered.device)
    return (filtered.double() + g).argmax(-1)
