"""Infilling a span of unknown length: the candidates tried, the choice by bits per character,
and the text around the span kept byte for byte."""

from __future__ import annotations

import pytest
import torch

from dlm.errors import DlmError
from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, parse_template
from dlm.sampling.editing import Edit, edit_pieces
from dlm.sampling.length import candidate_lengths, infill_lengths, with_lengths

from conftest import build


def test_unknown_length_syntax():
    assert parse_template("a <fill:2-9> b <fill:3>") == ["a ", range(2, 10), " b ", 3]
    with pytest.raises(DlmError, match="bounds reversed"):
        parse_template("a <fill:9-2> b")
    assert Edit.parse("3:8:2-6") == Edit(3, 8, range(2, 7))
    with pytest.raises(DlmError, match="START:END:A-B"):
        Edit.parse("3:8:2-x")


def test_candidates_span_the_range_and_are_capped():
    assert candidate_lengths(["a", range(4, 21), "b"], per_span=5) == [(4,), (8,), (12,), (16,), (20,)]
    assert candidate_lengths([range(1, 3), 5, range(7, 8)], per_span=6) == [(1, 5, 7), (2, 5, 7)]
    assert with_lengths(["a", range(1, 3), "b", 5], (2, 5)) == ["a", 2, "b", 5]
    with pytest.raises(DlmError, match="more than 8"):
        candidate_lengths([range(1, 10), range(1, 10)], per_span=3, max_candidates=8)


class Prefers:
    """A denoiser that puts almost all its probability on one token everywhere."""

    time_conditioned = False

    def __init__(self, token: int, vocab_size: int):
        self.token, self.vocab_size = token, vocab_size

    def __call__(self, x_t, t, *, attention_mask=None, **_):
        logits = torch.zeros(*x_t.shape, self.vocab_size)
        logits[..., self.token] = 12.0
        return logits  # (B, L, V)


def fill_with(token: int):
    def fill(canvas):
        from dlm.sampling.result import SampleOutput

        tokens = torch.where(canvas.editable, token, canvas.tokens)
        return SampleOutput(tokens=tokens, nfe=1, steps=1, seconds=0.0, generated=int(canvas.editable[0].sum()))
    return fill


@pytest.mark.parametrize("fill_char,expected", [("a", (9,)), ("q", (1,))])
def test_the_likeliest_text_per_character_wins(tokenizer, fill_char, expected):
    """Under a model that expects 'a' everywhere, and a text half of 'a's, filling with 'a's makes
    the whole text likelier per character the longer the fill; filling with 'q's, the shorter."""
    process, _ = build("masked", tokenizer)
    scorer = Prefers(tokenizer.encode("a")[0], tokenizer.vocab_size)
    search = infill_lengths(fill_with(tokenizer.encode(fill_char)[0]), scorer, process,
                            ["To be, ", range(1, 10), "aaaaaaa"], tokenizer, num_samples=2, per_span=5,
                            score_samples=64)
    assert search.candidates == [(1,), (3,), (5,), (7,), (9,)]
    assert search.lengths == [expected, expected]
    assert search.texts[0] == "To be, " + fill_char * expected[0] + "aaaaaaa"
    assert search.bits_per_char.shape == (5, 2)
    assert bool(torch.all(search.bits_per_char.argmin(0) == search.candidates.index(expected)))
    assert search.nfe == 5 * 2  # one sampling pass (the fake fill) and one scoring pass per candidate


@pytest.mark.parametrize("process_name", sorted(p for p in PROCESSES if PROCESSES[p].infills))
def test_unknown_length_keeps_the_text_around_the_span(process_name, tokenizer):
    process, model = build(process_name, tokenizer)
    sampler = SAMPLERS[process.default_sampler]
    pieces = edit_pieces("To be, or not to be, that is", [Edit(7, 13, range(2, 12))], tokenizer)

    def fill(canvas):
        return sampler(model, process, canvas, steps=4, temperature=1.0, generator=torch.Generator().manual_seed(0))

    search = infill_lengths(fill, model, process, pieces, tokenizer, num_samples=3, per_span=4, score_samples=2)
    assert search.candidates == [(2,), (5,), (8,), (11,)]
    for text, (n,) in zip(search.texts, search.lengths):
        assert text.startswith("To be, ") and text.endswith(" to be, that is")
        assert len(text) == len("To be, ") + n + len(" to be, that is")  # one character per token
    assert torch.isfinite(search.bits_per_char).all()
