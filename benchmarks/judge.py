"""What the sampling benchmarks share: an AR model as judge of samples, their character entropy,
and prompts drawn from the validation split.

The judge scores text, not token ids: it encodes with its own tokenizer, so that it can judge
a model trained on another corpus of the same text (e.g. prompt/response pairs).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from dlm.data.corpora import load_corpus
from dlm.training import load_checkpoint

LN2 = math.log(2.0)


class Judge:
    """An autoregressive checkpoint that scores continuations: -log2 p(continuation | prompt) per character."""

    def __init__(self, path: str):
        self.ckpt = load_checkpoint(path)
        if self.ckpt.process.name != "ar":
            raise SystemExit(f"--judge must be an AR checkpoint, got a {self.ckpt.process.name} model in {path}")
        self.tokenizer = self.ckpt.tokenizer

    @torch.no_grad()
    def bits_per_char(self, prompt: str, continuation: str) -> float:
        """-log2 p_AR(continuation | bos, prompt) / characters of the continuation."""
        p, c = self.tokenizer.encode(prompt), self.tokenizer.encode(continuation)
        if not c:
            return float("nan")
        x0 = torch.tensor([p + c])
        nll = self.ckpt.process.token_nll(self.ckpt.model, x0)[0, len(p):]  # (C,) nats
        return float(nll.sum()) / LN2 / len(continuation)


def char_entropy(texts: list[str]) -> float:
    """Entropy of the samples' pooled character distribution, bits (repetitive text scores low)."""
    counts = Counter("".join(texts))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def prompts_from_validation(ckpt, n: int, chars: int) -> list[str]:
    """n prompts of `chars` characters, evenly spaced through the validation text, each starting
    at a line start so that they read as text."""
    text = "\n".join(load_corpus(ckpt.config["train"]["data"]).validation)
    out = []
    for i in range(n):
        start = text.find("\n", i * len(text) // n) + 1
        out.append(text[start:start + chars])
    return out
