"""Editing: rewrite character ranges of a text, with constraints.

- `edit_pieces(text, edits, tokenizer)` turns "rewrite characters [start, end), optionally
  into n tokens" into infilling pieces: the text outside the ranges stays byte-identical
  (it is the infilling machinery underneath), and a range without a length keeps the number
  of tokens it had.
- Forced tokens are fixed text inside a span: ``["To ", 3, "ing", 4, "."]`` forces "ing" at
  positions 3-5 of a ten-token rewrite.
- `BannedTokens` wraps a denoiser so that the given token ids get zero probability.
- `cut_at_stop` ends a generated text at the first stop string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.processes.base import index_tensor
from dlm.sampling.infill import Piece


@dataclass(frozen=True)
class Edit:
    start: int  # first character to rewrite
    end: int  # one past the last (start == end inserts)
    length: int | range | None = None  # tokens to write there (a range: search them, see sampling.length);
    # None = as many as the range has now

    @classmethod
    def parse(cls, spec: str) -> "Edit":
        """'START:END', 'START:END:N' or 'START:END:A-B' (characters; N tokens, or A to B tokens)."""
        parts = spec.split(":")
        try:
            numbers = [int(p) for p in parts[:2]]
            if len(parts) == 3:
                low, _, high = parts[2].partition("-")
                numbers.append(int(low) if not high else range(int(low), int(high) + 1))
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or len(parts) > 3:
            raise DlmError(f"--span {spec!r}: write START:END, START:END:N or START:END:A-B (character offsets; "
                           f"N tokens, or between A and B), e.g. 10:24, 10:24:8 or 10:24:4-16")
        return cls(*numbers)


def edit_pieces(text: str, edits: Sequence[Edit], tokenizer: Tokenizer) -> list[Piece]:
    """Infilling pieces that rewrite the edits' ranges of `text` and keep the rest."""
    if not edits:
        raise DlmError("nothing to edit: give at least one range")
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    pieces: list[Piece] = []
    pos = 0
    for e in ordered:
        if not 0 <= e.start <= e.end <= len(text):
            raise DlmError(f"range {e.start}:{e.end} is outside the text (0:{len(text)})")
        if e.start < pos:
            raise DlmError(f"range {e.start}:{e.end} overlaps the range before it; give ranges that do not overlap")
        n = e.length if e.length is not None else len(tokenizer.encode(text[e.start:e.end]))
        shortest = (n.start if len(n) else 0) if isinstance(n, range) else n
        if shortest < 1:
            raise DlmError(f"range {e.start}:{e.end} would be rewritten into no tokens: give it a length "
                           f"(START:END:N with N >= 1)")
        if e.start > pos:
            pieces.append(text[pos:e.start])
        pieces.append(n)
        pos = e.end
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


class BannedTokens:
    """A Denoiser whose logits give the banned ids zero probability (-inf); otherwise the wrapped
    denoiser, with its attributes (time conditioning, config, embeddings) visible through it."""

    def __init__(self, denoiser, banned_ids: Iterable[int]):
        self.denoiser = denoiser
        self.banned_ids = sorted(set(int(i) for i in banned_ids))

    def ban(self, logits: Tensor) -> Tensor:
        if not self.banned_ids:
            return logits
        return logits.index_fill(-1, index_tensor(self.banned_ids, logits.device), float("-inf"))

    def __call__(self, x_t: Tensor, t: Tensor, **kwargs) -> Tensor:
        out = self.denoiser(x_t, t, **kwargs)
        # a denoiser of embeddings (Diffusion-LM) returns vectors: the ban applies to its rounding instead
        return out if x_t.is_floating_point() else self.ban(out)  # (B, L, V) logits

    def rounding_logits(self, x: Tensor) -> Tensor:
        return self.ban(self.denoiser.rounding_logits(x))

    def __getattr__(self, name):
        return getattr(self.denoiser, name)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]
