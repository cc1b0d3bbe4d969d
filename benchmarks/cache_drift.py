"""How far Fast-dLLM's approximate caches move the logits of a bidirectional denoiser.

    python benchmarks/cache_drift.py --model runs/masked

Decodes --prompts validation prompts with the confidence sampler (blocks of --block-length,
one token per step, temperature 0), following the exact (uncached) path; at every step it
also computes what the prefix and the dual cache would give, and compares them on the
positions still masked in the current block: the largest absolute logit difference, the mean
KL(exact || cached) of the token distributions, and how often the argmax agrees. The first
pass of every block is exact by construction and is left out.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dlm.sampling import Canvas
from dlm.sampling.confidence import BlockCache
from dlm.training import load_checkpoint

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from judge import prompts_from_validation  # noqa: E402


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.model)
    model, process, tok = ckpt.model, ckpt.process, ckpt.tokenizer
    stats = {mode: {"max": 0.0, "kl": [], "agree": []} for mode in ("prefix", "dual")}
    for prompt in prompts_from_validation(ckpt, args.prompts, 32):
        canvas = Canvas.for_generation([tok.encode(prompt)], args.length, fill_id=tok.mask_id, pad_id=tok.pad_id)
        x = canvas.tokens.clone()
        start = int(canvas.editable[0].nonzero()[0])
        caches = {mode: BlockCache(model, canvas, mode) for mode in stats}
        for lo in range(start, canvas.shape[1], args.block_length):
            in_block = torch.zeros_like(canvas.editable)
            in_block[:, lo:lo + args.block_length] = True
            in_block &= canvas.editable
            for step in range(int(in_block.sum())):
                t = torch.zeros(1)
                exact = process.x0_logits(model(x, t, attention_mask=canvas.attention_mask))  # (1, L, V)
                open_ = in_block & (x == tok.mask_id)
                for mode, cache in caches.items():
                    approx = process.x0_logits(cache.logits(x, t, in_block, fresh=step == 0))
                    if step == 0:
                        continue
                    e, a = exact[open_].double(), approx[open_].double()  # (n, V)
                    finite = torch.isfinite(e)
                    s = stats[mode]
                    s["max"] = max(s["max"], float((e - a)[finite].abs().max()))
                    s["kl"].append(float((e.softmax(-1) * (e.log_softmax(-1) - a.log_softmax(-1))).nan_to_num().sum(-1).mean()))
                    s["agree"].append(float((e.argmax(-1) == a.argmax(-1)).double().mean()))
                conf = exact.softmax(-1).amax(-1).masked_fill(~open_, -1.0)  # commit the surest, exactly
                pos = int(conf[0].argmax())
                x[0, pos] = exact[0, pos].argmax()
    print(f"{args.prompts} prompts, {args.length} tokens, blocks of {args.block_length}, model {args.model}\n")
    print("| cache | max abs logit difference | mean KL(exact || cached), nats | argmax agreement |")
    print("|---|---|---|---|")
    for mode, s in stats.items():
        print(f"| {mode} | {s['max']:.3f} | {sum(s['kl']) / len(s['kl']):.2e} | "
              f"{sum(s['agree']) / len(s['agree']):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
