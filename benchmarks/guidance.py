"""Classifier-free guidance against the judge: does guidance make the continuation likelier?

    dlm train --preset small --process ar --seq-len 256 --batch-size 16 --minutes 12 --out runs/ar
    dlm train --preset small --data shakespeare-pairs --cond-drop 0.1 --seq-len 96 --minutes 10 --out runs/cond
    python benchmarks/guidance.py --model runs/cond --judge runs/ar --plot guidance.png

The model is trained on prompt/response pairs (a line of a speech, then the next line) with
condition dropout; the judge is an AR model of the same text (it scores the response as the
continuation of its prompt). For validation prompts, the model writes a response of up to
--length tokens (it ends at end-of-text) with guidance scales --scales (0 = unguided); the
judge's negative log-likelihood of each response given its prompt (bits/char, lower =
likelier), the responses' character entropy (a check against degenerate text) and their mean
length are averaged per scale.
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from judge import Judge, char_entropy, figure, mean, save_figure  # noqa: E402

from dlm.data.corpora import load_corpus  # noqa: E402
from dlm.sampling import SAMPLERS, Canvas  # noqa: E402
from dlm.sampling.guidance import ClassifierFreeGuidance  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--length", type=int, default=48)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--samples", type=int, default=2, help="samples per prompt and scale")
    p.add_argument("--sampler", default=None, help="default: the model's own")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    model, judge = load_checkpoint(args.model), Judge(args.judge)
    tok = model.tokenizer
    pairs = load_corpus(model.config["train"]["data"]).validation_pairs
    prompts = [pairs[i * len(pairs) // args.prompts][0] for i in range(args.prompts)]
    sampler_name = args.sampler or model.process.default_sampler
    sampler = SAMPLERS[sampler_name]
    eos = tok.specials["eos"]
    rows = []
    for scale in args.scales:
        nll, texts, lengths = [], [], []
        for i, prompt in enumerate(prompts):
            ids = tok.encode(prompt)
            canvas = Canvas.for_generation([ids] * args.samples, args.length, fill_id=tok.mask_id, pad_id=tok.pad_id)
            denoiser = ClassifierFreeGuidance(model.model, ~canvas.editable & canvas.attention_mask, scale=scale,
                                              null_id=tok.mask_id, attention_mask=canvas.attention_mask)
            out = sampler(denoiser, model.process, canvas, steps=args.steps, temperature=args.temperature,
                          generator=torch.Generator().manual_seed(i))
            for row in range(args.samples):
                gen = canvas.generated(out.tokens, row)
                text = tok.decode(gen[:gen.index(eos)] if eos in gen else gen)  # the response ends at eos
                texts.append(text)
                lengths.append(len(text))
                nll.append(judge.bits_per_char(prompt, text))
        rows.append({"scale": scale, "judge_bits_per_char": mean(nll), "entropy_bits": char_entropy(texts),
                     "mean_chars": mean(lengths), "example": texts[0][:60]})
        print(f"scale {scale}: judge {rows[-1]['judge_bits_per_char']:.3f} bits/char, entropy "
              f"{rows[-1]['entropy_bits']:.2f} bits, {rows[-1]['mean_chars']:.1f} chars  "
              f"e.g. {rows[-1]['example']!r}", file=sys.stderr)
    print(f"\n{args.prompts} validation prompts x {args.samples} samples, {args.length} tokens, {args.steps} steps, "
          f"{sampler_name} sampler at temperature {args.temperature:g}; model {args.model}, judge {args.judge}\n")
    print("| guidance scale | judge NLL (bits/char) | vs unguided | entropy (bits) | mean length (chars) |")
    print("|---|---|---|---|---|")
    base = rows[0]["judge_bits_per_char"]
    for r in rows:
        print(f"| {r['scale']:g} | {r['judge_bits_per_char']:.3f} | {r['judge_bits_per_char'] / base - 1:+.1%} | "
              f"{r['entropy_bits']:.2f} | {r['mean_chars']:.1f} |")
    if args.plot:
        fig, ax = figure(figsize=(5.6, 3.8))
        ax.plot([r["scale"] for r in rows], [r["judge_bits_per_char"] for r in rows], marker="o")
        ax.set_xlabel("guidance scale w (0 = unguided)")
        ax.set_ylabel("judge NLL of the response (bits/char)")
        ax.set_title("classifier-free guidance")
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
