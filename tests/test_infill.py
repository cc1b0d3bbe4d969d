"""Infilling: the span syntax, and text outside the spans coming back byte for byte."""

import random

import pytest
import torch

from dlm.data import train_bpe_tokenizer
from dlm.errors import DlmError
from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, infill_canvas, parse_template

from conftest import TEXT, build


def test_parse_template():
    assert parse_template("a <fill:3> b<fill:12>") == ["a ", 3, " b", 12]
    assert parse_template("<fill:1>") == [1]


@pytest.mark.parametrize("text,message", [
    ("no spans here", "no span to fill"),
    ("bad <fill:x> span", "malformed span '<fill:x>'"),
    ("bad <fill:> span", "malformed span"),
    ("bad <fill:3 span", "malformed span"),
    ("zero <fill:0> span", "asks for no tokens"),
])
def test_bad_templates_are_explained(text, message):
    with pytest.raises(DlmError, match=message):
        parse_template(text)


def random_template(rng: random.Random, alphabet: str) -> list:
    pieces = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.8:
            pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 15))))
        pieces.append(rng.randint(1, 6))
    if rng.random() < 0.5:
        pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 15))))
    return pieces


INFILLING = [(p, s) for p in sorted(PROCESSES) if PROCESSES[p].infills for s in PROCESSES[p].samplers]


@pytest.mark.parametrize("process_name,sampler_name", INFILLING)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_text_outside_spans_is_byte_identical(process_name, sampler_name, kind, tokenizer):
    tok = tokenizer if kind == "char" else train_bpe_tokenizer([TEXT * 3], vocab_size=300)
    alphabet = sorted(set(TEXT)) if kind == "char" else list(TEXT) + list("éü😀\t—")
    process, model = build(process_name, tok)
    rng = random.Random(0)
    for trial in range(12):
        pieces = random_template(rng, alphabet)
        infill = infill_canvas(pieces, tok, num_samples=2)
        out = SAMPLERS[sampler_name](model, process, infill.canvas, steps=4, temperature=1.0,
                                     generator=torch.Generator().manual_seed(trial))
        for row in range(2):
            text = infill.assemble(out.tokens, tok, row=row)
            pos = 0
            for piece in pieces:  # every literal piece appears, in order, exactly as given
                if isinstance(piece, str):
                    found = text.find(piece, pos)
                    assert found >= pos, (pieces, text)
                    pos = found + len(piece)
            fixed = ~infill.canvas.editable[row]
            assert torch.equal(out.tokens[row][fixed], infill.canvas.tokens[row][fixed])


def test_assembled_text_structure(tokenizer):
    """The result is exactly prefix + decoded span + suffix, with each span's own tokens."""
    pieces = parse_template("To be, <fill:5> not to be")
    infill = infill_canvas(pieces, tokenizer)
    tokens = infill.canvas.tokens.clone()
    tokens[infill.canvas.editable] = torch.tensor(tokenizer.encode("or oh"))
    assert infill.assemble(tokens, tokenizer) == "To be, or oh not to be"
