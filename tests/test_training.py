"""The training loop: a run, an exact resume, a NaN stop that keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from dlm.errors import DlmError
from dlm.processes import MaskedDiffusion
from dlm.training import TrainingDiverged, load_checkpoint, train
from dlm.training import loop
from dlm.training.checkpoint import load_training_state, resolve

from conftest import tiny_train_config


@pytest.fixture
def config(tmp_path):
    return tiny_train_config(tmp_path)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_checkpoints_metrics_and_a_bound(config, tmp_path):
    result = train(config, progress=False)
    assert result.step == 6 and len(result.losses) == 6 and result.stopped == "completed"
    folder = resolve(config.out)
    assert folder.name == "checkpoint-000006"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt"):
        assert (folder / name).exists()
    assert not list((tmp_path / "run").glob(".*tmp")), "no temporary folder is left behind"
    assert len(list((tmp_path / "run").glob("checkpoint-*"))) == 1  # older checkpoints are pruned
    ckpt = load_checkpoint(config.out)
    assert ckpt.step == 6 and ckpt.metrics["final"] is True
    assert 0 < ckpt.metrics["val_bits_per_char"] < 8 and ckpt.metrics["val_stderr"] > 0
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_bits_per_char" in r] == [3, 6]


def test_resume_continues_exactly(config, tmp_path, monkeypatch):
    full = train(replace(config, out=str(tmp_path / "full")), progress=False)

    # Ctrl-C arrives during step 5: the step completes, step 5 is saved, training stops.
    calls = {"n": 0}
    original = MaskedDiffusion.loss

    def interrupt_during_step_5(self, *args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
        if calls["n"] == 5 and torch.is_grad_enabled():
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MaskedDiffusion, "loss", interrupt_during_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(MaskedDiffusion, "loss", original)
    assert resolve(config.out).name == "checkpoint-000005"

    resumed = train(replace(config, lr=123.0), resume=True, progress=False)  # stored settings win
    assert resumed.losses == full.losses[5:], "the loss curve continues as if never interrupted"
    assert resumed.validation["val_bits_per_char"] == full.validation["val_bits_per_char"]
    a = load_checkpoint(full.run_dir).model.state_dict()
    b = load_checkpoint(resumed.run_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(config, monkeypatch):
    calls = {"n": 0}
    original = MaskedDiffusion.loss

    def nan_at_step_5(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 5 and torch.is_grad_enabled():
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedDiffusion, "loss", nan_at_step_5)
    with pytest.raises(TrainingDiverged, match=r"became nan .* at step 5.*last good checkpoint \(step 3\)"):
        train(config, progress=False)
    assert resolve(config.out).name == "checkpoint-000003"
    load_training_state(resolve(config.out))  # still resumable


def test_an_existing_run_is_not_overwritten(config):
    train(replace(config, steps=1, eval_every=1), progress=False)
    with pytest.raises(DlmError, match="already holds a training run"):
        train(config, progress=False)


def test_minutes_budget_sizes_the_run(config):
    result = train(replace(config, steps=0, minutes=0.15, eval_every=1000), progress=False)
    # a slow machine may run out of time while still calibrating: the run then ends where it stood
    assert 1 <= result.step <= result.total_steps
    assert result.stopped == "time" or result.step == result.total_steps
    assert result.seconds < 0.15 * 60 + 15
    assert load_training_state(resolve(config.out))["total_steps"] == result.total_steps


def test_time_budget_sizes_and_replans_from_the_measured_step_time(config, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    cfg = replace(config, minutes=1.0, batch_size=4, seq_len=32, eval_samples=2, eval_chunks=4,
                  final_eval_chunks=8, eval_every=10**9)
    budget = loop.TimeBudget(cfg, SimpleNamespace(validation=torch.zeros(100, 32)), 0.0, first_step=0)
    for step in range(30):  # steps of 0.1 s; calibration times steps 10..29
        clock[0] = 0.1 * step
        assert budget.size(step) == 0
    clock[0] = 3.0
    total = budget.size(30)
    # 0.1 s a step; the final validation: 8 chunks x 2 samples x 32 tokens at twice 4 x 32 / 0.1 tokens/s, + 1 s
    final_eval = 8 * 2 * 32 / (2 * 4 * 32 / 0.1) + 1.0
    assert total == 30 + int(0.97 * (60 - 3.0 - final_eval) / 0.1)
    clock[0] = 60 - final_eval - 0.01
    assert not budget.out_of_time()
    clock[0] = 60 - final_eval + 0.01
    assert budget.out_of_time()
    clock[0] = 40.0  # slower than planned: at step 300 the plan shrinks to what the measured rate allows
    step_seconds = (40.0 - 1.0) / 290
    final_eval = 8 * 2 * 32 / (2 * 4 * 32 / step_seconds) + 1.0
    assert budget.replan(300) == 300 + int(0.98 * (60 - 40.0 - final_eval) / step_seconds)
    clock[0] = 59.9
    assert budget.replan(600) == 601  # always at least one more step


def test_too_small_a_corpus_is_explained(config, tmp_path):
    (tmp_path / "tiny.txt").write_text("To be or not to be.\n" * 20)
    with pytest.raises(DlmError, match="shorter than one chunk"):
        train(replace(config, data=str(tmp_path / "tiny.txt")), progress=False)


def test_validation_characters_unseen_in_training_are_explained(config, tmp_path):
    (tmp_path / "odd.txt").write_text("To be or not to be.\n" * 200 + "Zebra!\n" * 5)
    with pytest.raises(DlmError, match="validation split .* uses a character the training split never does"):
        train(replace(config, data=str(tmp_path / "odd.txt")), progress=False)


KILLED_RUN = """
import os, sys, torch
from dlm.processes import MaskedDiffusion
from dlm.training import TrainConfig, train
original, calls = MaskedDiffusion.loss, [0]
def killed_at_step_5(self, *args, **kwargs):
    calls[0] += torch.is_grad_enabled()
    if calls[0] == 5 and torch.is_grad_enabled():
        os._exit(137)  # as abrupt as SIGKILL: no handler, no cleanup
    return original(self, *args, **kwargs)
MaskedDiffusion.loss = killed_at_step_5
train(TrainConfig(**__import__("json").loads(sys.argv[1])), progress=False)
"""


def test_a_killed_run_resumes_from_its_last_checkpoint_exactly(config, tmp_path):
    full = train(replace(config, out=str(tmp_path / "full")), progress=False)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(config.to_dict())], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert resolve(config.out).name == "checkpoint-000003"  # written at the step-3 validation
    resumed = train(config, resume=True, progress=False)
    assert resumed.losses == full.losses[3:]
    assert resumed.validation["val_bits_per_char"] == full.validation["val_bits_per_char"]


def test_dropout_reaches_the_model_and_bad_values_are_refused(config):
    from dlm.training.config import TrainConfig

    train(replace(config, steps=2, process="ar", dropout=0.2), progress=False)
    assert load_checkpoint(config.out).model.config.dropout == 0.2
    with pytest.raises(DlmError, match="dropout"):
        TrainConfig(dropout=-0.1)
    with pytest.raises(DlmError, match="--eval-every must be at least 1"):
        TrainConfig(eval_every=0)  # was a ZeroDivisionError at the first step
