"""`dlm demo`, the main job: an AR model on the bundled Shakespeare, block diffusion adapted from it
(the setting of the quality-against-speed frontier that came nearest to AR quality at more than one
token per pass: draft-and-verify decoding), and masked diffusion adapted from it for infilling; all
three trained once and cached. It reports their validation bits/char, generates with the adapted
model while drawing the canvas live, races it against the AR model's own decoding, infills, and
ends with a table of what it measured."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from dlm import __version__
from dlm.errors import DlmError
from dlm.sampling import SAMPLERS, Canvas, infill_canvas, parse_template
from dlm.training.cached import ensure_trained
from dlm.training.checkpoint import Checkpoint, read_config, resolve
from dlm.training.config import TrainConfig

DEMO_MINUTES = 3.5  # the AR model gets 70% of it, each adaptation 15% (about a fifth of the AR model's minutes)
AR_SHARE = 0.7
PROMPT = "KING RICHARD.\n"
GENERATE_LENGTH = 100
INFILL = "This royal throne of <fill:5>, this scepter'd isle,\nThis earth of majesty, this <fill:4> of Mars,"
# The frontier's best setting (README, "Faster than AR?"): drafts of a block per pass, verified by the model's
# own AR stream, so the text is the AR stream's at 1 to block-size tokens per forward pass.
BEST = {"sampler": "speculative", "knobs": {}}


def cache_dir(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache).expanduser()
    from dlm.cli import cache_home

    return cache_home() / f"demo-{__version__}"


def configs(run_dir: Path, minutes: float, compile: bool = True, eval_chunks: int = 0) -> dict[str, TrainConfig]:
    """The demo's three runs: AR, block diffusion and masked diffusion adapted from it (the frontier's
    recipe: logit shift, causal clean stream, attention annealing, the clean stream's AR loss)."""
    run = dict(compile=compile, final_eval_chunks=eval_chunks)
    ar = TrainConfig(out=str(run_dir / "ar"), process="ar", minutes=AR_SHARE * minutes, **run)
    adapt = dict(**run, init_from=ar.out, logit_shift=True, anneal_steps=40, minutes=0.15 * minutes, lr=1e-3,
                 warmup_steps=10, ema_decay=0.0)
    return {"ar": ar,
            "block": TrainConfig(out=str(run_dir / "block"), process="block", block_size=4, clean_attention="causal",
                                 ar_loss_weight=0.5, **adapt),
            "masked": TrainConfig(out=str(run_dir / "masked"), process="masked", **adapt)}


def cached_minutes(run_dir: Path) -> float | None:
    """The budget the cached demo was trained with: without --minutes, any cached demo is reused."""
    try:
        # rounded: x * 0.7 / 0.7 need not be x in floating point, and the configs must match exactly
        return round(float(read_config(resolve(run_dir / "ar"))["train"]["minutes"]) / AR_SHARE, 9) or None
    except (DlmError, KeyError, TypeError, ValueError):
        return None


def ensure_models(args: argparse.Namespace, console) -> tuple[dict[str, Checkpoint], bool]:
    """The demo's checkpoints, finished: reused when cached with the same settings, resumed when a
    demo was cut short, else trained (see training/cached.py); -> (checkpoints, whether all were cached)."""
    run_dir = cache_dir(args)
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    minutes = args.minutes if args.minutes is not None else cached_minutes(run_dir) or DEMO_MINUTES
    models, cached = {}, True
    for name, config in configs(run_dir, minutes, compile=args.compile, eval_chunks=args.eval_chunks or 0).items():
        ckpt, how = ensure_trained(config, progress=not args.json, log=console.print, what=f"demo {name} model")
        models[name], cached = ckpt, cached and how == "cached"
    if cached:
        console.print("(--retrain trains them afresh)")
    return models, cached


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dlm.cli.terminal import LiveView

    console = Console(file=sys.stderr if args.json else sys.stdout)
    started = time.perf_counter()
    console.rule("[bold]dlm demo: an AR model, and diffusion models adapted from it, on Shakespeare")
    models, cached = ensure_models(args, console)  # on the device they trained on: a GPU when there is one
    ar, block, masked = models["ar"], models["block"], models["masked"]
    tok = block.tokenizer
    device = next(block.model.parameters()).device
    for name, ckpt in models.items():
        m = ckpt.metrics
        console.print(f"{name:6s} validation: [bold]{m['val_bits_per_char']:.3f} ± {m['val_stderr']:.3f} bits/char[/] "
                      f"({ckpt.process.bound}; held-out Henry VI Part 1 and Richard II)")
    live = sys.stdout.isatty() and not args.json

    def sample(ckpt: Checkpoint, sampler: str, canvas: Canvas, title: str | None, delay: float = 0.0, **knobs):
        """Sample once with the live view (slowed down to be watchable; not when `title` is None), then
        again with the same seed and no drawing, for the speed figures (the same tokens: samplers are
        deterministic given their generator)."""
        def call(callback=None):
            return SAMPLERS[sampler](ckpt.model, ckpt.process, canvas, steps=canvas.editable.sum(1).max().item(),
                                     generator=torch.Generator(device=device).manual_seed(0), callback=callback,
                                     **knobs)
        if live and title is not None:
            with LiveView(tok, canvas, delay=delay, title=title) as view:
                call(view)
        return call()

    canvas = Canvas.for_generation([tok.encode(PROMPT)], GENERATE_LENGTH, fill_id=tok.mask_id, pad_id=tok.pad_id,
                                   device=device)
    console.rule(f"generation: {GENERATE_LENGTH} characters, block diffusion adapted from AR, a block drafted and "
                 f"verified per pass")
    gen = sample(block, BEST["sampler"], canvas, "draft and verify", 0.08, **BEST["knobs"])
    generated_text = PROMPT + tok.decode(canvas.generated(gen.tokens, 0))
    if not live:
        console.print(generated_text, markup=False, highlight=False)
    race = sample(ar, "autoregressive", canvas, None)  # the AR model's own KV-cache decoding, not drawn

    infill = infill_canvas(parse_template(INFILL), tok, device=device)
    spans = sum(p for p in infill.pieces if isinstance(p, int))
    console.rule(f"infilling: {spans} characters in two spans by masked diffusion adapted from AR, the rest kept "
                 f"byte for byte")
    fill = sample(masked, "ancestral", infill.canvas, "infill", 0.06)
    infilled = infill.assemble(fill.tokens, tok)
    if not live:
        console.print(infilled, markup=False, highlight=False)

    from dlm.cli import cache_home
    from dlm.cli.puzzle import show_puzzle

    puzzle = show_puzzle(console, cache_home() / f"bench-reasoning-{__version__}", live=live)  # reuses, never trains

    summary = {"parameters": block.model.num_parameters(),
               "bits_per_char": {name: ckpt.metrics["val_bits_per_char"] for name, ckpt in models.items()},
               "stderr": {name: ckpt.metrics["val_stderr"] for name, ckpt in models.items()},
               "generate_nfe": gen.nfe, "generate_tokens_per_second": GENERATE_LENGTH / gen.seconds,
               "tokens_per_forward": gen.tokens_per_forward, "ar_tokens_per_second": GENERATE_LENGTH / race.seconds,
               "speedup_over_ar": race.seconds / gen.seconds, "infill_nfe": fill.nfe, "cached": cached,
               "sample": generated_text, "infill": infilled, "puzzle": puzzle,
               "seconds": time.perf_counter() - started}
    table = Table(title="dlm demo", show_lines=False)
    for column in ("parameters", "val bits/char (AR / block / masked)", "generate NFE", "tokens/forward",
                   "tokens/s", "AR tokens/s", "x AR"):
        table.add_column(column, justify="right")
    bpc = summary["bits_per_char"]
    table.add_row(f"{summary['parameters'] / 1e6:.2f}M", f"{bpc['ar']:.3f} / {bpc['block']:.3f} / {bpc['masked']:.3f}",
                  str(gen.nfe), f"{gen.tokens_per_forward:.2f}", f"{summary['generate_tokens_per_second']:,.0f}",
                  f"{summary['ar_tokens_per_second']:,.0f}", f"{summary['speedup_over_ar']:.2f}")
    console.print(table)
    console.print(f"done in {summary['seconds']:.0f} s. Next: dlm generate {block.path.parent} --prompt 'KING RICHARD.' "
                  f"--length 200 --sampler speculative")
    if args.json:
        from dlm.cli import emit_json

        emit_json(summary)
    return 0
