"""Infilling a span of unknown length: search over lengths, scored by the model's own likelihood.

A span written ``<fill:A-B>`` (a `range` piece) may take any length from A to B tokens. The
candidates: `per_span` evenly spaced lengths per span, every combination (at most
`max_candidates`). Two ways to choose among them:

- "context" (absorbing processes: masked diffusion). Choose the lengths n that make the fixed
  text likeliest with the spans left masked: argmax_n p_theta(context | n masked positions),
  the fill marginalised out. A masked-diffusion model is an any-order autoregressive model, so
  this is its NELBO over the context positions with the span positions kept [MASK] throughout.
  Every candidate scores the same characters, so totals compare directly; the fill does not
  enter, so only the chosen length is sampled (cost: one scoring pass per candidate + one fill).
- "text" (every process that infills). Fill the spans at every candidate length and keep, per
  sample, the likeliest whole text per character. Per character, because the total favours the
  shortest fill; but a greedy fill is likelier per character than real text, so this leans to
  long fills (measured in `benchmarks/infill_length.py`), which is why "context" is preferred
  where the process allows it.

Each candidate's bound is estimated with `score_samples` Monte-Carlo draws, the same draws for
every candidate (common random numbers), so that what differs between candidates is the text,
not the noise.

Why a search and not the other option (generate into the longest length and let end-of-text
tokens absorb the surplus): a model trained on packed documents never saw end-of-text inside
a document, so it has nothing sensible to write in surplus positions mid-text; the search
asks nothing of training.
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


CRITERIA = ("auto", "context", "text")


@dataclass
class LengthSearch:
    texts: list[str]  # per sample: the text with its spans filled at the chosen lengths
    lengths: list[tuple[int, ...]]  # per sample: the chosen length of each span, left to right
    candidates: list[tuple[int, ...]]  # the span lengths tried, one tuple per candidate
    criterion: str  # "context" or "text"
    scores: Tensor  # (C, S) each candidate's score for each sample, lower = likelier: bits of the context
    # ("context", the same for every sample) or bits per character of the filled text ("text")
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


def nelbo_bits(scorer, process, rows: Tensor, *, score_samples: int, seed: int,
               loss_mask: Tensor | None = None) -> Tensor:
    """Each row's NELBO in bits, the mean of `score_samples` stratified draws seeded by `seed`
    (the same draws for every call: common random numbers); rows (S, L) -> (S,) float64."""
    S = rows.shape[0]
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    u = stratified_uniforms(S, score_samples, generator=generator).reshape(-1)  # (S K,)
    x0 = rows.repeat_interleave(score_samples, dim=0)  # (S K, L)
    mask = None if loss_mask is None else loss_mask.repeat_interleave(score_samples, dim=0)
    nats = process.nelbo(scorer, x0, u=u, generator=generator, loss_mask=mask).double().cpu()  # (S K,)
    return nats.view(S, score_samples).mean(dim=1) / LN2


@torch.no_grad()
def infill_lengths(fill: Callable[[Canvas], SampleOutput], scorer, process, pieces: Sequence[Piece],
                   tokenizer: Tokenizer, *, criterion: str = "auto", num_samples: int = 1, per_span: int = 6,
                   max_candidates: int = 64, score_samples: int = 8, seed: int = 0,
                   device: torch.device | str = "cpu") -> LengthSearch:
    """Fill `pieces` (with range spans of unknown length) `num_samples` times at the lengths the
    criterion chooses ("auto": "context" for an absorbing process, else "text").

    fill(canvas) runs a sampler on one candidate's canvas (e.g. a closure over sample_confidence
    with its steps and generator); scorer is the plain denoiser the likelihood is estimated with
    (not a guided or token-banning wrapper, whose logits are not a model of the text)."""
    if criterion not in CRITERIA:
        raise DlmError(f"unknown length criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "auto":
        criterion = "context" if process.absorbing else "text"
    if criterion == "context" and not process.absorbing:
        raise DlmError(f"the {process.name} process has no [MASK] to leave a span masked with: use the "
                       f"'text' criterion")
    start = time.perf_counter()
    candidates = candidate_lengths(pieces, per_span=per_span, max_candidates=max_candidates)
    canvases = [infill_canvas(with_lengths(pieces, lengths), tokenizer, num_samples=num_samples, device=device)
                for lengths in candidates]
    scores = torch.empty(len(candidates), num_samples, dtype=torch.float64)  # (C, S)
    nfe = 0
    if criterion == "context":
        for c, infill in enumerate(canvases):
            row = infill.canvas  # span positions hold [MASK] and stay masked; only the context is scored
            scores[c] = nelbo_bits(scorer, process, row.tokens[:1], score_samples=score_samples, seed=seed,
                                   loss_mask=~row.editable[:1])
            nfe += 1
        best = int(scores[:, 0].argmin())
        out = fill(canvases[best].canvas)
        nfe += out.nfe
        texts = [canvases[best].assemble(out.tokens, tokenizer, row=b) for b in range(num_samples)]
        lengths = [candidates[best]] * num_samples
    else:
        filled: list[list[str]] = []  # (C, S)
        for c, infill in enumerate(canvases):
            out = fill(infill.canvas)
            row_texts = [infill.assemble(out.tokens, tokenizer, row=b) for b in range(num_samples)]
            filled.append(row_texts)
            chars = torch.tensor([max(len(t), 1) for t in row_texts], dtype=torch.float64)  # (S,)
            scores[c] = nelbo_bits(scorer, process, out.tokens, score_samples=score_samples, seed=seed) / chars
            nfe += out.nfe + 1
        choice = scores.argmin(dim=0)  # (S,)
        texts = [filled[int(c)][b] for b, c in enumerate(choice)]
        lengths = [candidates[int(c)] for c in choice]
    return LengthSearch(texts=texts, lengths=lengths, candidates=candidates, criterion=criterion, scores=scores,
                        nfe=nfe, seconds=time.perf_counter() - start)
