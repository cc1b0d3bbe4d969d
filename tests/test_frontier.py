"""The quality protocol and the frontier: equal quality as the issue defines it, the speed-up rule
that never compares with a worse AR row, Pareto fronts, and the whole pipeline on tiny models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dlm.evaluation.frontier import FrontierSuite, best_speedup, pareto, run_frontier
from dlm.evaluation.quality import QualityProtocol, at_least_as_good, band, equal_quality
from dlm.evaluation.report import write_frontier

from conftest import write_corpus

P = QualityProtocol()


def row(model, bpc, se=0.01, H=4.0, tps=100.0, tpf=1.0, batch=1, family="masked"):
    return {"model": model, "family": family, "setting": "s", "batch": batch, "judge_bits_per_char": bpc,
            "judge_stderr": se, "entropy_bits": H, "tokens_per_second": tps, "tokens_per_forward": tpf}


def test_equal_quality_band_is_two_stderrs_or_two_percent_whichever_is_wider():
    ref = row("ar", 2.00, se=0.01)
    assert band(row("d", 2.0, se=0.01), ref, P) == pytest.approx(0.04)  # 2% of 2.00 beats 2 x 0.014
    assert band(row("d", 2.0, se=0.1), ref, P) == pytest.approx(2 * (0.1 ** 2 + 0.01 ** 2) ** 0.5)
    assert equal_quality(row("d", 2.039), ref, P) and not equal_quality(row("d", 2.041), ref, P)
    assert equal_quality(row("d", 1.97, H=4.07), ref, P) and not equal_quality(row("d", 2.0, H=4.1), ref, P)


def test_at_least_as_good_needs_the_entropy_too():
    diffusion = row("d", 2.5, H=4.0)
    assert at_least_as_good(row("ar", 2.0, H=4.05), diffusion, P, reference_entropy=4.1)
    assert not at_least_as_good(row("ar", 2.6, H=4.0), diffusion, P, reference_entropy=4.1)
    # an AR row that is likelier only because it repeats itself does not stand in
    assert not at_least_as_good(row("ar", 1.0, H=3.0), diffusion, P, reference_entropy=4.1)
    # nearer the held-out text's entropy than the diffusion row is fine, even outside the 2% band
    assert at_least_as_good(row("ar", 2.0, H=4.2), row("d", 2.5, H=3.5), P, reference_entropy=4.2)


def test_best_speedup_takes_the_fastest_ar_row_that_is_at_least_as_good():
    rows = [row("ar-big", 1.8, tps=100, family="AR"), row("ar-small", 2.4, tps=300, family="AR"),
            row("ar-tiny", 2.95, tps=500, family="AR"),  # within the band of fast-but-bad (2.9 + 2%)
            row("fast-but-bad", 2.9, tps=900, tpf=8), row("good", 1.82, tps=350, tpf=4), row("slow", 2.3, tps=50)]
    best = best_speedup(rows, P, 4.0, 1, lambda r: r["family"] == "AR")
    assert best["diffusion_row"]["model"] == "good" and best["ar_row"]["model"] == "ar-big"
    assert best["ratio"] == pytest.approx(3.5)
    # "fast-but-bad" is compared with ar-tiny (the fastest at least as good), 900 / 500
    only = best_speedup([r for r in rows if r["model"] != "good"], P, 4.0, 1, lambda r: r["family"] == "AR")
    assert only["diffusion_row"]["model"] == "fast-but-bad" and only["ratio"] == pytest.approx(1.8)
    # a diffusion row worse than every AR row is compared with the fastest AR row
    worst = [r for r in rows if r["family"] == "AR"] + [row("awful", 5.0, tps=10_000, tpf=16)]
    assert best_speedup(worst, P, 4.0, 1, lambda r: r["family"] == "AR")["ratio"] == pytest.approx(20.0)
    # one better than every AR row has no AR row of its quality to be compared with
    best_of_all = [r for r in rows if r["family"] == "AR"] + [row("superb", 1.5, tps=10, tpf=1)]
    assert best_speedup(best_of_all, P, 4.0, 1, lambda r: r["family"] == "AR") is None
    assert best_speedup(rows, P, 4.0, 1, lambda r: r["family"] == "AR", min_tokens_per_forward=8)["ratio"] == 1.8


def test_pareto_front_keeps_what_nothing_beats():
    rows = [row("a", 2.0, tps=100), row("b", 2.5, tps=300), row("c", 2.6, tps=200), row("d", 3.0, tps=300)]
    assert [r["model"] for r in pareto(rows)] == ["b", "a"]


def tiny_suite(tmp_path):
    return FrontierSuite("tiny-test", preset="tiny", other_preset="tiny", other_steps=3, data=write_corpus(tmp_path / "c.txt"),
                         seq_len=32, batch_size=8, ar_steps=4, short_ar_steps=2, block_size=4, adapt_steps=4,
                         adapt_anneal_steps=2, adapt_warmup_steps=2, scratch_steps=4, distill_rounds=1,
                         distill_round_steps=2, masked_teacher_steps=8, compile=False, judge_preset="tiny",
                         judge_steps=4, judge_seq_len=64, judge_batch_size=4,
                         protocol=QualityProtocol(samples=4, prompt_chars=6, length=8, batches=(1, 2), ngram_chars=5000))


def test_the_frontier_pipeline_on_tiny_models(tmp_path):
    suite = tiny_suite(tmp_path)
    result = run_frontier(suite, tmp_path / "cache", log=lambda text: None)
    models = {m["model"] for m in result.models}
    assert models == {"ar", "ar-short", "ar-tiny-3", "masked", "adapted", "masked-sdtt", "adapted-sdtt"}
    settings = {(r["model"], r["setting"]) for r in result.rows}
    assert len(result.rows) == 2 * len(settings)  # every setting at batch 1 and 2
    for r in result.rows:
        assert r["tokens_per_second"] > 0 and r["judge_stderr"] >= 0 and r["entropy_bits"] > 0
    ar = [r for r in result.rows if r["family"] == "AR"]
    assert all(r["tokens_per_forward"] == 1.0 for r in ar)
    # one round halves the 4 steps per block of the teacher: the student writes 2 tokens per forward
    assert max(r["tokens_per_forward"] for r in result.rows if r["model"] == "adapted-sdtt") == pytest.approx(2.0)
    path = write_frontier(result, tmp_path / "out")
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000 and "## Every setting" in path.read_text()
    data = json.loads((tmp_path / "out" / "frontier.json").read_text())
    keys = {"model", "process", "setting", "batch", "tokens_per_second", "tokens_per_forward", "judge_bits_per_char",
            "judge_stderr", "entropy_bits"}
    assert all(keys <= set(r) for r in data["rows"]) and "best_speedup_at_equal_quality" in data
    again = run_frontier(replace(suite, protocol=replace(suite.protocol, samples=2)), tmp_path / "cache",
                         log=lambda text: None)
    assert [m["steps"] for m in again.models] == [m["steps"] for m in result.models], "the models are reused"
