"""Parallel decoding against quality: threshold decoding vs a fixed number of tokens per step,
judged by an autoregressive model of the same data, and the speed of each against that AR
model's own KV-cache sampler, at batch 1, all in one run.

    python benchmarks/sampling.py --model runs/masked --judge runs/ar --plot sampling.png

For every setting, each of --prompts prompts (the first --prompt-chars characters of evenly
spaced validation chunks) is continued by --length tokens, one prompt at a time (batch 1):

- tokens per forward pass (generated tokens / nfe), and tokens/s (generated tokens / seconds);
- quality: the judge's negative log-likelihood of the continuation given the prompt, in bits
  per character (lower is likelier), with its standard error over samples, and the entropy of
  the samples' character distribution in bits (a diversity check: degenerate repetition has low
  NLL and low entropy). The judge must not be the AR contestant: a model judging its own
  samples flatters them (greedy AR samples scored 1.135 bits/char by their own model).

Settings: the confidence sampler (LLaDA) in semi-autoregressive blocks of --block-length,
at temperature 0, with a fixed k = 1, 2, 4, 8 tokens per step and with Fast-dLLM thresholds
0.99 ... 0.5 (at least one token per step); the threshold settings also run with the dual
cache. The AR contestant's own sampler (greedy, KV cache) is the speed baseline. Fast-dLLM's claim
to check: at equal tokens per forward, thresholds keep quality better than fixed k.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from judge import Judge, char_entropy, figure, prompts_from_validation, save_figure  # noqa: E402

from dlm.evaluation.quality import Judges  # noqa: E402

from dlm.sampling import Canvas, sample_autoregressive, sample_confidence  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402
from dlm.training.performance import tune_allocator  # noqa: E402

THRESHOLDS = (0.99, 0.9, 0.8, 0.7, 0.5)
FIXED_K = (1, 2, 4, 8)


def run_setting(name: str, sample, prompts: list[str], tok, judge, length: int) -> dict:
    nfe = seconds = 0.0
    texts = []
    eos = tok.specials["eos"]
    warm = Canvas.for_generation([tok.encode(prompts[0])], length, fill_id=tok.mask_id, pad_id=tok.pad_id)
    sample(warm)  # untimed: the first call of a setting pays for allocations and kernel selection
    for prompt in prompts:
        ids = tok.encode(prompt)
        canvas = Canvas.for_generation([ids], length, fill_id=tok.mask_id, pad_id=tok.pad_id)
        start = time.perf_counter()
        out = sample(canvas)
        seconds += time.perf_counter() - start
        nfe += out.nfe
        gen = canvas.generated(out.tokens, 0)
        gen = gen[:gen.index(eos)] if eos in gen else gen  # the judge scores the text, not what follows eos
        texts.append(tok.decode(gen))
    tokens = length * len(prompts)
    scores = Judges(judge, None).score(prompts, texts)
    return {"setting": name, "tokens_per_forward": tokens / nfe, "tokens_per_second": tokens / seconds,
            "judge_bits_per_char": scores["judge_bits_per_char"], "judge_stderr": scores["judge_stderr"],
            "entropy_bits": char_entropy(texts), "nfe_per_sample": nfe / len(prompts), "example": texts[0][:80]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a masked-diffusion checkpoint")
    p.add_argument("--ar", required=True, help="the AR contestant (speed baseline): an AR checkpoint of the same "
                                             "data and tokenizer")
    p.add_argument("--judge", required=True, help="an AR checkpoint of the same text that is not a contestant "
                                                "(e.g. a larger preset trained longer)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt-chars", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the quality/parallelism plot here (PNG)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tune_allocator()  # as every `dlm` command does, so the figures are what `dlm generate` gets
    if args.threads:
        torch.set_num_threads(args.threads)
    if Path(args.judge).expanduser().resolve() in {Path(p).expanduser().resolve() for p in (args.ar, args.model)}:
        raise SystemExit("--judge must not be a contestant: a model judging its own samples flatters them")
    model, judge, ar = load_checkpoint(args.model), Judge(args.judge), Judge(args.ar).ckpt
    tok = model.tokenizer
    if ar.tokenizer.backend.get_vocab() != tok.backend.get_vocab():
        raise SystemExit("the AR contestant must share the model's tokenizer (train both on the same data)")
    prompts = prompts_from_validation(model, args.prompts, args.prompt_chars)
    G, B = args.length, args.block_length

    def confidence(**kw):
        return lambda canvas: sample_confidence(model.model, model.process, canvas, block_length=B,
                                                temperature=0.0, **kw)

    settings = [(f"k={k}", confidence(steps=G // k)) for k in FIXED_K]
    settings += [(f"threshold {th}", confidence(steps=G, threshold=th)) for th in THRESHOLDS]
    settings += [(f"threshold {th} + dual cache", confidence(steps=G, threshold=th, cache="dual"))
                 for th in THRESHOLDS]
    settings.append(("AR, KV cache", lambda canvas: sample_autoregressive(ar.model, ar.process, canvas,
                                                                          temperature=0.0)))
    rows = []
    for name, sample in settings:
        rows.append(run_setting(name, sample, prompts, tok, judge, G))
        r = rows[-1]
        print(f"{name:32s} {r['tokens_per_forward']:6.2f} tok/fwd {r['tokens_per_second']:8.0f} tok/s "
              f"judge {r['judge_bits_per_char']:.3f} bits/char  entropy {r['entropy_bits']:.2f}", file=sys.stderr)

    ar = rows[-1]
    reference = rows[0]  # one token per step
    print(f"\n{len(prompts)} prompts of {args.prompt_chars} characters, {G} tokens each, batch 1, blocks of {B}; "
          f"model {args.model}, AR {args.ar}, judge {args.judge}\n")
    print("| setting | tokens/forward | tokens/s | x AR speed | judge bits/char | ± stderr | vs k=1 | entropy (bits) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['tokens_per_forward']:.2f} | {r['tokens_per_second']:,.0f} | "
              f"{r['tokens_per_second'] / ar['tokens_per_second']:.2f} | {r['judge_bits_per_char']:.3f} | "
              f"{r['judge_stderr']:.3f} | "
              f"{r['judge_bits_per_char'] / reference['judge_bits_per_char'] - 1:+.1%} | {r['entropy_bits']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        fig, (ax, ax2) = figure(2, figsize=(11, 4.2))
        for prefix, marker, label in (("k=", "o", "fixed k tokens per step"), ("threshold", "s", "threshold")):
            pts = [r for r in rows if r["setting"].startswith(prefix) and "cache" not in r["setting"]]
            x = [r["tokens_per_forward"] for r in pts]
            ax.plot(x, [r["judge_bits_per_char"] for r in pts], marker=marker, label=label)
            ax2.plot(x, [r["entropy_bits"] for r in pts], marker=marker, label=label)
            for r in pts:
                ax.annotate(r["setting"].replace("threshold ", ""), (r["tokens_per_forward"], r["judge_bits_per_char"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(ar["judge_bits_per_char"], color="gray", linestyle=":", label="AR greedy")
        ax2.axhline(ar["entropy_bits"], color="gray", linestyle=":", label="AR greedy")
        ax.set_xlabel("tokens per forward pass")
        ax.set_ylabel("judge NLL of the samples (bits/char, lower = likelier)")
        ax.set_title("quality against parallelism")
        ax2.set_xlabel("tokens per forward pass")
        ax2.set_ylabel("character entropy of the samples (bits)")
        ax2.set_title("diversity: low = repetitive text, which the judge finds likely")
        ax.legend(fontsize=8)
        ax2.legend(fontsize=8)
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
