"""Conditional training data: prompt/response pairs, their loss masks, condition dropout."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.cli import main
from dlm.data.corpora import load_corpus, speech_line_pairs
from dlm.data.packing import pack_pairs
from dlm.processes import MaskedDiffusion
from dlm.processes.likelihood import estimate_likelihood

from conftest import tiny_model


def test_pack_pairs_lays_out_prompt_response_and_end_padding(tokenizer):
    eos = tokenizer.eos_id
    rows, masks, chars = pack_pairs(tokenizer, [("To", "be")], 8)
    assert rows[0].tolist() == tokenizer.encode("To") + tokenizer.encode("be") + [eos] * 4, "eos to the end"
    assert masks[0].tolist() == [False] * 2 + [True] * 6, "the prompt is never scored; its answer and end are"
    assert chars == 3, "the response's characters and one for its end"
    rows, masks, _ = pack_pairs(tokenizer, [("To be", "or not"), ("To be, or not to be, that is", "a")], 10)
    assert rows.shape == (1, 10), "a prompt that leaves no room for a response is skipped"
    assert rows[0].tolist() == tokenizer.encode("To be") + tokenizer.encode("or no"), "a long response is cut"


def test_speech_line_pairs():
    text = "KING RICHARD.\nOld John of Gaunt,\ntime-honour'd Lancaster,\nHast thou\n\nnot a speech\nat all"
    assert speech_line_pairs(text) == [("Old John of Gaunt,\n", "time-honour'd Lancaster,"),
                                       ("time-honour'd Lancaster,\n", "Hast thou")]


def test_masked_likelihood_over_all_positions_is_the_unmasked_one(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    process = MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id)
    chunks = torch.tensor([tokenizer.encode("To be, or not to be")] * 3)
    a = estimate_likelihood(process, model, chunks, generator=torch.Generator().manual_seed(0))
    b = estimate_likelihood(process, model, chunks, generator=torch.Generator().manual_seed(0),
                            loss_masks=torch.ones_like(chunks, dtype=torch.bool))
    assert a.nats_per_token == pytest.approx(b.nats_per_token)


def test_conditional_training_with_condition_dropout(tmp_path, capsys):
    lines = ["To be, or not to be", "that is the question", "Whether 'tis nobler", "in the mind to suffer"] * 30
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": a + "\n", "response": b}) for a, b in zip(lines, lines[1:])))
    assert load_corpus(str(path)).is_pairs
    run = str(tmp_path / "run")
    assert main(["train", "--data", str(path), "--cond-drop", "0.3", "--out", run, "--steps", "3", "--seq-len", "48",
                 "--batch-size", "4", "--eval-chunks", "4", "--final-eval-chunks", "4", "--no-compile",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", run, "--chunks", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_char"] > 0
    assert main(["generate", run, "--prompt", "To be, or not to be\n", "--length", "12", "--cfg", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"][0].startswith("To be, or not to be\n")


def test_condition_dropout_needs_pairs(tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("To be, or not to be, that is the question. " * 200)
    assert main(["train", "--data", str(tmp_path / "plain.txt"), "--cond-drop", "0.1", "--out",
                 str(tmp_path / "r"), "--steps", "1", "--seq-len", "32", "--no-compile"]) == 1
    assert "--cond-drop needs prompt/response pairs" in capsys.readouterr().err
