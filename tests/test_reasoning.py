"""The reasoning suite: tiny models train on each task through `dlm train --data TASK` (masked and AR)
and decode answers that the task's checker reads; the suite writes report.json with the issue's fields."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.cli import main
from dlm.data.tasks import load_task, task_splits
from dlm.evaluation.reasoning import (AR_DECODERS, MASKED_DECODERS, ReasoningSuite, run_reasoning, score, solve,
                                      write_reasoning_report)
from dlm.models.transformer import PRESETS
from dlm.training.checkpoint import load_checkpoint

# small instances, so that a model of a few thousand parameters learns the format in ~100 steps
TINY_TASKS = {"sudoku6": "sudoku6:givens=30,train=400,valid=20,test=16",
              "countdown": "countdown:numbers=2,max_number=30,max_result=999,train=400,valid=20,test=16",
              "paths": "paths:degree=2,length=2,train=400,valid=20,test=16"}


@pytest.fixture
def micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", dict(d_model=48, n_layers=2, n_heads=2))
    return "micro"


def train_tiny(tmp_path, spec, process, preset, steps=120):
    run = tmp_path / f"{process}-{spec.partition(':')[0]}"
    task = load_task(spec)
    assert main(["train", "--data", spec, "--process", process, "--preset", preset, "--out", str(run),
                 "--steps", str(steps), "--seq-len", str(task.seq_len), "--batch-size", "16", "--lr", "1e-2",
                 "--warmup-steps", "10", "--eval-every", "1000", "--eval-chunks", "4", "--final-eval-chunks", "4",
                 "--ema-decay", "0", "--threads", "1", "--no-compile", "--no-progress"]) == 0
    return load_checkpoint(run), task


@pytest.mark.parametrize("process", ["masked", "ar"])
@pytest.mark.parametrize("name", sorted(TINY_TASKS))
def test_a_tiny_model_trains_on_each_task_and_decodes_a_valid_answer(tmp_path, micro_preset, name, process, capsys):
    ckpt, task = train_tiny(tmp_path, TINY_TASKS[name], process, micro_preset)
    capsys.readouterr()
    test = task_splits(task)["test"]
    decoder = (MASKED_DECODERS if process == "masked" else AR_DECODERS)[0]
    assert decoder.sampler in ckpt.process.samplers
    row = solve(ckpt, task, test, decoder)
    assert len(row["responses"]) == len(test) and row["n_test"] == len(test)
    assert row["valid_rate"] >= 0.5, f"{process} on {name}: {row['valid_rate']:.2f} valid, e.g. {row['example']!r}"
    # the figures are the checker's, recomputed
    assert row["accuracy"] == sum(task.is_solved(i.prompt, r) for i, r in zip(test, row["responses"])) / len(test)


def test_score_has_a_binomial_standard_error():
    task = load_task("paths:degree=2,length=2")
    inst = task_splits(load_task("paths:degree=2,length=2,train=10,valid=2,test=4"))["test"]
    row = score(task, inst, [inst[0].response, inst[1].response, "!!", inst[3].response[:1]])
    assert row["accuracy"] == 0.5 and row["stderr"] == pytest.approx((0.25 / 4) ** 0.5)
    assert row["valid_rate"] == 0.5, "'!!' names no node of the graph; one letter is no path"


def test_the_suite_writes_report_json_with_both_models(tmp_path, micro_preset):
    suite = ReasoningSuite("test", (TINY_TASKS["paths"],), minutes=0.04, preset=micro_preset, minutes_grid=(0.5,),
                           steps_grid=(0.5,), n_test=16, n_curve=8, compile=False, threads=1, lr=1e-2)
    messages = []
    result = run_reasoning(suite, tmp_path / "cache", log=messages.append)
    path = write_reasoning_report(result, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    paths = report["tasks"]["paths"]
    for model in ("masked", "ar"):
        for key in ("accuracy", "stderr", "valid_rate", "params", "train_minutes", "n_test"):
            assert key in paths[model], key
        assert paths[model]["n_test"] == 16
        assert 0 < paths[model]["train_minutes"] < 1
    assert paths["masked"]["params"] == paths["ar"]["params"], "the same preset on both sides"
    assert {r["model"] for r in paths["minutes_curve"]} == {"masked", "ar"} and len(paths["minutes_curve"]) == 4
    assert all(r["steps"] > 0 for r in paths["minutes_curve"])
    assert {r["steps_per_token"] for r in paths["steps_curve"]} == {0.5, 1.0}, "the masked model, at fewer steps"
    assert "| paths | masked | confidence |" in path.read_text()
    assert (tmp_path / "out" / "reasoning-paths.png").exists()
    assert torch.get_num_threads() >= 1


def test_the_demo_shows_a_puzzle_from_the_bench_models(tmp_path, micro_preset, capsys):
    from io import StringIO

    from rich.console import Console

    from dlm.cli.puzzle import show_puzzle

    spec = TINY_TASKS["sudoku6"]
    cache = tmp_path / "bench"
    out = StringIO()
    assert show_puzzle(Console(file=out, width=400), cache, live=False) is None, "no models: a hint, nothing trained"
    assert "dlm bench --suite reasoning" in out.getvalue()
    for process in ("masked", "ar"):
        ckpt, _ = train_tiny(tmp_path, spec, process, micro_preset, steps=60)
        (cache / "sudoku6").mkdir(parents=True, exist_ok=True)
        ckpt.path.parent.rename(cache / "sudoku6" / f"{process}-60steps")
    capsys.readouterr()
    out = StringIO()
    shown = show_puzzle(Console(file=out, width=120), cache, live=False)
    test = task_splits(load_task(spec))["test"][0]
    assert shown["puzzle"] == test.prompt
    for name in ("masked", "ar"):
        assert shown[f"{name}_solved"] == load_task(spec).is_solved(test.prompt, shown[f"{name}_answer"])
    assert "puzzle" in out.getvalue() and out.getvalue().count("\n") >= 7


def test_task_picks_the_suites_setting_or_a_given_spec_and_refuses_unknown_ones(capsys):
    from dlm.evaluation.reasoning import REASONING_SUITES, reasoning_suite

    own = next(s for s in REASONING_SUITES["reasoning"].tasks if s.startswith("sudoku6:"))
    assert reasoning_suite("reasoning", tasks=["sudoku6"]).tasks == (own,)
    assert reasoning_suite("reasoning", tasks=["paths", "sudoku:givens=30"]).tasks[1] == "sudoku:givens=30"
    assert reasoning_suite("reasoning", tasks=["sudoku"]).tasks == ("sudoku",)  # not in the suite: its defaults
    assert reasoning_suite("reasoning").tasks == REASONING_SUITES["reasoning"].tasks
    for argv, words in ((["--suite", "reasoning", "--task", "chess"], "unknown task 'chess'"),
                        (["--suite", "reasoning", "--task", "sudoku:givens=-3"], "givens"),
                        (["--suite", "quick", "--task", "sudoku6"], "reasoning suite")):
        assert main(["bench", *argv, "--out", "unused"]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
