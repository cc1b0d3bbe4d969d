"""How far bfloat16 weights move greedy decoding from float32: the share of generated tokens that agree.

Each checkpoint is loaded twice, in float32 and in bfloat16 (`dlm generate --dtype`), and every
sampler setting decodes the same prompts at temperature 0 in both; a difference in one token
changes what follows it, so the figures are the share of equal tokens, the rows that agree
throughout, and the mean position of a row's first difference. Prompts are 16-token pieces of
the bundled corpus's last plays.

    python benchmarks/bf16_drift.py --masked runs/masked --ar runs/ar
    python benchmarks/bf16_drift.py --masked runs/masked --prompts 8 --length 32 --json

On a CPU without bf16 units bf16 products are emulated (slow, but the same rounding of the
weights), so the drift can be measured there too; it says nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
from pathlib import Path

import torch

SETTINGS = {  # model kind -> (label, sampler, knobs); every one at temperature 0
    "masked": [("confidence", "confidence", {"block_length": 32}),
               ("confidence, dual cache", "confidence", {"block_length": 32, "cache": "dual"}),
               ("confidence, threshold 0.9", "confidence", {"block_length": 32, "threshold": 0.9})],
    "ar": [("greedy, KV cache", "autoregressive", {})],
}
CORPUS = Path(__file__).resolve().parents[1] / "src" / "dlm" / "data" / "corpora" / "shakespeare.jsonl.xz"


def prompts_from_corpus(tokenizer, count: int, length: int = 16) -> list[list[int]]:
    """`count` prompts of `length` tokens, evenly spread over the corpus's last 200,000 characters."""
    with lzma.open(CORPUS, "rt") as f:
        text = " ".join(json.loads(line)["text"] for line in f)
    ids = tokenizer.encode(text[-200_000:])
    stride = (len(ids) - length) // count
    return [ids[i * stride:i * stride + length] for i in range(count)]


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a, b (B, G) generated tokens -> share equal, rows equal throughout, mean first differing position."""
    differs = a != b  # (B, G)
    G = a.shape[1]
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.full((a.shape[0],), G))  # (B,)
    return {"same_tokens": differs.logical_not().float().mean().item(), "rows_identical": int((first == G).sum()),
            "rows": a.shape[0], "mean_first_difference": first.float().mean().item()}


def drift(folder: str, kind: str, *, prompts: int, length: int) -> list[dict]:
    from dlm.sampling import SAMPLERS
    from dlm.sampling.canvas import Canvas
    from dlm.training.checkpoint import load_checkpoint

    tokens, rows = {}, None
    for dtype in (torch.float32, torch.bfloat16):
        ckpt = load_checkpoint(folder, dtype=dtype)
        tok = ckpt.tokenizer
        if rows is None:  # the same prompts for both precisions, the corpus read once
            rows = prompts_from_corpus(tok, prompts)
        for label, sampler, knobs in SETTINGS[kind]:
            canvas = Canvas.for_generation(rows, length, fill_id=tok.mask_id, pad_id=tok.pad_id)
            out = SAMPLERS[sampler](ckpt.model.eval(), ckpt.process, canvas, steps=length, temperature=0.0,
                                    generator=torch.Generator().manual_seed(0), **knobs)
            tokens.setdefault(label, []).append(out.tokens[:, -length:])  # (B, G)
    return [{"model": kind, "setting": label, **agreement(*pair)} for label, pair in tokens.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--masked", help="a masked-diffusion checkpoint")
    p.add_argument("--ar", help="an autoregressive checkpoint")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--length", type=int, default=64, help="generated tokens per prompt (and steps)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if not (args.masked or args.ar):
        p.error("give --masked, --ar or both")
    rows = []
    for kind in ("masked", "ar"):
        if getattr(args, kind):
            rows += drift(getattr(args, kind), kind, prompts=args.prompts, length=args.length)
    if args.json:
        print(json.dumps({"prompts": args.prompts, "length": args.length, "rows": rows}))
        return 0
    print("| model | setting | same tokens | rows identical | mean first difference |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['setting']} | {r['same_tokens']:.4f} | {r['rows_identical']} / {r['rows']} | "
              f"{r['mean_first_difference']:.1f} of {args.length} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
