"""Remasking for self-correction: does ReMDM turn extra steps into quality?

    python benchmarks/remasking.py --model runs/masked --judge runs/ar --plot remasking.png

Each of --prompts validation prompts (--prompt-chars characters) is continued by --length
tokens, --samples times, with the masked-diffusion ancestral sampler (MDLM: a committed token is
never revisited) and with ReMDM's "cap" and "loop" schedules (committed tokens are remasked),
at --ratios steps per token (default 0.5, 1, 2 and 4), nucleus sampling (top-p --top-p, as ReMDM evaluates).
Quality: the AR judge's negative log-likelihood of the continuation given the prompt (bits/char,
lower = likelier) and the samples' character entropy (bits; low = repetitive). ReMDM's claim
to check: with more steps than tokens, remasking improves quality where MDLM stalls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from judge import Judge, char_entropy, figure, mean, prompts_from_validation, save_figure  # noqa: E402

from dlm.sampling import Canvas, sample_ancestral, sample_remdm  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402

STEPS_PER_TOKEN = (0.5, 1, 2, 4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a masked-diffusion checkpoint")
    p.add_argument("--judge", required=True, help="an AR checkpoint of the same text")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=2, help="samples per prompt")
    p.add_argument("--prompt-chars", type=int, default=32)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--eta", type=float, default=0.02, help="ReMDM's remasking strength")
    p.add_argument("--ratios", type=float, nargs="+", default=list(STEPS_PER_TOKEN), help="steps per token")
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model, judge = load_checkpoint(args.model), Judge(args.judge)
    if model.process.name != "masked":
        raise SystemExit(f"--model must be a masked-diffusion checkpoint, got {model.process.name}")
    tok = model.tokenizer
    prompts = prompts_from_validation(model, args.prompts, args.prompt_chars)
    rows_prompts = [p for p in prompts for _ in range(args.samples)]
    canvas = Canvas.for_generation([tok.encode(p) for p in rows_prompts], args.length, fill_id=tok.mask_id,
                                   pad_id=tok.pad_id)
    samplers = {
        "MDLM (no remasking)": lambda steps, g: sample_ancestral(model.model, model.process, canvas, steps=steps,
                                                                 top_p=args.top_p, generator=g),
        "ReMDM cap": lambda steps, g: sample_remdm(model.model, model.process, canvas, steps=steps, schedule="cap",
                                                   eta=args.eta, top_p=args.top_p, generator=g),
        "ReMDM loop": lambda steps, g: sample_remdm(model.model, model.process, canvas, steps=steps,
                                                    schedule="loop", eta=args.eta, top_p=args.top_p, generator=g),
    }
    rows = []
    for name, sample in samplers.items():
        for ratio in args.ratios:
            steps = max(1, round(ratio * args.length))
            out = sample(steps, torch.Generator().manual_seed(0))
            texts = [tok.decode(canvas.generated(out.tokens, b)) for b in range(len(rows_prompts))]
            nll = [judge.bits_per_char(p, t) for p, t in zip(rows_prompts, texts)]
            rows.append({"sampler": name, "steps_per_token": ratio, "steps": steps, "nfe": out.nfe,
                         "seconds": out.seconds, "judge_bits_per_char": mean(nll), "entropy_bits": char_entropy(texts),
                         "example": texts[0][:70]})
            r = rows[-1]
            print(f"{name:22s} {ratio:>4} steps/token: judge {r['judge_bits_per_char']:.3f} bits/char, entropy "
                  f"{r['entropy_bits']:.2f}, {r['seconds']:.1f} s  e.g. {r['example']!r}", file=sys.stderr)
    print(f"\n{args.prompts} prompts x {args.samples} samples, {args.length} tokens, top-p {args.top_p}, eta "
          f"{args.eta}; model {args.model}, judge {args.judge}\n")
    print("| sampler | steps per token | steps | judge NLL (bits/char) | entropy (bits) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps_per_token']:g} | {r['steps']} | {r['judge_bits_per_char']:.3f} | "
              f"{r['entropy_bits']:.2f} | {r['seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        fig, (ax, ax2) = figure(2, figsize=(11, 4.2))
        for name in samplers:
            pts = [r for r in rows if r["sampler"] == name]
            ax.plot([r["steps_per_token"] for r in pts], [r["judge_bits_per_char"] for r in pts], marker="o",
                    label=name)
            ax2.plot([r["steps_per_token"] for r in pts], [r["entropy_bits"] for r in pts], marker="o", label=name)
        for a in (ax, ax2):
            a.set_xscale("log", base=2)
            a.set_xlabel("denoising steps per generated token")
            a.axvline(1.0, color="gray", linestyle=":")
            a.legend(fontsize=8)
        ax.set_ylabel("AR judge NLL of the samples (bits/char, lower = likelier)")
        ax.set_title(f"quality against steps ({args.length} tokens, top-p {args.top_p})")
        ax2.set_ylabel("character entropy of the samples (bits)")
        ax2.set_title("diversity")
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
