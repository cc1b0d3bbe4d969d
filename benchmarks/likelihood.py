"""Every process on the same footing: one preset, seed, corpus and time budget each, then one
table of validation bits/char (with standard error) and training tokens/s, all from one run.

    python benchmarks/likelihood.py                      # tiny preset, 3 minutes each, Shakespeare
    python benchmarks/likelihood.py --minutes 5 --processes ar block:4 masked
    python benchmarks/likelihood.py --json results.json --markdown results.md

A process is written `name` or `block:B` (block diffusion with blocks of B tokens). Each is
trained by `dlm train` in a fresh interpreter (its own training defaults; everything else
shared; one process per interpreter, so torch.compile's caches of one model never slow down
the next), then evaluated by `dlm eval` on the same evenly spaced validation chunks with
`--samples` Monte-Carlo draws per chunk. What each figure is differs, and the table says it: AR is an exact likelihood; masked,
uniform and block diffusion report the NELBO (an upper bound); gaussian reports the VDM
variational bound with its rounding decoder. All are in bits per character of the same text.

For scale, published figures on text8 (bits/char, much larger models and budgets): AR 1.23,
masked (MD4) 1.37, SEDD-absorb 1.39, D3PM-uniform 1.61; block diffusion between AR and masked,
closer to AR for small blocks (BD3-LM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PROCESSES = ["ar", "block:4", "block:16", "masked", "uniform", "gaussian"]


def parse_process(spec: str) -> dict:
    name, _, size = spec.partition(":")
    return {"process": name, **({"block_size": int(size)} if size else {})}


def dlm(*argv: str) -> dict:
    """Run a `dlm` command in a fresh interpreter; its --json object."""
    done = subprocess.run([sys.executable, "-m", "dlm", *argv, "--json"], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`dlm {' '.join(argv)}` failed (exit {done.returncode})")
    return json.loads(done.stdout)


def run_one(spec: str, args, root: Path) -> dict:
    settings = parse_process(spec)
    out = root / spec.replace(":", "-")
    print(f"== {spec}: training {args.minutes} min", file=sys.stderr, flush=True)
    train_flags = ["--process", settings["process"], "--block-size", str(settings.get("block_size", 16)),
                   "--preset", args.preset, "--data", args.data, "--minutes", str(args.minutes),
                   "--seed", str(args.seed), "--seq-len", str(args.seq_len), "--eval-every", str(10**9),
                   "--eval-chunks", "16", "--final-eval-chunks", "16", "--eval-samples", "1", "--out", str(out)]
    trained = dlm("train", *train_flags, *(["--no-progress"] if args.quiet else []))
    started = time.perf_counter()
    est = dlm("eval", str(out), "--chunks", str(args.eval_chunks), "--samples", str(args.samples),
              "--seed", str(args.seed))
    return {"process": spec, "bound": est["bound"], "bits_per_char": est["bits_per_char"],
            "stderr": est["stderr"], "stderr_chunks": est["stderr_chunks"], "bits_per_token": est["bits_per_token"],
            "train_tokens_per_second": trained["tokens_per_second"], "steps": trained["step"],
            "parameters": trained["num_parameters"], "eval_chunks": est["num_chunks"],
            "eval_samples": est["samples_per_chunk"], "eval_seconds": time.perf_counter() - started}


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
