"""Training and sampling tokens/s of masked diffusion against the same-size AR model, per preset,
on whatever device there is (CUDA when present: bf16 autocast, SDPA's flash/efficient kernels).

Training: full optimizer steps built as dlm.training.loop builds them (preset transformer,
process.loss under autocast, backward, clipping, Muon + AdamW step, compiled blocks), on random
tokens of a --vocab-sized vocabulary; tokens/s from the median of --steps timed steps after
--warmup steps (compilation happens there).

Sampling: random weights (speed does not depend on what the weights say, except for
threshold decoding, which is left out for that reason), a 16-token prompt, --length new tokens:
  masked k=1   confidence decoding, one token per forward pass (steps = length, blocks of 32)
  masked k=4   four tokens per forward pass (steps = length / 4), blocks of 32, dual KV cache
  ar           one token per forward pass with its KV cache
at batch 1 and 16; one untimed warm-up call per setting. Every ratio is against the AR model of
the same preset, measured in the same run.

    python benchmarks/gpu_throughput.py                         # small and base, on CUDA if present
    python benchmarks/gpu_throughput.py --presets tiny --steps 3 --warmup 1 --length 64   # a smoke run
    python benchmarks/gpu_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from dlm.models import Transformer, preset_config
from dlm.processes import PROCESSES
from dlm.sampling import Canvas, sample_autoregressive, sample_confidence
from dlm.training.optim import build_optimizer
from dlm.training.performance import autocast, compile_blocks, resolve_device, resolve_precision, tune_allocator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, process_name: str, vocab: int, seq_len: int, device: torch.device):
    specials = {"mask": vocab - 4, "pad": vocab - 3, "eos": vocab - 2, "bos": vocab - 1}
    cls = PROCESSES[process_name]
    process = cls.from_config({**getattr(cls, "TRAINING_DEFAULTS", {}), "name": process_name, "block_size": 16},
                              vocab_size=vocab, special_ids=specials)
    torch.manual_seed(0)
    model = Transformer(preset_config(preset, vocab_size=vocab, max_len=seq_len, **process.model_options()))
    return model.to(device), process, specials


def train_speed(preset: str, process_name: str, args, device: torch.device, precision: str) -> dict:
    model, process, _ = build(preset, process_name, args.vocab, args.seq_len, device)
    model.train()
    compiled = compile_blocks(model) if args.compile else False
    optimizer = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randint(0, args.vocab - 4, (args.batch_size, args.seq_len), device=device)  # (B, L)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with autocast(precision, device):
            out = process.loss(model, x0, generator=generator)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"preset": preset, "process": process_name, "params": model.num_parameters(), "compiled": compiled,
            "step_seconds": step, "tokens_per_second": args.batch_size * args.seq_len / step, "peak_gib": peak}


@torch.no_grad()
def sample_speed(preset: str, process_name: str, setting: str, batch: int, args, device: torch.device,
                 precision: str) -> dict:
    model, process, specials = build(preset, process_name, args.vocab, args.seq_len, device)
    model.eval()
    prompt = torch.randint(0, args.vocab - 4, (16,)).tolist()

    def once():
        canvas = Canvas.for_generation([prompt] * batch, args.length, fill_id=specials["mask"],
                                       pad_id=specials["pad"], device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        with autocast(precision, device):
            if process_name == "ar":
                return sample_autoregressive(model, process, canvas, temperature=0.0, generator=generator)
            k = 4 if setting == "k=4" else 1
            return sample_confidence(model, process, canvas, steps=args.length // k, block_length=32,
                                     cache="dual" if k > 1 else "none", generator=generator)

    once()  # warm-up
    sync(device)
    start = time.perf_counter()
    out = once()
    sync(device)
    seconds = time.perf_counter() - start
    return {"preset": preset, "process": process_name, "setting": setting, "batch": batch, "length": args.length,
            "nfe": out.nfe, "seconds": seconds, "tokens_per_second": batch * args.length / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small", "base"])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (a BPE-sized one by default)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="training sequences per step")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--length", type=int, default=256, help="generated tokens")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--json", default=None, help="also write every row to this file")
    args = p.parse_args()

    tune_allocator()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), {precision}, torch {torch.__version__}\n")

    train_rows = [train_speed(preset, proc, args, device, precision) for preset in args.presets for proc in ("masked", "ar")]
    print(f"training, batch {args.batch_size} x {args.seq_len} tokens\n")
    print("| preset | process | params | step (ms) | tokens/s | x AR | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for row in train_rows:
        ar = next(r for r in train_rows if r["preset"] == row["preset"] and r["process"] == "ar")
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        print(f"| {row['preset']} | {row['process']} | {row['params'] / 1e6:.1f}M | {1000 * row['step_seconds']:.1f} | "
              f"{row['tokens_per_second']:,.0f} | {row['tokens_per_second'] / ar['tokens_per_second']:.2f} | {peak} |")

    sample_rows = []
    for preset in args.presets:
        for batch in args.batches:
            for proc, setting in (("masked", "k=1"), ("masked", "k=4"), ("ar", "kv cache")):
                sample_rows.append(sample_speed(preset, proc, setting, batch, args, device, precision))
    print(f"\nsampling {args.length} tokens after a 16-token prompt\n")
    print("| preset | batch | sampler | forward passes | seconds | tokens/s | x AR |")
    print("|---|---|---|---|---|---|---|")
    for row in sample_rows:
        ar = next(r for r in sample_rows if r["preset"] == row["preset"] and r["batch"] == row["batch"]
                  and r["process"] == "ar")
        print(f"| {row['preset']} | {row['batch']} | {row['process']} {row['setting']} | {row['nfe']} | "
              f"{row['seconds']:.2f} | {row['tokens_per_second']:,.0f} | "
              f"{row['tokens_per_second'] / ar['tokens_per_second']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "device_name": name, "precision": precision, "args": vars(args),
                       "training": train_rows, "sampling": sample_rows}, f, indent=2)


if __name__ == "__main__":
    main()
