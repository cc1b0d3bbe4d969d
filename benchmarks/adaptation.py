"""What each option of AR-to-diffusion adaptation does: the validation bound of block diffusion
started from one AR run, with the whole recipe and with each option left out, at one budget.

    python benchmarks/adaptation.py --ar ~/.cache/dlm/frontier-small-0.1.0/ar --steps 120 --out adaptation.json

Every variant trains for the same number of steps from the same AR checkpoint (the full recipe:
logit shift, causal clean stream, attention annealing, block-size warm-up, the clean stream's AR
loss), then `dlm eval`'s bound is taken on the same validation chunks with the same draws, beside
the AR model's exact bits/char on them. A variant "from scratch" trains the same block model
without --init-from, for reference. Runs are cached in --cache, so a rerun only evaluates.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> int:
    from dlm.evaluation.likelihood import evaluate_checkpoint
    from dlm.training import TrainConfig, load_checkpoint
    from dlm.training.cached import ensure_trained

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ar", required=True, help="the AR run to start from")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--anneal-steps", type=int, default=40)
    p.add_argument("--warmup-steps", type=int, default=40, help="block-size warm-up steps")
    p.add_argument("--ar-weight", type=float, default=0.5)
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="0 = none: over a hundred steps an EMA of 0.999 would still be mostly the AR model")
    p.add_argument("--chunks", type=int, default=256, help="validation chunks for the bounds")
    p.add_argument("--samples", type=int, default=4, help="Monte-Carlo draws per chunk")
    p.add_argument("--variants", default="recipe,no-shift,no-anneal,no-warmup,no-ar-loss,scratch")
    p.add_argument("--cache", default=None, help="where the runs live (default: next to the AR run)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    ar = load_checkpoint(args.ar)
    trained = TrainConfig.from_dict(ar.config["train"])
    cache = Path(args.cache or Path(args.ar).expanduser().parent / "adaptation")
    recipe = replace(trained, out="", process="block", block_size=args.block_size, init_from=str(Path(args.ar)),
                     logit_shift=True, clean_attention="causal", anneal_steps=args.anneal_steps,
                     block_warmup_steps=args.warmup_steps, ar_loss_weight=args.ar_weight, steps=args.steps,
                     lr=args.lr, warmup_steps=10, ema_decay=args.ema_decay, eval_every=args.steps,
                     final_eval_chunks=64)
    variants = {
        "recipe": {},
        "no-shift": {"logit_shift": False, "ar_loss_weight": 0.0},  # the AR loss needs the shift
        "no-anneal": {"anneal_steps": 0},
        "no-warmup": {"block_warmup_steps": 0},
        "no-ar-loss": {"ar_loss_weight": 0.0},
        "block-clean": {"clean_attention": "block", "ar_loss_weight": 0.0},
        "scratch": {"init_from": "", "logit_shift": False, "clean_attention": "block", "anneal_steps": 0,
                    "block_warmup_steps": 0, "ar_loss_weight": 0.0, "lr": trained.lr, "warmup_steps": 100},
    }
    exact = evaluate_checkpoint(ar, chunks=args.chunks, samples=1)
    rows = [{"variant": "AR (start)", "bits_per_char": exact.bits_per_char, "stderr": exact.stderr,
             "ratio_to_ar": 1.0, "steps": ar.step}]
    print(f"AR {args.ar}: {exact.bits_per_char:.4f} bits/char (exact) on {exact.num_chunks} chunks", file=sys.stderr)
    for name in args.variants.split(","):
        config = replace(recipe, out=str(cache / f"{name}-b{args.block_size}-s{args.steps}-lr{args.lr:g}"),
                         **variants[name])
        ckpt = ensure_trained(config, log=lambda text: print("  " + text, file=sys.stderr), what=name)[0]
        est = evaluate_checkpoint(ckpt, chunks=args.chunks, samples=args.samples)
        rows.append({"variant": name, "bits_per_char": est.bits_per_char, "stderr": est.stderr,
                     "ratio_to_ar": est.bits_per_char / exact.bits_per_char, "steps": ckpt.step})
        print(f"{name:12s} {est.bits_per_char:.4f} ± {est.stderr:.4f} bits/char ({rows[-1]['ratio_to_ar']:.3f}x AR)",
              file=sys.stderr)
    print(f"\nblock size {args.block_size}, {args.steps} steps, lr {args.lr}; bounds on {args.chunks} validation "
          f"chunks, {args.samples} draws each\n")
    print("| variant | bits/char | ± stderr | x AR |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['bits_per_char']:.4f} | {r['stderr']:.4f} | {r['ratio_to_ar']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
