"""`dlm train --init-from` and `dlm distill` as runs: the AR likelihood survives the start of an
adaptation, a distillation resumes exactly and saves like `dlm train`, bad input gets a message."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from dlm.cli import main
from dlm.processes.distillation import SelfDistillation
from dlm.processes.likelihood import estimate_likelihood
from dlm.training import load_checkpoint, train
from dlm.training.checkpoint import load_training_state, resolve
from dlm.training.loop import Run

from conftest import tiny_train_config


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    train(tiny_train_config(root, process="ar", steps=8), progress=False)
    return root


def validation_nelbo(run: Run, samples: int = 2) -> torch.Tensor:
    chunks = run.data.validation[:6]
    est = estimate_likelihood(run.process, run.published_model, chunks, samples_per_chunk=samples, batch_size=8,
                              tokens_per_char=1.0, generator=torch.Generator().manual_seed(0))
    return torch.tensor(est.bits_per_token)


@pytest.mark.parametrize("clean", ["causal", "block"])
def test_init_from_an_ar_run_with_blocks_of_one_keeps_its_exact_likelihood(ar_run, tmp_path, clean):
    """Before any step, the shifted block model of block size 1 has the AR model's exact -log p."""
    ar = Run(tiny_train_config(tmp_path, out=str(tmp_path / "again"), process="ar"), resume=False, device="cpu")
    ar.model.load_state_dict(load_training_state(resolve(ar_run / "run"))["model"])
    ar.ema.model.load_state_dict(load_checkpoint(ar_run / "run").model.state_dict())
    block = Run(tiny_train_config(tmp_path, out=str(tmp_path / "bd"), process="block", block_size=1,
                                  init_from=str(ar_run / "run"), logit_shift=True, clean_attention=clean),
                resume=False, device="cpu")
    assert block.model.config.logit_shift and block.model.config.attention == "bidirectional"
    torch.testing.assert_close(validation_nelbo(block), validation_nelbo(ar), rtol=1e-5, atol=1e-6)


def test_adaptation_trains_and_samples_from_the_command_line(ar_run, tmp_path, capsys):
    out = tmp_path / "bd"
    code = main(["train", "--out", str(out), "--process", "block", "--block-size", "4", "--init-from", str(ar_run / "run"),
                 "--logit-shift", "--clean-attention", "causal", "--anneal-steps", "3", "--block-warmup-steps", "4",
                 "--data", str(ar_run / "corpus.txt"), "--steps", "6", "--seq-len", "32", "--batch-size", "8",
                 "--eval-chunks", "4", "--final-eval-chunks", "4", "--no-compile", "--no-progress", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt.process.shift and ckpt.process.clean == "causal" and ckpt.process.block_size == 4
    assert ckpt.config["train"]["init_from"] == str(ar_run / "run")
    code = main(["generate", str(out), "--prompt", "To be", "--length", "12", "--steps", "6", "--threshold", "0.5",
                 "--sub-block", "2", "--no-live", "--json"])
    assert code == 0, capsys.readouterr().err
    sample = json.loads(capsys.readouterr().out)
    assert sample["samples"][0].startswith("To be") and sample["nfe"] <= 6 and sample["sampler"] == "block"
    code = main(["generate", str(out), "--prompt", "To be", "--length", "12", "--sampler", "speculative", "--no-live",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    sample = json.loads(capsys.readouterr().out)
    assert sample["sampler"] == "speculative" and 1 <= sample["tokens_per_forward"] <= 4


def distill_config(root, teacher, **overrides):
    from dlm.training import TrainConfig

    settings = dict(out=str(root / "student"), process="block", data=str(teacher.parent / "corpus.txt"), seq_len=32,
                    batch_size=8, steps=6, warmup_steps=2, eval_every=3, eval_chunks=4, final_eval_chunks=4,
                    log_every=1, compile=False, precision="fp32", optimizer="adamw", lr=3e-4, ema_decay=0.9,
                    distill_from=str(teacher), distill_rounds=2, teacher_steps=4)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train(tiny_train_config(root, process="block", block_size=4, steps=6), progress=False)
    return root / "run"


def test_distillation_rounds_halve_the_steps_and_hand_the_student_over(teacher, tmp_path):
    result = train(distill_config(tmp_path, teacher), progress=False)
    state = load_training_state(resolve(result.run_dir))
    assert state["round"] == 1 and state["round_steps"] == 3
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt.process.config() == load_checkpoint(teacher).process.config()
    student = state["model"]
    assert not all(torch.equal(student[k], state["teacher"][k]) for k in student), "the student moved on"


def test_distillation_resumes_exactly(teacher, tmp_path, monkeypatch):
    config = distill_config(tmp_path, teacher)
    full = train(replace(config, out=str(tmp_path / "full")), progress=False)
    calls = {"n": 0}
    original = SelfDistillation.loss

    def interrupt_during_step_5(self, *args, **kwargs):  # in round 1: the teacher is the student of step 3
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SelfDistillation, "loss", interrupt_during_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(SelfDistillation, "loss", original)
    folder = resolve(config.out)
    assert folder.name == "checkpoint-000005" and not list(folder.parent.glob(".*tmp")), "saved atomically"
    resumed = train(config, resume=True, progress=False)
    assert resumed.losses == full.losses[5:], "the loss curve continues as if never interrupted"
    a = load_checkpoint(full.run_dir).model.state_dict()
    b = load_checkpoint(resumed.run_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_command_line(teacher, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["distill", str(teacher), "--out", str(out), "--rounds", "1", "--teacher-steps", "4", "--steps", "2",
                 "--batch-size", "8", "--no-compile", "--no-progress", "--eval-chunks", "2", "--final-eval-chunks",
                 "2", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["student_steps"] == 2 and result["teacher_steps"] == 4 and result["step"] == 2
    code = main(["distill", "--out", str(out), "--resume", "--json", "--no-progress"])  # a finished run: nothing to do
    assert code == 0, capsys.readouterr().err


def fails(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_distillation_and_adaptation_input(ar_run, teacher, tmp_path, capsys):
    fails(capsys, ["distill", str(ar_run / "run"), "--out", str(tmp_path / "a")], "needs a masked or block")
    fails(capsys, ["distill", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")], "does not exist")
    fails(capsys, ["distill", str(teacher), "--out", str(tmp_path / "c"), "--rounds", "3", "--teacher-steps", "4"],
          "cannot be halved 3 times")
    fails(capsys, ["distill", "--out", str(tmp_path / "d")], "name the TEACHER")
    fails(capsys, ["train", "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")], "does not exist")
    other = tmp_path / "other.txt"
    other.write_text("Zebras quiz jovial folks; XYZ! " * 400)
    fails(capsys, ["train", "--process", "block", "--init-from", str(ar_run / "run"), "--data", str(other),
                   "--out", str(tmp_path / "f"), "--steps", "1"], "cannot encode")
    fails(capsys, ["train", "--process", "gaussian", "--init-from", str(ar_run / "run"),
                   "--data", str(ar_run / "corpus.txt"), "--out", str(tmp_path / "g"), "--steps", "1"],
          "do not fit a gaussian model")
    fails(capsys, ["train", "--process", "uniform", "--logit-shift", "--out", str(tmp_path / "h"), "--steps", "1"],
          "--logit-shift is an option of the masked and block processes")
