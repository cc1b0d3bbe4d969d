"""`dlm demo`, the main job: train the default model on the bundled Shakespeare (or reuse the
cached one), report its validation bits/char, then generate and infill with the denoising
drawn live, and end with a table of what it measured."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from dlm import __version__
from dlm.errors import DlmError
from dlm.sampling import Canvas, infill_canvas, parse_template, sample_ancestral
from dlm.training.cached import ensure_trained
from dlm.training.checkpoint import Checkpoint, read_config, resolve
from dlm.training.config import TrainConfig

DEMO_MINUTES = 3.5  # training budget: with data preparation and evaluation the cold demo takes ~4 minutes
PROMPT = "KING RICHARD.\n"
GENERATE_LENGTH, GENERATE_STEPS = 100, 50  # two tokens per step, in the model's 128-token context
INFILL = "This royal throne of <fill:5>, this scepter'd isle,\nThis earth of majesty, this <fill:4> of Mars,"


def cache_dir(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache).expanduser()
    from dlm.cli import cache_home

    return cache_home() / f"demo-{__version__}"


def ensure_model(args: argparse.Namespace, console) -> tuple[Checkpoint, bool]:
    """The demo checkpoint, finished: reused when cached with the same settings, resumed when a
    demo was cut short, else trained (see training/cached.py); -> (checkpoint, whether cached)."""
    run_dir = cache_dir(args)
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    minutes = args.minutes if args.minutes is not None else cached_minutes(run_dir) or DEMO_MINUTES
    ckpt, how = ensure_trained(TrainConfig(out=str(run_dir), minutes=minutes), progress=not args.json,
                               log=console.print, what="demo model")
    if how == "cached":
        console.print("(--retrain trains it afresh)")
    return ckpt, how == "cached"


def cached_minutes(run_dir: Path) -> float | None:
    """The budget the cached demo was trained with: without --minutes, any cached demo is reused."""
    try:
        return float(read_config(resolve(run_dir))["train"]["minutes"]) or None
    except (DlmError, KeyError, TypeError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dlm.cli.terminal import LiveView

    console = Console(file=sys.stderr if args.json else sys.stdout)
    started = time.perf_counter()
    console.rule("[bold]dlm demo: a masked diffusion language model on Shakespeare")
    ckpt, cached = ensure_model(args, console)  # on the device it trained on: a GPU when there is one
    run_dir = ckpt.path.parent
    train_tps = float(ckpt.metrics.get("train_tokens_per_second", float("nan")))  # of the invocation that finished it
    device = next(ckpt.model.parameters()).device
    tok, m = ckpt.tokenizer, ckpt.metrics
    console.print(f"validation: [bold]{m['val_bits_per_char']:.3f} ± {m['val_stderr']:.3f} bits/char[/] "
                  f"(NELBO bound, {m['val_chunks']} held-out chunks of Henry VI Part 1 and Richard II)")

    live = sys.stdout.isatty() and not args.json

    def denoise(canvas: Canvas, steps: int, title: str, delay: float):
        """Sample once with the live view (slowed down to be watchable), then again with the same
        seed and no drawing, for the speed figures (the same tokens: samplers are deterministic
        given their generator)."""
        if live:
            with LiveView(tok, canvas, delay=delay, title=title) as view:
                sample_ancestral(ckpt.model, ckpt.process, canvas, steps=steps,
                                 generator=torch.Generator(device=device).manual_seed(0), callback=view)
        return sample_ancestral(ckpt.model, ckpt.process, canvas, steps=steps,
                                generator=torch.Generator(device=device).manual_seed(0))

    canvas = Canvas.for_generation([tok.encode(PROMPT)], GENERATE_LENGTH, fill_id=tok.mask_id, pad_id=tok.pad_id,
                                   device=device)
    console.rule(f"generation: {GENERATE_LENGTH} characters in {GENERATE_STEPS} steps (ancestral sampler)")
    gen = denoise(canvas, GENERATE_STEPS, "generate", 0.04)
    generated_text = PROMPT + tok.decode(canvas.generated(gen.tokens, 0))
    if not live:
        console.print(generated_text, markup=False, highlight=False)

    infill = infill_canvas(parse_template(INFILL), tok, device=device)
    spans = sum(p for p in infill.pieces if isinstance(p, int))
    console.rule(f"infilling: {spans} characters in two spans, the rest kept byte for byte")
    fill = denoise(infill.canvas, spans, "infill", 0.06)
    infilled = infill.assemble(fill.tokens, tok)
    if not live:
        console.print(infilled, markup=False, highlight=False)

    summary = {"parameters": ckpt.model.num_parameters(), "train_tokens_per_second": train_tps,
               "bits_per_char": m["val_bits_per_char"], "stderr": m["val_stderr"],
               "generate_nfe": gen.nfe, "generate_tokens_per_second": GENERATE_LENGTH / gen.seconds,
               "tokens_per_forward": gen.tokens_per_forward, "infill_nfe": fill.nfe, "cached": cached,
               "sample": generated_text, "infill": infilled, "seconds": time.perf_counter() - started}
    table = Table(title="dlm demo", show_lines=False)
    for column in ("parameters", "train tokens/s", "val bits/char", "generate NFE", "generate tokens/s",
                   "tokens/forward"):
        table.add_column(column, justify="right")
    table.add_row(f"{summary['parameters'] / 1e6:.2f}M", f"{train_tps:,.0f}",
                  f"{summary['bits_per_char']:.3f} ± {summary['stderr']:.3f}", str(gen.nfe),
                  f"{summary['generate_tokens_per_second']:,.0f}", f"{gen.tokens_per_forward:.1f}")
    console.print(table)
    console.print(f"done in {summary['seconds']:.0f} s. Next: dlm generate {run_dir} --prompt 'KING RICHARD.' "
                  f"--length 200 --steps 100")
    if args.json:
        from dlm.cli import emit_json

        emit_json(summary)
    return 0

