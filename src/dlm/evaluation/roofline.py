"""The roofline of dlm's steps: each decoding and training step's time beside the least time the
hardware allows for it (Williams, Waterman and Patterson, 2009):

    limit = max(FLOPs / peak, bytes / bandwidth),   ratio = seconds / limit  (1 = at the hardware's limit)

Decoding steps are measured inside the real samplers, not as bare forward calls: a hook on the
model records every forward pass (batch, query tokens, cached keys, start time), a step is the
interval from one pass to the next (so the sampler's own work between passes counts), and the
reported time is the median over the passes of that kind. Each pass's limit is counted from its
shape:

    FLOPs = B * (2 * n * N_matmul + 4 * layers * n * keys * d_model)
    bytes = weights + B * layers * 2 * (keys + n) * kv_dim * element size

with n the pass's query tokens, keys = cached + n the keys it attends to, N_matmul the weights of
every matrix product (block Linears and the tied head, `matmul_params`). The bytes are a lower
bound: each weight read once, the KV cache read once and the new keys written once; activations
are left out. A training step counts 6 * N_matmul + 12 * layers * L * d_model FLOPs per token
(`flops_per_token`) and reads and writes each parameter's weight, gradient and two optimizer
moments once (8 x 4 bytes per parameter).

Beside the limit, each decoding row has a measured floor: the seconds of the pass's matrix
products alone (`matmul_floor`), every weight product of the model run once in the pass's order on
inputs of its shape, as this machine's BLAS does them. The limit assumes products at peak and
weights streamed at copy bandwidth; thin products (a few rows) fall far short of both on a CPU
(measured: `small`'s weights stream at about 10 GB/s at one row and 4-5 GB/s at 8-32 rows, against
28 GB/s of copy), so `seconds / matmul_seconds` says how much of a step is dlm's own work
(attention, norms, the sampler) and the rest is what the matrix library leaves.

The peak and bandwidth come from the caller (benchmarks/roofline.py measures them on the machine),
for the precision the steps run in: bf16 where the hardware has bf16 matrix units, else fp32.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from dlm.models import Transformer, preset_config
from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS
from dlm.sampling.canvas import Canvas
from dlm.training.optim import build_optimizer
from dlm.training.performance import autocast, compile_blocks, resolve_dtype, resolve_precision

STEPS = ("ar_decode", "masked_dual_cache", "masked_full", "block_cached", "train")
VOCAB = 96  # about the character vocabulary of the bundled corpora; weights and tokens are random
SPECIALS = {"mask": VOCAB - 1, "pad": VOCAB - 2, "bos": VOCAB - 3, "eos": VOCAB - 4}


def matmul_weights(model: Transformer) -> list[torch.Tensor]:
    """The weights used in a matrix product for every token, in the forward's order: the Linears
    (not the per-sequence time conditioning), then the output head, which a tied model reads from the
    embedding matrix (counted once, as a matmul)."""
    weights = [module.weight for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and "modulation" not in name and "time_mlp" not in name]
    if model.head is None:  # tied; an untied head is one of the Linears above
        weights.append(model.embed.weight)
    return weights


def matmul_params(model: Transformer) -> int:
    """Weights used in a matrix product for every token: block Linears + the (tied) output head."""
    return sum(w.numel() for w in matmul_weights(model))


def flops_per_token(model: Transformer, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward: 6 per matmul weight, and 12 * L * d_model per
    layer for bidirectional attention (Q K^T and A V, 2 * L * d_model each forward, x3 with backward)."""
    cfg = model.config
    return 6.0 * matmul_params(model) + 12.0 * cfg.n_layers * seq_len * cfg.d_model


@dataclass(frozen=True)
class Pass:
    """One forward pass: batch, query tokens, cached keys it also attends to, seconds until the next."""
    batch: int
    queries: int
    cached: int
    seconds: float


@dataclass
class PassLog:
    """Records every forward pass of a model while in a `with` block."""
    model: Transformer
    starts: list = field(default_factory=list)  # (time, batch, queries, cached)

    def __enter__(self) -> "PassLog":
        def before(module, args, kwargs):
            x = args[0] if args else kwargs["x_t"]
            cache = kwargs.get("cache")
            self.starts.append((time.perf_counter(), x.shape[0], x.shape[1], len(cache) if cache is not None else 0))

        self.handle = self.model.register_forward_pre_hook(before, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.ended = time.perf_counter()
        self.handle.remove()

    def passes(self) -> list[Pass]:
        ends = [s[0] for s in self.starts[1:]] + [self.ended]
        return [Pass(b, n, c, end - start) for (start, b, n, c), end in zip(self.starts, ends)]


@dataclass(frozen=True)
class Hardware:
    peak_flops: float  # matrix-product FLOP/s in the steps' precision
    bandwidth: float  # bytes/s, read + write, of a large copy
    dtype: torch.dtype  # the precision decoding runs in


def pass_limit(model: Transformer, p: Pass, hw: Hardware) -> float:
    """The least seconds a forward pass of this shape can take on `hw` (the module docstring's counts)."""
    cfg = model.config
    keys = p.cached + p.queries
    flops = p.batch * (2.0 * p.queries * matmul_params(model) + 4.0 * cfg.n_layers * p.queries * keys * cfg.d_model)
    size = torch.finfo(hw.dtype).bits // 8
    kv_dim = cfg.kv_heads * (cfg.d_model // cfg.n_heads)
    weights = sum(t.numel() for t in model.parameters()) * size
    kv = p.batch * cfg.n_layers * 2 * (keys + p.queries) * kv_dim * size
    return max(flops / hw.peak_flops, (weights + kv) / hw.bandwidth)


def matmul_floor(model: Transformer, p: Pass, *, repeats: int = 7) -> float:
    """Median seconds of a pass's weight products alone: each of `matmul_weights`, in order, applied
    to a (batch * queries, in_features) input, in the weights' dtype."""
    weights = matmul_weights(model)
    rows = p.batch * p.queries
    gen = torch.Generator(device=weights[0].device).manual_seed(0)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=gen, device=w.device, dtype=w.dtype)
              for w in weights}  # (rows, in) per input width

    def run() -> None:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)  # (rows, out)

    times = []
    with torch.no_grad():
        run()
        for _ in range(repeats):
            if weights[0].device.type == "cuda":
                torch.cuda.synchronize(weights[0].device)
            start = time.perf_counter()
            run()
            if weights[0].device.type == "cuda":
                torch.cuda.synchronize(weights[0].device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_limit(model: Transformer, batch: int, seq_len: int, hw: Hardware) -> float:
    flops = flops_per_token(model, seq_len) * batch * seq_len
    moved = 8 * 4 * sum(t.numel() for t in model.parameters())
    return max(flops / hw.peak_flops, moved / hw.bandwidth)


# -- the steps ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The canvas every decoding step works on: a prompt, then `generate` tokens, blocks of `block`."""
    prompt: int = 128
    generate: int = 128
    block: int = 32
    steps_per_block: int = 4  # diffusion passes per block (a pass's cost does not depend on how many it commits)
    train_seq_len: int = 256


def process_named(process_name: str, **settings):
    cls = PROCESSES[process_name]
    return cls.from_config({**getattr(cls, "TRAINING_DEFAULTS", {}), "name": process_name, **settings},
                           vocab_size=VOCAB, special_ids=SPECIALS)


def build(preset: str, process_name: str, shape: Shape, device: torch.device, **process_settings):
    """A model with random weights for `process_name` (its attention, shift, ...) and the process."""
    process = process_named(process_name, **process_settings)
    torch.manual_seed(0)
    cfg = preset_config(preset, vocab_size=VOCAB, max_len=shape.prompt + shape.generate + 1,
                        **process.model_options())
    model = Transformer(cfg).to(device=device, dtype=resolve_dtype("auto", device)).eval()
    return model, process


def canvas_for(batch: int, shape: Shape, device: torch.device) -> Canvas:
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, VOCAB - 4, (batch, shape.prompt), generator=g).tolist()
    return Canvas.for_generation(prompts, shape.generate, fill_id=SPECIALS["mask"], pad_id=SPECIALS["pad"],
                                 device=device)


# each decoding step: (process, its settings, sampler, sampler keywords, which passes are the step)
DECODING = {
    "ar_decode": ("ar", {}, "autoregressive", {},
                  lambda p, s: p.queries == 1 and p.cached > 0),
    "masked_dual_cache": ("masked", {}, "confidence", {"cache": "dual", "temperature": 0.0, "block_length": "block"},
                          lambda p, s: p.queries == s.block and p.cached > 0),
    "masked_full": ("masked", {}, "confidence", {"cache": "none", "temperature": 0.0, "block_length": "block"},
                    lambda p, s: p.queries == s.prompt + s.generate),
    "block_cached": ("block", {"block_size": "block"}, "block", {},
                     lambda p, s: p.cached > 0),
}


def decoding_passes(step: str, preset: str, batch: int, shape: Shape, device: torch.device) -> tuple[Transformer,
                                                                                                      list[Pass]]:
    """Run the step's sampler once over the shape's canvas; -> the model and the passes of that step."""
    process_name, settings, sampler, knobs, is_step = DECODING[step]
    settings = {k: getattr(shape, v) for k, v in settings.items()}
    model, process = build(preset, process_name, shape, device, **settings)
    canvas = canvas_for(batch, shape, device)
    knobs = {k: getattr(shape, v) if k == "block_length" else v for k, v in knobs.items()}  # LLaDA blocks of the shape
    generator = torch.Generator(device=device).manual_seed(0)
    steps = shape.generate // shape.block * shape.steps_per_block  # the AR sampler takes one pass per token
    with PassLog(model) as log:  # the median over the passes leaves out the first passes' allocations
        SAMPLERS[sampler](model, process, canvas, steps=steps, generator=generator, **knobs)
    passes = [p for p in log.passes() if is_step(p, shape)]
    if not passes:
        raise RuntimeError(f"the {sampler} sampler made no pass of the {step} kind")
    # the cached passes of a block sampler: its most common query length (the noisy block)
    common = Counter(p.queries for p in passes).most_common(1)[0][0]
    return model, [p for p in passes if p.queries == common]


@functools.lru_cache(maxsize=1)
def trainer(preset: str, shape: Shape, device: torch.device, compile: bool):
    """A masked-diffusion model, its process and optimizer (compiled once for every batch size)."""
    process = process_named("masked")
    torch.manual_seed(0)
    model = Transformer(preset_config(preset, vocab_size=VOCAB, max_len=shape.train_seq_len)).to(device)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    if compile:
        compile_blocks(model)
    return model, process, optimizer


def train_seconds(preset: str, batch: int, shape: Shape, device: torch.device, *, compile: bool, warmup: int,
                  steps: int) -> tuple[Transformer, float]:
    """Median seconds of a masked-diffusion optimizer step as the training loop takes it (autocast
    in the hardware's precision, backward, clipping, the default optimizer), on random tokens."""
    model, process, optimizer = trainer(preset, shape, device, compile)
    precision = resolve_precision("auto", device)
    data = torch.Generator().manual_seed(0)
    noise = torch.Generator(device=device).manual_seed(1)
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        x0 = torch.randint(0, VOCAB - 4, (batch, shape.train_seq_len), generator=data).to(device)
        with autocast(precision, device):
            loss = process.loss(model, x0, generator=noise).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return model, statistics.median(times)


def measure(presets, batches, hw: Hardware, *, shape: Shape = Shape(), steps=STEPS, device=torch.device("cpu"),
            compile: bool = True, train_warmup: int = 2, train_steps: int = 3, log=lambda message: None) -> dict:
    """The roofline table: one row per (preset, batch, step), and each preset's training fraction of peak."""
    rows, train_fraction = [], {}
    for preset in presets:
        for batch in batches:
            for step in steps:
                if step == "train":
                    model, seconds = train_seconds(preset, batch, shape, device, compile=compile,
                                                   warmup=train_warmup, steps=train_steps)
                    limit = train_limit(model, batch, shape.train_seq_len, hw)
                    flops = flops_per_token(model, shape.train_seq_len) * batch * shape.train_seq_len
                    train_fraction[preset] = max(train_fraction.get(preset, 0.0), flops / seconds / hw.peak_flops)
                    queries, extra = shape.train_seq_len, {}
                else:
                    model, passes = decoding_passes(step, preset, batch, shape, device)
                    seconds = statistics.median(p.seconds for p in passes)
                    limit = statistics.median(pass_limit(model, p, hw) for p in passes)
                    queries = passes[0].queries
                    floor = matmul_floor(model, passes[len(passes) // 2])  # its weight products alone
                    extra = {"matmul_seconds": floor, "matmul_ratio": seconds / floor}
                rows.append({"preset": preset, "batch": batch, "step": step, "seconds": seconds,
                             "limit_seconds": limit, "ratio": seconds / limit, "queries": queries,
                             "parameters": model.num_parameters(), **extra})
                floor_text = f"  matmuls {floor * 1e3:8.2f} ms x{seconds / floor:.1f}" if extra else ""
                log(f"{preset:>5} B={batch:<3} {step:<18} {seconds * 1e3:9.2f} ms  limit {limit * 1e3:8.3f} ms  "
                    f"x{seconds / limit:.1f}{floor_text}")
    return {"peak_flops": hw.peak_flops, "bandwidth": hw.bandwidth, "dtype": str(hw.dtype).replace("torch.", ""),
            "shape": shape.__dict__, "rows": rows, "train_fraction_of_peak": train_fraction}
