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
                            ["To be, ", range(1, 10), "aaaaaaa"], tokenizer, criterion="text", num_samples=2,
                            per_span=5, score_samples=64)
    assert search.candidates == [(1,), (3,), (5,), (7,), (9,)]
    assert search.lengths == [expected, expected]
    assert search.texts[0] == "To be, " + fill_char * expected[0] + "aaaaaaa"
    assert search.criterion == "text" and search.scores.shape == (5, 2)
    assert bool(torch.all(search.scores.argmin(0) == search.candidates.index(expected)))
    assert search.nfe == 5 * 2  # one sampling pass (the fake fill) and one scoring pass per candidate


class ExpectsLength(Prefers):
    """Expects 'a' everywhere in a sequence of `length` tokens, and nothing in particular otherwise."""

    def __init__(self, token: int, vocab_size: int, length: int):
        super().__init__(token, vocab_size)
        self.length = length

    def __call__(self, x_t, t, *, attention_mask=None, **_):
        logits = super().__call__(x_t, t)
        return logits if x_t.shape[1] == self.length else torch.zeros_like(logits)


def test_context_criterion_picks_the_length_that_makes_the_context_likeliest(tokenizer):
    """Masked diffusion: the span stays masked and only the fixed text is scored; no fill is
    needed to choose, and only the chosen length is filled."""
    process, _ = build("masked", tokenizer)
    a = tokenizer.encode("a")[0]
    pieces = ["aaaa", range(2, 13), "aaa"]  # 7 fixed tokens; the scorer expects 7 + 8 in all
    search = infill_lengths(fill_with(a), ExpectsLength(a, tokenizer.vocab_size, 15), process, pieces, tokenizer,
                            num_samples=3, per_span=6, score_samples=4)
    assert search.criterion == "context"  # the default for an absorbing process
    assert search.candidates == [(2,), (4,), (6,), (8,), (10,), (12,)]
    assert search.lengths == [(8,)] * 3 and search.texts == ["a" * 15] * 3
    assert search.nfe == 6 + 1  # one scoring pass per candidate, then the one fill
    with pytest.raises(DlmError, match="no \\[MASK\\]"):
        infill_lengths(fill_with(a), ExpectsLength(a, tokenizer.vocab_size, 15), build("uniform", tokenizer)[0],
                       pieces, tokenizer, criterion="context")


@pytest.mark.parametrize("process_name", sorted(p for p in PROCESSES if PROCESSES[p].infills))
def test_unknown_length_keeps_the_text_around_the_span(process_name, tokenizer):
    process, model = build(process_name, tokenizer)
    sampler = SAMPLERS[process.default_sampler]
    pieces = edit_pieces("To be, or not to be, that is", [Edit(7, 13, range(2, 12))], tokenizer)

    def fill(canvas):
        return sampler(model, process, canvas, steps=4, temperature=1.0, generator=torch.Generator().manual_seed(0))

    for criterion in ("text", "context") if process.absorbing else ("text",):
        search = infill_lengths(fill, model, process, pieces, tokenizer, criterion=criterion, num_samples=3,
                                per_span=4, score_samples=2)
        assert search.candidates == [(2,), (5,), (8,), (11,)]
        for text, (n,) in zip(search.texts, search.lengths):
            assert text.startswith("To be, ") and text.endswith(" to be, that is")
            assert (n,) in search.candidates
            assert len(text) <= len("To be, ") + n + len(" to be, that is")  # <= one character per token (eos: none)
        assert torch.isfinite(search.scores).all()


def test_a_span_length_of_thousands_of_digits_is_refused_clearly():
    with pytest.raises(DlmError, match="over 9 digits"):
        parse_template("a <fill:" + "9" * 5000 + "> b")
    with pytest.raises(DlmError, match="over 9 digits"):
        parse_template("a <fill:2-" + "9" * 5000 + "> b")
