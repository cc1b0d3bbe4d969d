"""How far each of dlm's steps is from what this machine allows: the roofline table and plot.

    python benchmarks/roofline.py --out roofline                  # tiny, small, base at batch 1, 8, 32
    python benchmarks/roofline.py --out roofline --json           # ... and one JSON object on stdout
    python benchmarks/roofline.py --presets small --compare before/roofline.json   # with a before column

For each preset and batch: one AR decode step (KV cache), one masked-diffusion step over a
32-token block with the dual cache, one uncached full-canvas step, one block-diffusion step with
its exact cache (each timed inside its sampler, see dlm.evaluation.roofline), and one training
step; beside each, its limit from the matrix peak and the copy bandwidth measured here first, in
the precision the steps run in (bf16 where the hardware has bf16 matrix units, else fp32). Writes
roofline.md, roofline.json and roofline.png in --out. Models have random weights; nothing is
downloaded or trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import SQUARE_SHAPES, TRANSFORMER_SHAPES, cpu_model, measure_peak, time_call  # noqa: E402


def measure_bandwidth(device: torch.device, mib: int = 256, seconds: float = 1.0) -> float:
    """Bytes/s of a large copy, counting the read and the write."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / time_call(lambda: dst.copy_(src), device, seconds)


def main(argv=None) -> int:
    from dlm.evaluation.bench import machine
    from dlm.evaluation.report import write_roofline
    from dlm.evaluation.roofline import STEPS, Hardware, Shape, measure
    from dlm.training.performance import resolve_dtype, tune_allocator

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--canvas", nargs=3, type=int, default=[128, 128, 32], metavar=("PROMPT", "GENERATE", "BLOCK"),
                   help="the decoding canvas: prompt tokens, generated tokens, block length (default 128 128 32)")
    p.add_argument("--peak-seconds", type=float, default=0.5, help="timed seconds per matrix shape for the peak")
    p.add_argument("--out", default="roofline", help="folder for roofline.md, roofline.json and roofline.png")
    p.add_argument("--compare", default=None, help="an earlier roofline.json: adds its times and the speed-up")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="train eagerly (default: compiled)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    args = p.parse_args(argv)
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    device = torch.device(args.device)
    tune_allocator()
    log = lambda message: print(f"[roofline] {message}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    dtype = resolve_dtype("auto", device)
    peak = measure_peak(dtype, device, shapes=SQUARE_SHAPES[:2] + TRANSFORMER_SHAPES,
                        seconds=args.peak_seconds) * 1e9
    bandwidth = measure_bandwidth(device, seconds=args.peak_seconds)
    log(f"{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}: {dtype} peak "
        f"{peak / 1e9:.0f} GFLOP/s, copy {bandwidth / 1e9:.1f} GB/s")
    result = measure(args.presets, args.batches, Hardware(peak, bandwidth, dtype), shape=Shape(*args.canvas), steps=args.steps,
                     device=device, compile=args.compile, log=log)
    result["machine"] = machine()
    result["seconds"] = time.perf_counter() - started
    path = write_roofline(result, Path(args.out), before)
    log(f"report: {path} ({result['seconds'] / 60:.1f} min)")
    print(json.dumps(result, default=str) if args.json else path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
