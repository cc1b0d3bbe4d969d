"""The command line: every command, its --json keys, and bad input ending in a message, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlm.cli import COMMANDS, main

from conftest import train_tiny_run, write_corpus


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cli"), seq_len=32)


def run_json(capsys, argv):
    code = main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def fails(capsys, argv, message, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and command in capsys.readouterr().out


def test_python_dash_m_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "dlm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("dlm ")


def test_train_json(tmp_path, capsys):
    data = write_corpus(tmp_path / "c.txt")
    payload = run_json(capsys, ["train", "--data", data, "--out", str(tmp_path / "r"), "--steps", "2",
                                "--seq-len", "32", "--batch-size", "4", "--eval-chunks", "2", "--final-eval-chunks",
                                "2", "--no-compile"])
    assert payload["step"] == 2 and payload["bits_per_char"] > 0 and payload["stderr"] > 0
    assert payload["checkpoint"].endswith("checkpoint-000002")


def test_eval_json(run_dir, capsys, monkeypatch):
    from dlm.training import performance

    tuned = []
    monkeypatch.setattr(performance, "tune_allocator", lambda: tuned.append(True))
    payload = run_json(capsys, ["eval", str(run_dir), "--chunks", "4", "--samples", "2"])
    assert {"bits_per_char", "bits_per_token", "stderr"} <= set(payload)
    assert payload["bits_per_char"] > 0 and payload["stderr"] > 0 and payload["num_chunks"] == 4
    assert tuned == [True], "every command tunes the allocator before it runs"


@pytest.mark.parametrize("sampler", ["confidence", "ancestral"])
def test_generate_json(run_dir, capsys, sampler):
    payload = run_json(capsys, ["generate", str(run_dir), "--prompt", "To be", "--length", "10", "--steps", "5",
                                "--sampler", sampler, "--num-samples", "3", "--temperature", "1", "--seed", "3"])
    assert {"samples", "nfe", "seconds", "tokens_per_second", "tokens_per_forward"} <= set(payload)
    assert len(payload["samples"]) == 3 and all(s.startswith("To be") for s in payload["samples"])
    assert 1 <= payload["nfe"] <= 5
    again = run_json(capsys, ["generate", str(run_dir), "--prompt", "To be", "--length", "10", "--steps", "5",
                              "--sampler", sampler, "--num-samples", "3", "--temperature", "1", "--seed", "3"])
    assert again["samples"] == payload["samples"]


def test_generate_without_json_prints_text(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "To", "--length", "6", "--no-live"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("To") and "forward passes" in err


@pytest.mark.parametrize("bf16_units", [False, True])
def test_dtype_auto_follows_the_hardware(run_dir, monkeypatch, bf16_units):
    import argparse

    import torch

    from dlm.cli import DTYPES, load_from_args
    from dlm.errors import DlmError
    from dlm.training import performance

    monkeypatch.setattr(performance, "bf16_is_fast", lambda device: bf16_units)
    args = argparse.Namespace(checkpoint=str(run_dir), device="cpu", dtype="auto")
    weights = load_from_args(args).model.embed.weight
    assert weights.dtype == (torch.bfloat16 if bf16_units else torch.float32)
    assert DTYPES == performance.WEIGHT_DTYPES  # the parser's copy, kept so that it need not import torch
    with pytest.raises(DlmError, match="dtype must be one of float32, bfloat16, float16, auto"):
        performance.resolve_dtype("fp8", torch.device("cpu"))


def test_infill_json_keeps_the_text(run_dir, capsys):
    payload = run_json(capsys, ["infill", str(run_dir), "--text", "To be, <fill:4> not to be", "--steps", "4"])
    assert {"text", "nfe", "seconds"} <= set(payload)
    assert payload["text"].startswith("To be, ") and payload["text"].endswith(" not to be")


def test_infill_of_unknown_length(run_dir, capsys):
    payload = run_json(capsys, ["infill", str(run_dir), "--text", "To be, or not to be", "--span", "6:9:2-10",
                                "--lengths", "3", "--num-samples", "2", "--sampler", "confidence"])
    assert payload["candidates"] == [[2], [6], [10]]
    assert payload["criterion"] == "context" and len(payload["scores"]) == 2 and len(payload["scores"][0]) == 3
    for text, (n,) in zip(payload["texts"], payload["lengths"]):
        assert n in (2, 6, 10) and text == "To be," + text[6:6 + n] + " not to be"


@pytest.mark.parametrize("argv,message", [
    (["generate", "{run}", "--prompt", "To be " * 10, "--length", "10"], "more than the model's context of 32"),
    (["generate", "{run}", "--prompt", "Zebra", "--length", "4"], "character 'Z' (U+005A)"),
    (["generate", "{run}", "--prompt", "To", "--length", "0"], "--length must be 1 or more"),
    (["generate", "{run}", "--prompt", "To", "--length", "-4"], "--length must be 1 or more"),
    (["generate", "{run}", "--prompt", "", "--length", "4"], "a --prompt is empty"),
    (["generate", "{run}/nowhere", "--prompt", "To", "--length", "4"], "does not exist"),
    (["generate", "{run}", "--sampler", "ancestral", "--block-length", "2", "--length", "4"],
     "does not take --block-length"),
    (["generate", "{run}", "--length", "8", "--steps", "2", "--sampler", "confidence", "--block-length", "2"],
     "cannot cover 4 blocks"),
    (["infill", "{run}", "--text", "To <fill:abc> be"], "malformed span"),
    (["infill", "{run}", "--text", "no spans"], "no span to fill"),
    (["generate", "{run}", "--prompt", "To", "--length", "8", "--sampler", "confidence", "--block-length", "4",
      "--cache", "dual", "--cfg", "1"], "cannot be combined with --cache dual"),
    (["infill", "{run}", "--text", "To <fill:9-3> be"], "bounds reversed"),
    (["eval", "{run}", "--data", "{run}/missing.txt"], "neither a built-in corpus"),
])
def test_bad_input_gets_a_message(run_dir, capsys, argv, message):
    fails(capsys, [a.format(run=run_dir) for a in argv], message)


def test_bad_numbers_are_usage_errors(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(run_dir), "--steps", "0"])
    assert exit_.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_corrupt_checkpoint(run_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    folder = next(broken.glob("checkpoint-*"))
    (folder / "model.safetensors").write_bytes(b"garbage")
    fails(capsys, ["generate", str(broken), "--prompt", "To", "--length", "4"], "is corrupt")


@pytest.mark.parametrize("extra,message", [
    (["--data", "{tmp}/missing"], "neither a built-in corpus"),
    (["--data", "{tmp}/empty.txt"], "is empty"),
    (["--steps", "5", "--minutes", "1"], "not both"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_bad_training_input(tmp_path, capsys, extra, message):
    (tmp_path / "empty.txt").write_text("")
    argv = ["train", "--out", str(tmp_path / "r"), "--steps", "1", "--no-compile"]
    argv += [a.format(tmp=tmp_path) for a in extra]
    if "--data" not in extra:
        argv += ["--data", write_corpus(tmp_path / "c.txt")]
    fails(capsys, argv, message)


def test_resume_refuses_changed_settings(run_dir, capsys):
    fails(capsys, ["train", "--out", str(run_dir), "--resume", "--lr", "0.1"], "drop --lr")


def test_demo_trains_once_then_reuses_its_model(tmp_path, capsys):
    cache = str(tmp_path / "demo")
    quick = ["--no-compile", "--eval-chunks", "16"]  # fast to train and score; compile does not count for the cache
    first = run_json(capsys, ["demo", "--minutes", "0.05", *quick, "--cache", cache])
    assert first["cached"] is False and first["generate_nfe"] > 0
    assert set(first["bits_per_char"]) == {"ar", "block", "masked"} and min(first["bits_per_char"].values()) > 0
    assert 1 <= first["tokens_per_forward"] <= 4 and first["ar_tokens_per_second"] > 0
    assert first["infill"].startswith("This royal throne of ") and first["sample"].startswith("KING RICHARD.")
    second = run_json(capsys, ["demo", "--eval-chunks", "16", "--cache", cache])
    assert second["cached"] is True and second["bits_per_char"] == first["bits_per_char"]
    assert second["sample"] == first["sample"], "the same models and seeds write the same text"
    assert second["seconds"] < 30


@pytest.mark.parametrize("process", ["uniform", "gaussian", "block", "ar"])
def test_every_process_trains_evaluates_and_samples_from_the_command_line(process, tmp_path, capsys):
    data = write_corpus(tmp_path / "c.txt")
    run = str(tmp_path / process)
    trained = run_json(capsys, ["train", "--process", process, "--block-size", "8", "--data", data, "--out", run,
                                "--steps", "3", "--seq-len", "32", "--batch-size", "4", "--eval-chunks", "2",
                                "--final-eval-chunks", "2", "--no-compile", "--precision", "fp32"])
    assert trained["step"] == 3 and trained["bits_per_char"] > 0
    evaluated = run_json(capsys, ["eval", run, "--chunks", "4", "--samples", "2"])
    assert evaluated["process"] == process and evaluated["bits_per_char"] > 0 and evaluated["bound"]
    # AR and block diffusion write past the trained context (32) through their sliding window
    length = 40 if process in ("ar", "block") else 10
    generated = run_json(capsys, ["generate", run, "--prompt", "To be", "--length", str(length), "--steps", "10"])
    sample = generated["samples"][0]  # (an end-of-text token decodes to nothing)
    assert sample.startswith("To be") and 5 < len(sample) <= 5 + length
    assert 1 <= generated["nfe"] <= max(10, length)
    if process in ("ar", "block"):
        fails(capsys, ["infill", run, "--text", "To <fill:3> or not"], "cannot fill a span that has text after it")
        fails(capsys, ["generate", run, "--prompt", "To", "--length", "4", "--sampler", "ancestral"],
              "cannot sample")
    else:
        filled = run_json(capsys, ["infill", run, "--text", "To <fill:3> or not", "--steps", "6"])
        assert filled["text"].startswith("To ") and filled["text"].endswith(" or not")
