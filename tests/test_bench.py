"""dlm bench: the judges and diversity metrics on cases with known answers, and the whole suite
end to end at a toy size (report, JSON and plots written, every section filled)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dlm.evaluation.judges import ARJudge, NgramJudge
from dlm.evaluation.metrics import char_accuracy, distinct_n, edit_distance, self_bleu, unigram_entropy


def test_entropy_and_distinct_n():
    assert unigram_entropy(["abab"]) == pytest.approx(1.0)
    assert unigram_entropy(["aaaa"]) == 0.0
    assert unigram_entropy(["abcd", "efgh"]) == pytest.approx(3.0)
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # "a b" twice
    assert math.isnan(distinct_n(["a"], 2))


def test_self_bleu_is_high_for_copies_and_low_for_different_texts():
    same = self_bleu(["the king is dead long live the king"] * 3)
    different = self_bleu(["the king is dead long live the king", "my horse my horse a kingdom for it",
                            "now is the winter of our discontent here"])
    assert same == pytest.approx(1.0)
    assert different < 0.2


def test_edit_distance_and_char_accuracy():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert char_accuracy("return x", "return x") == 1.0
    assert char_accuracy("return y", "return x") == pytest.approx(1 - 1 / 8)
    assert char_accuracy("", "") == 1.0


def test_ngram_judge_finds_the_training_pattern_likely():
    judge = NgramJudge("abcabcabc\n" * 300, order=3)
    seen = judge.bits_per_char("abc", "abcabc")
    unseen = judge.bits_per_char("abc", "cbacba")
    assert seen < 0.2 < 2.0 < unseen
    assert math.isfinite(judge.bits_per_char("abc", "xyz"))  # characters it never saw get a finite floor


def test_ar_judge_windows_agree_with_one_pass(tokenizer):
    """Within the context the judge scores in one pass; the windowed path must give the same
    answer when the windows happen to cover everything."""
    from dlm.training.checkpoint import Checkpoint

    from conftest import build

    process, model = build("ar", tokenizer, max_len=64)
    judge = ARJudge(Checkpoint(path=None, model=model, process=process, tokenizer=tokenizer, config={}))
    prompt, text = "To be, or not to be", ", that is the question:"
    ids = tokenizer.encode(prompt + text)
    with torch.no_grad():
        nll = process.token_nll(model, torch.tensor([ids]))[0, len(tokenizer.encode(prompt)):]
    assert judge.bits(prompt, text) == pytest.approx(float(nll.sum()) / math.log(2), rel=1e-6)
    long_text = text * 6  # 138 characters: past the 64-token context, scored in windows
    assert math.isfinite(judge.bits_per_char(prompt, long_text))
    assert math.isnan(judge.bits_per_char(prompt, ""))


@pytest.mark.timeout(900)
def test_bench_end_to_end(tmp_path):
    from dlm.evaluation.bench import run_bench, suite_named
    from dlm.evaluation.report import write_report

    suite = suite_named("quick", minutes=0.04, judge_preset="tiny", judge_minutes=0.04, code_minutes=0.04,
                        compile=False, eval_chunks=4, final_eval_chunks=2, prompts=2, samples_per_prompt=2, length=16,
                        steps_grid=(4, 16), thresholds=(0.5,), speed_lengths=(16, 32), speed_batches=(1, 2),
                        speed_steps=4, infill_cases=2, long_length=48, long_samples=2, ngram_chars=20_000)
    result = run_bench(suite, tmp_path / "cache", log=lambda m: None)
    path = write_report(result, tmp_path / "report")
    report = path.read_text()
    for section in ("## The comparison", "| Generation |", "| Inference speed |", "| Quality |", "| Training |",
                    "| Control |", "| Architecture |", "## Likelihood", "## Infilling Python", "## Long outputs"):
        assert section in report
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["process"] for r in data["likelihood"]} == {"masked", "uniform", "block", "gaussian", "ar"}
    assert {r["process"] for r in data["samples"]} == {"masked", "uniform", "block", "gaussian", "ar"}
    assert all(math.isfinite(r["judge_bits_per_char"]) for r in data["samples"])
    assert {(r["batch"], r["length"]) for r in data["speed"] if r["process"] == "ar"} == {(1, 16), (1, 32), (2, 16),
                                                                                          (2, 32)}
    assert all(r["nfe"] <= 4 for r in data["speed"] if r["process"] in ("masked", "uniform", "gaussian"))
    assert [r["model"] for r in data["infill"]] == ["masked", "ar"]
    for png in ("speed_vs_length.png", "quality_vs_steps.png", "quality_vs_tpf.png", "likelihood.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5_000
    # a second run reuses every cached model (it is stopped where the measuring starts, which the
    # first run has already shown)
    lines = []

    class Measuring(Exception):
        pass

    def watch(message: str) -> None:
        lines.append(message.strip())
        if message.startswith("measuring:"):
            raise Measuring

    with pytest.raises(Measuring):
        run_bench(suite, tmp_path / "cache", log=watch)
    reused = [line for line in lines if line.startswith("using the cached")]
    assert len(reused) == 8 and not any(line.startswith("training the") for line in lines), lines
