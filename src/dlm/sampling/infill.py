"""Infilling: text with marked spans -> a Canvas where only the spans are editable -> text.

Syntax: ``<fill:N>`` marks a span of N tokens to generate (characters, for a char-level
model), e.g. ``"Friends, Romans, <fill:12>, lend me your ears"``; ``<fill:A-B>`` marks a span
whose length is unknown, between A and B tokens (see `dlm.sampling.length`). Everything outside the
spans comes back byte-identical: the result is assembled from the original strings, and only
the spans are decoded from tokens. (From Python, pass segments directly to skip parsing:
``["Friends, ", 12, " ears"]``, or ``range(A, B + 1)`` for a span of unknown length.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.sampling.canvas import Canvas

SPAN = re.compile(r"<fill:(\d+)(?:-(\d+))?>")
SPAN_LIKE = re.compile(r"<fill\b[^>]*>?")
MAX_SPAN_DIGITS = 9  # far above any context; keeps int() away from Python's 4,300-digit limit

Piece = str | int | range  # literal text, a span of that many tokens, or of one of the range's lengths


def parse_template(text: str) -> list[Piece]:
    """'a <fill:3> b<fill:2-9>' -> ['a ', 3, ' b', range(2, 10)]; raises DlmError on malformed or
    missing spans."""
    pieces: list[Piece] = []
    pos = 0
    for m in SPAN_LIKE.finditer(text):
        span = SPAN.fullmatch(m.group(0))
        if span is None:
            raise DlmError(f"malformed span {m.group(0)!r} at character {m.start()}: write <fill:N> with N "
                           f"the number of tokens to generate, e.g. <fill:12>, or <fill:A-B> for a length "
                           f"between A and B")
        if max(len(span.group(1)), len(span.group(2) or "")) > MAX_SPAN_DIGITS:
            raise DlmError(f"span at character {m.start()} asks for a length of over {MAX_SPAN_DIGITS} digits; "
                           f"write <fill:N> with N the number of tokens to generate")
        n = int(span.group(1))
        high = n if span.group(2) is None else int(span.group(2))
        if n < 1:
            raise DlmError(f"span {m.group(0)!r} at character {m.start()} asks for no tokens: use N >= 1")
        if high < n:
            raise DlmError(f"span {m.group(0)!r} at character {m.start()} has its bounds reversed: write "
                           f"<fill:{high}-{n}>")
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        pieces.append(n if span.group(2) is None else range(n, high + 1))
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    if not any(isinstance(p, (int, range)) for p in pieces):
        raise DlmError("the text has no span to fill: mark one with <fill:N>, "
                       "e.g. 'Friends, Romans, <fill:12>, lend me your ears'")
    return pieces


@dataclass(frozen=True)
class InfillCanvas:
    pieces: tuple[Piece, ...]
    canvas: Canvas

    def assemble(self, tokens: torch.Tensor, tokenizer: Tokenizer, row: int = 0) -> str:
        """The original text with each span replaced by its decoded tokens."""
        generated = self.canvas.generated(tokens, row)
        out, used = [], 0
        for piece in self.pieces:
            if isinstance(piece, int):
                out.append(tokenizer.decode(generated[used:used + piece]))
                used += piece
            else:
                out.append(piece)
        return "".join(out)


def infill_canvas(pieces: Sequence[Piece], tokenizer: Tokenizer, *, num_samples: int = 1,
                  device: torch.device | str = "cpu") -> InfillCanvas:
    """Encode each literal piece on its own (so its bytes survive untouched) and lay the spans
    out as editable positions; `num_samples` identical rows."""
    if any(isinstance(p, range) for p in pieces):
        raise DlmError("a span has an unknown length (<fill:A-B>): search it with dlm.sampling.length.infill_lengths, "
                       "or give it one length (<fill:N>)")
    row = [piece if isinstance(piece, int) else tokenizer.encode(piece) for piece in pieces]
    canvas = Canvas.from_segments([row] * num_samples, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                                  device=device)
    return InfillCanvas(tuple(pieces), canvas)
