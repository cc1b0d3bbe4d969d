"""Training throughput of a model preset: tokens/s, achieved GFLOP/s, and % of the matmul peak.

What is measured: full optimizer steps of masked-diffusion training built as dlm.training.loop
builds them (Transformer from preset_config, MaskedDiffusion.loss under autocast, backward,
gradient clipping, fused AdamW step, zero_grad), on random tokens, after tune_allocator() and,
by default, compile_blocks(). The first steps compile the blocks and are slow, so --warmup steps
(default 5 compiled, 2 eager) run before --steps timed steps; tokens/s comes from the median timed
step. The matrix-product peak of the run's precision (bf16 where the hardware has bf16 units,
else fp32) is measured in the same run with matmul_peak.measure_peak(),
so that the percentage is against what this machine delivers right now (both figures drop when
other processes share the cores).

FLOPs per token (counted explicitly, forward + backward):

    6 * N_matmul  +  12 * n_layers * L * d_model

N_matmul is the number of weights taking part in matrix products for every token: the Linear
weights of the blocks (qkv, attention out, SwiGLU gate+up and down) plus the output head, which is
the tied embedding matrix (V x d_model); the embedding lookup itself is not a matmul, norms and
biases are left out, and so are the per-sequence time-conditioning layers (off in the presets).
Each such weight costs 2 flops forward and 4 backward (input and weight gradients). The masked
diffusion loss runs the head on all L positions (cross-entropy is then taken at masked ones).
Attention adds, per token and layer, 2*L*d_model for Q K^T and 2*L*d_model for A V forward,
times 3 for forward + backward: 12 * L * d_model (bidirectional: no causal halving).

    python benchmarks/train_throughput.py                       # small, B=32, L=256, auto precision, compiled
    python benchmarks/train_throughput.py --compare --profile   # + fp32 eager baseline, time breakdown
    python benchmarks/train_throughput.py --json

--compare adds the fp32 eager baseline (same model, same batch); --profile adds a breakdown of
2 steps with torch.profiler by self time: matrix products (aten::mm/bmm/addmm...), SDPA kernels,
compiled fused kernels (Inductor), the fused AdamW update, and everything else. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import DTYPES, cpu_model, measure_peak  # noqa: E402

from dlm.evaluation.roofline import flops_per_token, matmul_params  # noqa: E402
from dlm.models import Transformer, preset_config  # noqa: E402
from dlm.processes import MaskedDiffusion  # noqa: E402
from dlm.training.optim import build_optimizer  # noqa: E402
from dlm.training.performance import (autocast, compile_blocks, resolve_device,  # noqa: E402
                                      resolve_precision, tune_allocator)

SHAKESPEARE_VOCAB = 88  # the character vocabulary of the Shakespeare corpus; no data is loaded

MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_mm", "mkldnn::", "aten::_addmm")
SDPA_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention")
COMPILED_MARKS = ("cpp_fused", "triton_", "CompiledFxGraph", "CompiledFunction", "Torch-Compiled Region",
                  "inductor", "graph_")
OPTIMIZER_OPS = ("_fused_adam", "Optimizer.step")


class Trainer:
    """One model + process + optimizer, stepping on random tokens exactly as the training loop does."""

    def __init__(self, preset: str, *, vocab_size: int, batch_size: int, seq_len: int, precision: str,
                 compile: bool, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.device, self.precision = device, precision
        self.batch_size, self.seq_len, self.vocab_size = batch_size, seq_len, vocab_size
        self.model = Transformer(preset_config(preset, vocab_size=vocab_size, max_len=seq_len)).to(device)
        # A synthetic benchmark: token 0 stands in for [MASK]; the data below never contains it.
        self.process = MaskedDiffusion(vocab_size=vocab_size, mask_id=0)
        self.optimizer = build_optimizer(self.model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
        self.compiled = compile_blocks(self.model) if compile else False
        self.data_rng = torch.Generator().manual_seed(seed)
        self.noise_rng = torch.Generator(device=device).manual_seed(seed + 1)
        self.model.train()

    def step(self) -> float:
        x0 = torch.randint(1, self.vocab_size, (self.batch_size, self.seq_len), generator=self.data_rng)
        x0 = x0.to(self.device)
        with autocast(self.precision, self.device):
            out = self.process.loss(self.model, x0, generator=self.noise_rng)
        out.loss.backward()
        loss = out.loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def time_steps(self, warmup: int, steps: int) -> dict:
        """Seconds of warm-up and per timed step (each step ends with .item(): the device has synced);
        tokens/s from the median step, which other processes on the machine disturb least."""
        t0 = time.perf_counter()
        for _ in range(warmup):
            self.step()
        t1 = time.perf_counter()
        per_step = []
        for _ in range(steps):
            s = time.perf_counter()
            self.step()
            per_step.append(time.perf_counter() - s)
        tokens = self.batch_size * self.seq_len
        median = statistics.median(per_step)
        return {"warmup_seconds": round(t1 - t0, 2), "step_seconds": [round(s, 4) for s in per_step],
                "tokens_per_second": tokens / median, "mean_tokens_per_second": tokens * steps / sum(per_step)}


def categorize(name: str) -> str:
    if any(m in name for m in OPTIMIZER_OPS):
        return "optimizer (fused AdamW)"
    if any(m in name for m in SDPA_OPS):
        return "attention (SDPA kernels)"
    if name.startswith(MATMUL_OPS):
        return "matmul (aten::mm/bmm/addmm)"
    if any(m in name for m in COMPILED_MARKS):
        return "compiled (Inductor fused kernels)"
    return "other"


def profile_steps(trainer: Trainer, steps: int = 2, top: int = 8) -> dict:
    """Self time per category over `steps` steps, and the ops that take most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        wall = time.perf_counter() - t0
    use_cuda = trainer.device.type == "cuda"
    by_cat: dict[str, float] = defaultdict(float)
    ops = []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if use_cuda else ev.self_cpu_time_total
        if us <= 0:
            continue
        by_cat[categorize(ev.key)] += us
        ops.append((us, ev.key, ev.count))
    total = sum(by_cat.values())
    ops.sort(reverse=True)
    return {
        "steps": steps,
        "wall_seconds": round(wall, 3),
        "profiled_seconds": round(total / 1e6, 3),
        "clock": "device" if use_cuda else "cpu self time",
        "categories": {k: {"seconds": round(v / 1e6, 3), "percent": round(100 * v / total, 1)}
                       for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "calls": c, "seconds": round(us / 1e6, 3), "category": categorize(k)}
                    for us, k, c in ops[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=SHAKESPEARE_VOCAB)
    parser.add_argument("--precision", choices=["bf16", "fp32", "auto"], default="auto",
                        help="auto (default): bf16 where the hardware has bf16 matrix units, else fp32")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="compile_blocks(model), as training does (default: on)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 compiled, 2 eager)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--peak-seconds", type=float, default=0.5, help="timed seconds per shape of the peak")
    parser.add_argument("--compare", action="store_true", help="also time the fp32 eager baseline")
    parser.add_argument("--profile", action="store_true", help="time breakdown of 2 steps (torch.profiler)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    say = (lambda *a, **k: None) if args.json else (lambda *a, **k: print(*a, **k, flush=True))

    # the peak of the precision the steps run in (a CPU without bf16 units emulates bf16 at ~1 GFLOP/s)
    say(f"measuring the {precision} matmul peak on {device} ...")
    peak = measure_peak(DTYPES[precision], device, seconds=args.peak_seconds)
    say(f"{precision} peak: {peak:.1f} GFLOP/s")

    trainer = Trainer(args.preset, vocab_size=args.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
                      precision=precision, compile=args.compile, device=device)
    fpt = flops_per_token(trainer.model, args.seq_len)
    warmup = args.warmup if args.warmup is not None else (5 if trainer.compiled else 2)
    say(f"{args.preset}: {trainer.model.num_parameters() / 1e6:.2f}M parameters, "
        f"{matmul_params(trainer.model) / 1e6:.2f}M in matmuls, {fpt / 1e6:.1f} MFLOP/token; "
        f"B={args.batch_size} L={args.seq_len} {precision}{' compiled' if trainer.compiled else ' eager'}; "
        f"{warmup} warm-up + {args.steps} timed steps ...")
    timing = trainer.time_steps(warmup, args.steps)
    tps = timing["tokens_per_second"]
    gflops = tps * fpt / 1e9
    result = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
        "preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "vocab_size": args.vocab_size, "precision": precision, "compiled": trainer.compiled,
        "parameters": trainer.model.num_parameters(), "matmul_parameters": matmul_params(trainer.model),
        "flops_per_token": fpt, "warmup_steps": warmup, "steps": args.steps, **timing,
        "achieved_gflops": round(gflops, 1), "peak_gflops": round(peak, 1),
        "percent_of_peak": round(100 * gflops / peak, 1),
    }
    result["tokens_per_second"] = round(tps, 1)
    result["mean_tokens_per_second"] = round(timing["mean_tokens_per_second"], 1)
    say(f"{tps:,.0f} tokens/s (median step {1000 * statistics.median(timing['step_seconds']):.0f} ms; "
        f"mean {timing['mean_tokens_per_second']:,.0f} tokens/s)"
        f", warm-up {timing['warmup_seconds']} s; {gflops:.1f} GFLOP/s = "
        f"{result['percent_of_peak']}% of the {precision} peak")

    if args.profile:
        say("profiling 2 steps ...")
        prof = profile_steps(trainer)
        result["profile"] = prof
        say(f"breakdown of {prof['steps']} steps ({prof['wall_seconds']} s wall, "
            f"{prof['profiled_seconds']} s {prof['clock']}):")
        for cat, v in prof["categories"].items():
            say(f"  {cat:36s} {v['seconds']:8.3f} s {v['percent']:6.1f}%")
        say("  top ops by self time:")
        for op in prof["top_ops"]:
            say(f"    {op['op'][:60]:60s} {op['calls']:5d} calls {op['seconds']:8.3f} s  [{op['category']}]")

    if args.compare:
        del trainer
        say("fp32 eager baseline ...")
        base = Trainer(args.preset, vocab_size=args.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
                       precision="fp32", compile=False, device=device).time_steps(1, args.steps)
        base_tps = base["tokens_per_second"]
        result["fp32_eager"] = {"tokens_per_second": round(base_tps, 1), "step_seconds": base["step_seconds"],
                                "achieved_gflops": round(base_tps * fpt / 1e9, 1)}
        result["speedup_over_fp32_eager"] = round(tps / base_tps, 2)
        say(f"fp32 eager: {base_tps:,.0f} tokens/s ({base_tps * fpt / 1e9:.1f} GFLOP/s); "
            f"this configuration is {tps / base_tps:.2f}x faster")

    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
