"""`dlm eval`: the NELBO of a checkpoint on held-out text, in bits per character and per token."""

from __future__ import annotations

import argparse
import sys

from dlm.evaluation.likelihood import evaluate_checkpoint
from dlm.training.checkpoint import load_checkpoint
from dlm.training.performance import resolve_device


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    est = evaluate_checkpoint(ckpt, data=args.data, chunks=args.chunks, samples=args.samples, seed=args.seed)
    payload = {"checkpoint": str(ckpt.path), "process": ckpt.process.name, "bound": ckpt.process.bound,
               **est.to_dict()}
    if args.json:
        from dlm.cli import emit_json

        emit_json(payload)
    else:
        print(f"{ckpt.path}: {est.bits_per_char:.4f} ± {est.stderr:.4f} bits/char, "
              f"{est.bits_per_token:.4f} bits/token ({ckpt.process.bound}; {est.num_chunks} chunks x "
              f"{est.samples_per_chunk} samples)", file=sys.stdout)
    return 0
