"""Diversity and accuracy of samples: entropy, distinct-n, self-BLEU, character accuracy."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def mean(values) -> float:
    """The mean of the finite values (NaN when there are none)."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def unigram_entropy(texts: Sequence[str]) -> float:
    """Entropy of the pooled character distribution of the samples, in bits (repetitive text
    scores low; English prose is about 4.1-4.3)."""
    counts = Counter("".join(texts))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all word n-grams of the samples (Li et al., 2016); 1 = no
    n-gram repeats anywhere, near 0 = the same phrases over and over."""
    grams = [tuple(words[i:i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each sample against the others as references (Zhu et al., 2018, Texygen), on
    words, with nltk's smoothing method 1; high = the samples resemble each other."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokenized = [t.split() for t in texts]
    weights = tuple([1.0 / max_n] * max_n)
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu([r for j, r in enumerate(tokenized) if j != i and r], hyp, weights=weights,
                            smoothing_function=smooth)
              for i, hyp in enumerate(tokenized) if hyp and any(r for j, r in enumerate(tokenized) if j != i)]
    return mean(scores)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_accuracy(prediction: str, truth: str) -> float:
    """1 - edit distance / length of the longer string: 1 = identical, 0 = nothing in common."""
    longest = max(len(prediction), len(truth))
    return 1.0 - edit_distance(prediction, truth) / longest if longest else 1.0
