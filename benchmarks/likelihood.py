"""Every process on the same footing: one preset, seed, corpus and time budget each, then one
table of validation bits/char (with standard error) and training tokens/s, all from one run.

    python benchmarks/likelihood.py                      # tiny preset, 3 minutes each, Shakespeare
    python benchmarks/likelihood.py --minutes 5 --processes ar block:4 masked
    python benchmarks/likelihood.py --json results.json --markdown results.md

A process is written `name` or `block:B` (block diffusion with blocks of B tokens). Each is
trained with `dlm.training.train` (its own training defaults; everything else shared), then
evaluated on the same evenly spaced validation chunks with `--samples` Monte-Carlo draws per
chunk. What each figure is differs, and the table says it: AR is an exact likelihood; masked,
uniform and block diffusion report the NELBO (an upper bound); gaussian reports the VDM
variational bound with its rounding decoder. All are in bits per character of the same text.

For scale, published figures on text8 (bits/char, much larger models and budgets): AR 1.23,
masked (MD4) 1.37, SEDD-absorb 1.39, D3PM-uniform 1.61; block diffusion between AR and masked,
closer to AR for small blocks (BD3-LM).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dlm.evaluation.likelihood import evaluate_checkpoint
from dlm.training import TrainConfig, load_checkpoint, train

DEFAULT_PROCESSES = ["ar", "block:4", "block:16", "masked", "uniform", "gaussian"]


def parse_process(spec: str) -> dict:
    name, _, size = spec.partition(":")
    return {"process": name, **({"block_size": int(size)} if size else {})}


def run_one(spec: str, args, root: Path) -> dict:
    settings = parse_process(spec)
    out = root / spec.replace(":", "-")
    config = TrainConfig(out=str(out), preset=args.preset, data=args.data, minutes=args.minutes, seed=args.seed,
                         seq_len=args.seq_len, eval_every=10**9, final_eval_chunks=args.eval_chunks,
                         eval_samples=1, **settings)
    print(f"== {spec}: training {args.minutes} min", file=sys.stderr, flush=True)
    result = train(config, progress=not args.quiet)
    ckpt = load_checkpoint(result.checkpoint)
    started = time.perf_counter()
    est = evaluate_checkpoint(ckpt, chunks=args.eval_chunks, samples=args.samples, seed=args.seed)
    return {"process": spec, "bound": ckpt.process.bound, "bits_per_char": est.bits_per_char,
            "stderr": est.stderr, "stderr_chunks": est.stderr_chunks, "bits_per_token": est.bits_per_token,
            "train_tokens_per_second": result.tokens_per_second, "steps": result.step,
            "parameters": result.num_parameters, "eval_chunks": est.num_chunks,
            "eval_samples": est.samples_per_chunk, "eval_seconds": time.perf_counter() - started}


def markdown(rows: list[dict], args) -> str:
    lines = [f"preset {args.preset}, {args.minutes} min each, seq {args.seq_len}, seed {args.seed}, {args.data}; "
             f"{rows[0]['eval_chunks'] if rows else 0} validation chunks",
             "",
             "| process | bits/char | ± stderr | ± over chunks | train tokens/s | steps | what it is |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['process']} | {r['bits_per_char']:.3f} | {r['stderr']:.3f} | {r['stderr_chunks']:.3f} "
                     f"| {r['train_tokens_per_second']:,.0f} | {r['steps']} | {r['bound']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", nargs="+", default=DEFAULT_PROCESSES)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--data", default="shakespeare")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-chunks", type=int, default=512)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for spec in args.processes:
        parse_process(spec)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        rows = []
        for spec in args.processes:
            rows.append(run_one(spec, args, root))
            print(markdown(rows, args), file=sys.stderr, flush=True)
    table = markdown(rows, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
