"""Checkpoint folders: round trip, atomic layout, and clear errors for everything that can be wrong."""

import json

import pytest
import torch

from dlm.errors import DlmError
from dlm.training.checkpoint import load_checkpoint, save_checkpoint

from conftest import tiny_model


@pytest.fixture
def saved(tmp_path, tokenizer, process):
    model = tiny_model(tokenizer.vocab_size)
    save_checkpoint(tmp_path / "run", step=7, model=model, process=process, tokenizer=tokenizer,
                    train_config={"data": "shakespeare"}, metrics={"val_bits_per_char": 2.5})
    return tmp_path / "run", model


def test_round_trip(saved, tokenizer):
    run, model = saved
    ckpt = load_checkpoint(run)
    assert ckpt.path.name == "checkpoint-000007" and ckpt.step == 7
    assert ckpt.metrics == {"val_bits_per_char": 2.5}
    assert ckpt.process.mask_id == tokenizer.mask_id and ckpt.tokenizer.specials == tokenizer.specials
    x = torch.randint(0, tokenizer.vocab_size, (2, 9))
    torch.testing.assert_close(ckpt.model(x), model(x))
    assert load_checkpoint(ckpt.path).step == 7  # the checkpoint folder itself loads too


def test_a_newer_save_replaces_the_older(saved, tokenizer, process):
    run, model = saved
    save_checkpoint(run, step=9, model=model, process=process, tokenizer=tokenizer, train_config={})
    assert (run / "latest").read_text().strip() == "checkpoint-000009"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-000009", "latest"]


def test_a_leftover_temporary_folder_is_ignored(saved, tokenizer):
    run, _ = saved
    (run / ".checkpoint-000008.tmp").mkdir()  # a save killed half way
    assert load_checkpoint(run).step == 7


def corrupt(run, name, content):
    folder = run / "checkpoint-000007"
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content)


@pytest.mark.parametrize("name,content,message", [
    ("config.json", b"{broken", "config.json is corrupt"),
    ("config.json", json.dumps({"model_type": "llada"}).encode(), "describes a LLaDA model but lacks 'd_model'"),
    ("config.json", json.dumps({"model_type": "gpt2"}).encode(), "'gpt2' model, which dlm cannot load"),
    ("model.safetensors", b"\x00\x01garbage", "model.safetensors is corrupt"),
    ("model.safetensors", None, "has no model.safetensors"),
    ("tokenizer.json", None, "has no tokenizer.json"),
    ("tokenizer.json", b"[]", "cannot read the tokenizer"),
])
def test_damaged_checkpoints_are_explained(saved, name, content, message):
    run, _ = saved
    corrupt(run, name, content)
    with pytest.raises(DlmError, match=message):
        load_checkpoint(run)


def test_weights_that_do_not_fit_the_config(saved, tokenizer, tmp_path):
    run, _ = saved
    other = tmp_path / "other"
    save_checkpoint(other, step=1, model=tiny_model(tokenizer.vocab_size, d_model=64), process=load_checkpoint(run).process,
                    tokenizer=tokenizer, train_config={})
    target = run / "checkpoint-000007" / "model.safetensors"
    target.write_bytes((other / "checkpoint-000001" / "model.safetensors").read_bytes())
    with pytest.raises(DlmError, match="do not match the model in config.json"):
        load_checkpoint(run)


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "nowhere", "does not exist"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no config.json"),
    (lambda p: (p / "r").mkdir() or (p / "r" / "latest").write_text("checkpoint-000001") and p / "r", "not a complete"),
])
def test_missing_checkpoints_are_explained(tmp_path, make, message):
    with pytest.raises(DlmError, match=message):
        load_checkpoint(make(tmp_path))
