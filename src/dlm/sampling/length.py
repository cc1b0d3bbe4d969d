"""Infilling a span of unknown length: search over lengths, scored by the model's own likelihood.

A span written ``<fill:A-B>`` (a `range` piece) may take any length from A to B tokens. For
each candidate assignment of lengths to the unknown spans (`per_span` evenly spaced lengths
per span, every combination, at most `max_candidates`):

1. fill the spans with the sampler (`fill`, one call per candidate);
2. estimate the model's NELBO of the whole filled text with `score_samples` Monte-Carlo
   draws; every candidate gets the same draws (common random numbers), so that what differs
   between candidates is the text, not the noise;
3. keep, for each sample, the candidate with the fewest bits per character of the whole text.

Why a search and not the other option (generate into the longest length and let end-of-text
tokens absorb the surplus): a model trained on packed documents never saw end-of-text inside
a document, so it has nothing sensible to write in surplus positions mid-text; the search
asks nothing of training and works for every process that infills (masked, uniform,
Gaussian). Per character rather than in total: the total bound favours the shortest fill,
which has the fewest tokens to pay for. Cost: candidates x (sampler NFE + one scoring pass of
samples x score_samples rows). Measured in `benchmarks/infill_length.py`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.processes.likelihood import stratified_uniforms
from dlm.sampling.canvas import Canvas
from dlm.sampling.infill import Piece, infill_canvas
from dlm.sampling.result import SampleOutput

LN2 = math.log(2.0)


@dataclass
class LengthSearch:
    texts: list[str]  # per sample: the text with its spans filled at the chosen lengths
    lengths: list[tuple[int, ...]]  # per sample: the chosen length of each span, left to right
    candidates: list[tuple[int, ...]]  # the span lengths tried, one tuple per candidate
    bits_per_char: Tensor  # (C, S) each candidate's score for each sample (lower = likelier)
    nfe: int  # forward passes, sampling and scoring together
    seconds: float


def candidate_lengths(pieces: Sequence[Piece], *, per_span: int = 6, max_candidates: int = 64) -> list[tuple[int, ...]]:
    """Every combination of span lengths to try: a fixed span has its one length, a range span
    up to `per_span` evenly spaced lengths from its first to its last."""
    if per_span < 1:
        raise DlmError(f"per_span must be 1 or more, got {per_span}")
    options = []
    for piece in pieces:
        if isinstance(piece, range):
            if len(piece) == 0 or piece.start < 1:
                raise DlmError(f"a span's length range {piece.start}-{piece.stop - 1} holds no length of 1 or more")
            picks = torch.linspace(piece.start, piece.stop - 1, min(per_span, len(piece))).round().long().tolist()
            options.append(sorted(set(picks)))
        elif isinstance(piece, int):
            options.append([piece])
    count = math.prod(len(o) for o in options)
    if count > max_candidates:
        raise DlmError(f"{count} combinations of span lengths to try, more than {max_candidates}: give fewer "
                       f"spans an unknown length, narrow their ranges, or try fewer lengths per span")
    return list(itertools.product(*options))


def with_lengths(pieces: Sequence[Piece], lengths: Sequence[int]) -> list[Piece]:
    """`pieces` with each span (fixed or range) replaced by the next of `lengths`."""
    it = iter(lengths)
    return [next(it) if isinstance(p, (int, range)) else p for p in pieces]


@torch.no_grad()
def infill_lengths(fill: Callable[[Canvas], SampleOutput], scorer, process, pieces: Sequence[Piece],
                   tokenizer: Tokenizer, *, num_samples: int = 1, per_span: int = 6, max_candidates: int = 64,
                   score_samples: int = 8, seed: int = 0, device: torch.device | str = "cpu") -> LengthSearch:
    """Fill `pieces` (with range spans of unknown length) `num_samples` times, choosing each
    sample's span lengths by the scorer's bits per character of the whole text.

    fill(canvas) runs a sampler on one candidate's canvas (e.g. a closure over sample_confidence
    with its steps and generator); scorer is the plain denoiser the likelihood is estimated with
    (not a guided or token-banning wrapper, whose logits are not a model of the text)."""
    start = time.perf_counter()
    candidates = candidate_lengths(pieces, per_span=per_span, max_candidates=max_candidates)
    texts: list[list[str]] = []  # (C, S)
    scores = torch.empty(len(candidates), num_samples, dtype=torch.float64)  # (C, S) bits per char
    nfe = 0
    for c, lengths in enumerate(candidates):
        infill = infill_canvas(with_lengths(pieces, lengths), tokenizer, num_samples=num_samples, device=device)
        out = fill(infill.canvas)
        nfe += out.nfe
        row_texts = [infill.assemble(out.tokens, tokenizer, row=b) for b in range(num_samples)]
        texts.append(row_texts)
        # the same draws for every candidate: common random numbers across the comparison
        generator = torch.Generator(device=out.tokens.device).manual_seed(seed)
        u = stratified_uniforms(num_samples, score_samples, generator=generator).reshape(-1)  # (S K,)
        x0 = out.tokens.repeat_interleave(score_samples, dim=0)  # (S K, L): rows of one candidate share a length
        nats = process.nelbo(scorer, x0, u=u, generator=generator).double().cpu()  # (S K,)
        nfe += 1
        chars = torch.tensor([max(len(t), 1) for t in row_texts], dtype=torch.float64)  # (S,)
        scores[c] = nats.view(num_samples, score_samples).mean(dim=1) / LN2 / chars
    best = scores.argmin(dim=0)  # (S,)
    return LengthSearch(texts=[texts[int(c)][b] for b, c in enumerate(best)],
                        lengths=[candidates[int(c)] for c in best], candidates=candidates, bits_per_char=scores,
                        nfe=nfe, seconds=time.perf_counter() - start)
