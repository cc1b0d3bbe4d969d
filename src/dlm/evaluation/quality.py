"""One quality protocol for every claim of "equal quality" (and so of "faster at equal quality").

- **Judge.** An AR model of a larger preset than the contestants, trained on the same corpus for
  at least `judge_factor` (4) times the longest contestant's budget, cached, and never itself a
  contestant; beside it a character Kneser-Ney 5-gram model (nltk), which no gradient tuned.
- **Samples.** `samples` (64) held-out prompts (`prompt_chars` characters at evenly spaced line
  starts of the validation text), each continued by `length` tokens, at one temperature (1.0)
  and one nucleus (none) for every row.
- **Reported** per row: judge bits/char (mean over samples) with its standard error, the n-gram
  judge's bits/char, unigram entropy and distinct-2 of the samples, tokens per forward, NFE per
  sample, and tokens/s at batch 1 and at batch 8 (`batches`).
- **Equal quality** with a reference row: judge bits/char within `band_stderrs` (2) standard
  errors of the difference or `band_relative` (2%), whichever is wider, and unigram entropy
  within `entropy_relative` (2%). Low judge bits/char alone is no merit: repetitive text is
  likely text, and its entropy gives it away.
- **At least as good** (the rule of `best_speedup_at_equal_quality`): judge bits/char not above
  the other row's band, and an entropy as close to that of the held-out text as the other's is
  (within the 2% band): an AR row never stands in for a diffusion row it beats only by
  writing more repetitive, or noisier, text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dlm.data.corpora import load_corpus
from dlm.evaluation.judges import ARJudge, NgramJudge
from dlm.evaluation.metrics import distinct_n, mean, unigram_entropy
from dlm.training.config import TrainConfig


@dataclass(frozen=True)
class QualityProtocol:
    samples: int = 64  # held-out prompts, one sample of each per setting and batch size
    prompt_chars: int = 32
    length: int = 128  # generated tokens per sample
    temperature: float = 1.0
    top_p: float | None = None  # the same nucleus for every row (None: the full distribution)
    batches: tuple[int, ...] = (1, 8)  # tokens/s is measured at these batch sizes
    seed: int = 0
    band_stderrs: float = 2.0
    band_relative: float = 0.02
    entropy_relative: float = 0.02
    judge_factor: float = 4.0  # the judge trains at least this many times the longest contestant's minutes
    ngram_order: int = 5
    ngram_chars: int = 300_000

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError(f"the protocol needs at least 2 samples for a standard error, got {self.samples}")
        if self.length < 1 or self.prompt_chars < 1:
            raise ValueError("length and prompt_chars must be positive")
        if any(b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be positive, got {self.batches}")


def judge_training(out: str | Path, *, data: str, preset: str, steps: int, seq_len: int, batch_size: int,
                   compile: bool = True) -> TrainConfig:
    """The training of the AR judge: a fixed number of steps, so that a rerun on another machine
    (or a loaded one) trains the same judge; its minutes are measured and reported."""
    return TrainConfig(out=str(out), process="ar", preset=preset, data=data, steps=steps, seq_len=seq_len,
                       batch_size=batch_size, eval_every=max(steps // 4, 1), final_eval_chunks=128, compile=compile)


def held_out_prompts(data: str, n: int, prompt_chars: int, length: int) -> tuple[list[str], list[str]]:
    """n prompts of `prompt_chars` characters at evenly spaced line starts of the validation text,
    and the `length` characters that really follow each (the reference row's text)."""
    text = "\n".join(load_corpus(data).validation)
    prompts, truths = [], []
    for i in range(n):
        start = text.find("\n", i * len(text) // n) + 1
        prompts.append(text[start:start + prompt_chars])
        truths.append(text[start + prompt_chars:start + prompt_chars + length])
    return prompts, truths


class Judges:
    """The AR judge and the n-gram judge, scoring continuations of prompts."""

    def __init__(self, judge: ARJudge, ngram: NgramJudge | None):
        self.ar, self.ngram = judge, ngram

    def score(self, prompts: list[str], texts: list[str]) -> dict:
        """-> judge_bits_per_char (mean over samples) and judge_stderr, ngram_bits_per_char,
        entropy_bits, distinct_2, mean_chars."""
        per = [self.ar.bits_per_char(p, t) for p, t in zip(prompts, texts)]
        finite = [v for v in per if math.isfinite(v)]
        n = len(finite)
        mu = sum(finite) / n if n else float("nan")
        var = sum((v - mu) ** 2 for v in finite) / (n - 1) if n > 1 else float("nan")
        row = {"judge_bits_per_char": mu, "judge_stderr": math.sqrt(var / n) if n > 1 else float("nan"),
               "judged_samples": n, "entropy_bits": unigram_entropy(texts), "distinct_2": distinct_n(texts, 2),
               "mean_chars": mean(len(t) for t in texts)}
        if self.ngram is not None:
            row["ngram_bits_per_char"] = mean(self.ngram.bits_per_char(p, t) for p, t in zip(prompts, texts))
        return row


def band(a: dict, b: dict, protocol: QualityProtocol) -> float:
    """How far apart two rows' judge bits/char may be and still count as equal."""
    stderr = math.hypot(a.get("judge_stderr", 0.0) or 0.0, b.get("judge_stderr", 0.0) or 0.0)
    return max(protocol.band_stderrs * stderr, protocol.band_relative * b["judge_bits_per_char"])


def equal_quality(a: dict, b: dict, protocol: QualityProtocol) -> bool:
    """Row a has the quality of reference row b: judge bits/char within the band, entropy within 2%."""
    return (abs(a["judge_bits_per_char"] - b["judge_bits_per_char"]) <= band(a, b, protocol)
            and abs(a["entropy_bits"] / b["entropy_bits"] - 1.0) <= protocol.entropy_relative)


def at_least_as_good(a: dict, b: dict, protocol: QualityProtocol, reference_entropy: float) -> bool:
    """Row a writes text at least as good as row b: judge bits/char not above b's band, and an
    entropy within 2% of b's or nearer the held-out text's (`reference_entropy`) than b's is."""
    if not a["judge_bits_per_char"] <= b["judge_bits_per_char"] + band(a, b, protocol):
        return False
    if abs(a["entropy_bits"] / b["entropy_bits"] - 1.0) <= protocol.entropy_relative:
        return True
    return abs(a["entropy_bits"] - reference_entropy) <= abs(b["entropy_bits"] - reference_entropy)
