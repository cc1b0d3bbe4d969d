"""Infilling: text with marked spans -> a Canvas where only the spans are editable -> text.

Syntax: ``<fill:N>`` marks a span of N tokens to generate (characters, for a char-level
model), e.g. ``"Friends, Romans, <fill:12>, lend me your ears"``. Everything outside the
spans comes back byte-identical: the result is assembled from the original strings, and only
the spans are decoded from tokens. (From Python, pass segments directly to skip parsing:
``["Friends, ", 12, " ears"]``.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.sampling.canvas import Canvas

SPAN = re.compile(r"<fill:(\d+)>")
SPAN_LIKE = re.compile(r"<fill\b[^>]*>?")

Piece = str | int  # literal text, or a span of that many tokens


def parse_template(text: str) -> list[Piece]:
    """'a <fill:3> b' -> ['a ', 3, ' b']; raises DlmError on malformed or missing spans."""
    pieces: list[Piece] = []
    pos = 0
    for m in SPAN_LIKE.finditer(text):
        span = SPAN.fullmatch(m.group(0))
        if span is None:
            raise DlmError(f"malformed span {m.group(0)!r} at character {m.start()}: write <fill:N> with N "
                           f"the number of tokens to generate, e.g. <fill:12>")
        n = int(span.group(1))
        if n < 1:
            raise DlmError(f"span {m.group(0)!r} at character {m.start()} asks for no tokens: use N >= 1")
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        pieces.append(n)
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    if not any(isinstance(p, int) for p in pieces):
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
    row = [piece if isinstance(piece, int) else tokenizer.encode(piece) for piece in pieces]
    canvas = Canvas.from_segments([row] * num_samples, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                                  device=device)
    return InfillCanvas(tuple(pieces), canvas)
