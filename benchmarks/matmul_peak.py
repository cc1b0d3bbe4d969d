"""Matrix-product peak of this machine, in GFLOP/s, for bf16 and fp32 (CPU, and CUDA if present).

What is measured: C = A @ B with A (m x k) and B (k x n), counted as 2*m*k*n floating-point
operations, for square sizes 1024, 2048, 4096 and for products shaped like those of the
transformer presets (tokens x d_model @ d_model x width). Each product allocates its output, as
training does, and the allocator is tuned first with dlm.training.performance.tune_allocator():
with glibc's default mmap threshold every large output is a fresh mmap that page-faults in, and
a (16384 x 384) @ (384 x 1152) bf16 product drops from ~3.3 to ~0.7 TFLOP/s on our 2-core AMX CPU.

How: per shape, warm-up calls for ~0.2 s, then three timed batches of repeated calls that
together last about --seconds (default 1.0 s, at least one call per batch); the figure reported is
the best batch, which is the least disturbed by other processes on the machine. The "peak" of a
dtype is the best figure over all its shapes.

    python benchmarks/matmul_peak.py            # table
    python benchmarks/matmul_peak.py --json     # one JSON object

Other scripts import measure_peak() from here (benchmarks/ is not a package; put this folder on
sys.path first). Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from dlm.training.performance import bf16_is_fast, tune_allocator

# (m, k, n): C(m x n) = A(m x k) @ B(k x n)
SQUARE_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]
TRANSFORMER_SHAPES = [
    (16384, 384, 1152),  # small preset, 64 x 256 tokens: qkv projection
    (8192, 384, 2048),  # small preset, 32 x 256 tokens: SwiGLU gate+up
    (8192, 1024, 384),  # small preset, 32 x 256 tokens: SwiGLU down
    (8192, 128, 384),  # tiny preset, 32 x 256 tokens: qkv projection
]
DEFAULT_SHAPES = SQUARE_SHAPES + TRANSFORMER_SHAPES
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, seconds: float, *, warmup_seconds: float = 0.2, batches: int = 3) -> float:
    """Seconds per call of fn(): best mean over `batches` timed batches lasting ~`seconds` in all."""
    _sync(device)
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < warmup_seconds:
        fn()
        _sync(device)
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    reps = max(1, math.ceil(seconds / batches / per_call))
    best = math.inf
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def measure_shape(m: int, k: int, n: int, dtype: torch.dtype, device: str | torch.device = "cpu",
                  seconds: float = 1.0) -> float:
    """GFLOP/s of (m x k) @ (k x n) in `dtype` on `device` (2*m*k*n flops per product)."""
    tune_allocator()
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        sec = time_call(lambda: a @ b, device, seconds)
    return 2.0 * m * k * n / sec / 1e9


def measure_shapes(dtype: torch.dtype, device: str | torch.device = "cpu", shapes=None,
                   seconds: float = 1.0) -> list[dict]:
    """One record {m, k, n, dtype, device, gflops} per shape."""
    names = {v: k for k, v in DTYPES.items()}
    rows = []
    for m, k, n in shapes or DEFAULT_SHAPES:
        gflops = measure_shape(m, k, n, dtype, device, seconds)
        rows.append({"m": m, "k": k, "n": n, "dtype": names.get(dtype, str(dtype)), "device": str(device),
                     "gflops": round(gflops, 1)})
    return rows


def measure_peak(dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", shapes=None,
                 seconds: float = 1.0) -> float:
    """Best GFLOP/s over `shapes` (default: squares 1024-4096 and transformer-like products)."""
    return max(r["gflops"] for r in measure_shapes(dtype, device, shapes, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per shape (default 1.0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the CPU, and CUDA too when a GPU is present")
    args = parser.parse_args()

    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")

    started = time.perf_counter()
    rows, peaks = [], {}
    for device in devices:
        for name, dtype in DTYPES.items():
            measured = measure_shapes(dtype, device, seconds=args.seconds)
            rows += measured
            peaks[(device, name)] = max(r["gflops"] for r in measured)
            if not args.json:
                for r in measured:
                    shape = f"({r['m']}x{r['k']}) @ ({r['k']}x{r['n']})"
                    print(f"{device:5s} {name:5s} {shape:28s} {r['gflops']:10.1f} GFLOP/s", flush=True)

    result = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16_units": bf16_is_fast(torch.device("cpu")),  # AMX or AVX512-BF16
        "bf16_peak_gflops": peaks.get(("cpu", "bf16")),
        "fp32_peak_gflops": peaks.get(("cpu", "fp32")),
        "shapes": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if "cuda" in devices:
        result["cuda_device"] = torch.cuda.get_device_name()
        result["cuda_bf16_peak_gflops"] = peaks[("cuda", "bf16")]
        result["cuda_fp32_peak_gflops"] = peaks[("cuda", "fp32")]
    if args.json:
        print(json.dumps(result))
        return
    print(f"\n{result['cpu']}, {result['threads']} threads, torch {result['torch']} "
          f"({result['seconds']} s)")
    for (device, name), peak in peaks.items():
        print(f"peak {device} {name}: {peak:10.1f} GFLOP/s")


if __name__ == "__main__":
    main()
