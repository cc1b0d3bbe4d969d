"""Editing: text outside the edited ranges is byte-identical, forced text stays where it is put,
banned tokens never appear, stop strings end the text."""

from __future__ import annotations

import pytest
import torch

from dlm.errors import DlmError
from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, infill_canvas
from dlm.sampling.editing import BannedTokens, Edit, cut_at_stop, edit_pieces

from conftest import build

TEXT = "To be, or not to be, that is the question"
INFILLING = [(p, s) for p in sorted(PROCESSES) if PROCESSES[p].infills for s in PROCESSES[p].samplers]


def test_edit_pieces_keep_the_text_around_the_ranges(tokenizer):
    pieces = edit_pieces(TEXT, [Edit(13, 19, 8), Edit(0, 2)], tokenizer)
    assert pieces == [2, " be, or not", 8, ", that is the question"]
    assert edit_pieces(TEXT, [Edit(5, 5, 3)], tokenizer) == ["To be", 3, ", or not to be, that is the question"]


@pytest.mark.parametrize("spec,message", [("3", "START:END"), ("a:b", "START:END"), ("5:2", "outside"),
                                          ("0:99", "outside"), ("4:4", "no tokens")])
def test_bad_ranges_are_explained(tokenizer, spec, message):
    with pytest.raises(DlmError, match=message):
        edit_pieces(TEXT, [Edit.parse(spec)], tokenizer)


def test_overlapping_ranges_are_refused(tokenizer):
    with pytest.raises(DlmError, match="overlaps"):
        edit_pieces(TEXT, [Edit(0, 5), Edit(3, 8)], tokenizer)


@pytest.mark.parametrize("process_name,sampler_name", INFILLING)
def test_edits_with_forced_and_banned_tokens(process_name, sampler_name, tokenizer):
    """Rewrite two ranges, one of them with forced text in its middle, banning the letters e and o."""
    process, model = build(process_name, tokenizer)
    banned = tokenizer.encode("eo") + [tokenizer.specials["eos"]]  # (no end-of-text: every token one character)
    pieces = edit_pieces(TEXT, [Edit(3, 5, 2), Edit(21, 28)], tokenizer)
    assert pieces == ["To ", 2, ", or not to be, ", 7, " the question"]
    pieces = pieces[:3] + [3, "to", 2] + pieces[4:]  # the second range: 3 tokens, a forced "to", 2 tokens
    infill = infill_canvas(pieces, tokenizer, num_samples=3)
    out = SAMPLERS[sampler_name](BannedTokens(model, banned), process, infill.canvas, steps=8, temperature=1.0,
                                 generator=torch.Generator().manual_seed(0))
    for row in range(3):
        text = infill.assemble(out.tokens, tokenizer, row=row)
        assert len(text) == len(TEXT), text
        assert text[:3] == "To " and text[5:21] == ", or not to be, " and text[28:] == " the question", text
        assert text[24:26] == "to", text  # forced text where it was put
        written = out.tokens[row][infill.canvas.editable[row]]
        assert not any(int(t) in banned for t in written), text


def test_stop_strings_end_the_text():
    assert cut_at_stop("To be, or not to be", [", or", "be"]) == "To "
    assert cut_at_stop("To be", ["xyz", ""]) == "To be"
