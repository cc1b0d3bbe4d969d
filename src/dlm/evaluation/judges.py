"""Judges of generated text: how likely another model finds the samples, in bits per character.

Two judges, because a judge's blind spots become the judged model's free points:
- `ARJudge`: an autoregressive checkpoint of the same text (larger than the models it judges
  in `dlm bench`), scoring -log2 p(text | prompt) exactly, left to right;
- `NgramJudge`: a character n-gram model with interpolated Kneser-Ney smoothing from an
  established library (`nltk.lm`), which we did not train by gradient descent and cannot tune
  towards our models.

Judged likelihood (generative perplexity) rewards repetitive text, so it is always reported
with the samples' entropy (`dlm.evaluation.metrics`).
"""

from __future__ import annotations

import math

import torch

from dlm.errors import DlmError
from dlm.training.checkpoint import Checkpoint

LN2 = math.log(2.0)


class ARJudge:
    """-log2 p_AR(text | prompt) per character, under an AR checkpoint; texts longer than its
    context are scored in windows, each chunk given the text before it up to the context."""

    def __init__(self, ckpt: Checkpoint):
        if not ckpt.process.exact:  # a left-to-right model with an exact likelihood
            raise DlmError(f"a judge must be an autoregressive checkpoint, got a {ckpt.process.name} model")
        self.ckpt, self.tokenizer = ckpt, ckpt.tokenizer
        self.context = ckpt.context_length

    @torch.no_grad()
    def bits(self, prompt: str, text: str) -> float:
        """-log2 p(text | prompt) in bits (NaN for empty text); characters the judge's tokenizer
        lacks make the score NaN rather than an error, so one odd sample cannot stop a report."""
        try:
            p, c = self.tokenizer.encode(prompt), self.tokenizer.encode(text)
        except DlmError:
            return float("nan")
        if not c:
            return float("nan")
        device = next(self.ckpt.model.parameters()).device
        total, done, step = 0.0, 0, max(self.context // 2, 1)
        ids = p + c
        while done < len(c):  # score c[done:done + step] given up to context - step tokens before it
            end = min(done + step, len(c))
            lo = max(0, len(p) + end - self.context)
            x0 = torch.tensor([ids[lo:len(p) + end]], device=device)
            nll = self.ckpt.process.token_nll(self.ckpt.model, x0)[0]  # (n,) nats; the first is given bos only
            total += float(nll[len(p) + done - lo:].sum())
            done = end
        return total / LN2

    def bits_per_char(self, prompt: str, text: str) -> float:
        return self.bits(prompt, text) / len(text) if text else float("nan")


class NgramJudge:
    """A character n-gram model with interpolated Kneser-Ney smoothing (nltk.lm), fitted on up to
    `max_chars` characters of training text cut into `chunk`-character pieces."""

    def __init__(self, text: str, *, order: int = 5, max_chars: int = 300_000, chunk: int = 200):
        try:
            from nltk.lm import KneserNeyInterpolated
            from nltk.lm.preprocessing import padded_everygram_pipeline
        except ImportError:
            raise DlmError("the n-gram judge needs nltk: pip install 'dlm[bench]'") from None
        if not text:
            raise DlmError("the n-gram judge needs training text")
        self.order = order
        step = max(len(text) // max_chars, 1)  # evenly spaced pieces when the text is longer than max_chars
        pieces = [list(text[i:i + chunk]) for i in range(0, len(text), chunk * step)]
        grams, vocab = padded_everygram_pipeline(order, pieces)
        self.lm = KneserNeyInterpolated(order)
        self.lm.fit(grams, vocab)

    def bits(self, prompt: str, text: str) -> float:
        """-log2 p(text | last order-1 characters of the prompt); unseen characters count as the
        model's <UNK>, and a zero probability as 30 bits (a finite floor, not infinity)."""
        history = ["<s>"] * (self.order - 1) + list(prompt)
        total = 0.0
        for ch in text:
            context = tuple(self.lm.vocab.lookup(history[-(self.order - 1):]))
            try:
                score = -self.lm.logscore(self.lm.vocab.lookup(ch), context)
            except ZeroDivisionError:  # nltk's Kneser-Ney on a context it never saw: back off by hand
                score = -self.lm.logscore(self.lm.vocab.lookup(ch))
            total += min(score, 30.0) if math.isfinite(score) else 30.0
            history.append(ch)
        return total

    def bits_per_char(self, prompt: str, text: str) -> float:
        return self.bits(prompt, text) / len(text) if text else float("nan")
