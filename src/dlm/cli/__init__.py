"""The `dlm` command: train, distill, eval, generate, infill, bench, demo, serve, lm-eval.

Every command takes --json for one machine-readable JSON object on stdout; messages and
progress go to stderr. Bad input ends with a one-line message and exit status 1 (2 for
malformed command lines, 130 for an interrupt), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from dlm import __version__
from dlm.errors import DlmError

COMMANDS = ("train", "distill", "eval", "generate", "infill", "bench", "demo", "serve", "lm-eval")
DTYPES = ("float32", "bfloat16", "float16", "auto")  # what --dtype takes (performance.WEIGHT_DTYPES, kept
# here too so that building the parser does not import torch)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    from dlm.sampling.registry import RECORDS, all_knobs

    p.add_argument("checkpoint", metavar="DIR", help="a run folder or checkpoint folder written by `dlm train`, or a "
                   "LLaDA or Dream folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: one per token)")
    p.add_argument("--sampler", choices=sorted(RECORDS), default=None,
                   help="default: the process's own (ancestral for masked diffusion)")
    p.add_argument("--temperature", type=non_negative_float, default=None,
                   help="0 = greedy; default: 0 for confidence (as LLaDA), 1 for ancestral")
    for name, knob in all_knobs().items():  # every sampler knob, from the samplers' records
        takers = ", ".join(r.name for r in RECORDS.values() if knob in r.knobs)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=knob.kind, choices=knob.choices, default=None,
                       help=f"{takers}: {knob.help}")
    p.add_argument("--cfg", type=non_negative_float, default=0.0, metavar="W",
                   help="classifier-free guidance scale (0 = none): logits_u + (W + 1)(logits_c - logits_u), the "
                        "unconditional pass with the prompt masked; for models trained with condition dropout")
    p.add_argument("--ban", default=None, metavar="TEXT",
                   help="never write these tokens (for a character model: these characters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights' precision (default float32, exact; bfloat16 halves the memory of a large model; "
                        "auto: bfloat16 where the CPU or GPU has bf16 matrix units, else float32)")
    p.add_argument("--no-live", action="store_true", help="do not draw the denoising on the terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm", description="Diffusion language models: train, evaluate, "
                                     "generate and infill text by iterative denoising.")
    parser.add_argument("--version", action="version", version=f"dlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from dlm.cli.train import add_arguments as train_arguments
    train_arguments(sub.add_parser("train", help="train a model (or resume a run)",
                                   description="Train a diffusion LM on a corpus; checkpoints go to --out."))

    from dlm.cli.distill import add_arguments as distill_arguments
    distill_arguments(sub.add_parser("distill", help="self-distillation through time: a student that samples in "
                                                     "half the steps, per round",
                                     description="Distil a masked or block diffusion checkpoint (SDTT): each round "
                                                 "the student learns to take in one step what the teacher takes in "
                                                 "two, then becomes the teacher and the step count halves. Same "
                                                 "checkpoints, resume and --minutes budget as `dlm train`."))

    p = sub.add_parser("eval", help="validation bits/char (the likelihood bound of its process) of a checkpoint",
                       description="Monte-Carlo NELBO of a checkpoint on held-out text, in bits per character "
                                   "and per token, with its standard error.")
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--data", default=None, help="corpus (default: the one the model was trained on)")
    p.add_argument("--chunks", type=int, default=0, help="validation chunks to use, evenly spaced (0 = all)")
    p.add_argument("--samples", type=positive_int, default=4, help="Monte-Carlo time samples per chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("generate", help="generate text after a prompt",
                       description="Generate text by denoising a canvas of masked positions after the prompt.")
    add_sampling_arguments(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue; repeat for a batch of prompts (leave out for unconditional text)")
    p.add_argument("--length", type=int, default=64,
                   help="tokens to generate at most (default 64); the text ends at an end-of-text token")
    p.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="end the text before the first occurrence of this string (repeatable)")

    p = sub.add_parser("infill", help="fill marked spans inside a text, or rewrite character ranges of it",
                       description="Regenerate only the spans marked <fill:N> (N tokens each), or with --span "
                                   "the given character ranges of a plain text; all other text comes back byte "
                                   "for byte. A span of unknown length (<fill:A-B>, or --span START:END:A-B) is "
                                   "filled at several lengths from A to B and the likeliest text under the model "
                                   "is kept.")
    add_sampling_arguments(p)
    p.add_argument("--text", required=True, help="e.g. 'Friends, Romans, <fill:12>, lend me your ears'")
    p.add_argument("--span", action="append", default=None, metavar="START:END[:N|:A-B]",
                   help="rewrite characters START..END-1 of --text (a plain text, no <fill:N>), into N tokens "
                        "(default: as many as it has) or between A and B tokens; repeatable")
    p.add_argument("--lengths", type=positive_int, default=6, metavar="K",
                   help="for a span of unknown length: how many lengths from A to B to try (default 6)")

    p = sub.add_parser("bench", help="diffusion against autoregressive, measured side by side: report + plots",
                       description="Trains (or reuses from --cache) the masked, uniform, block and gaussian "
                                   "processes and the AR baseline at one preset and budget, an AR judge and two "
                                   "BPE models of Python, then measures likelihood, judged quality and "
                                   "diversity, quality against steps and parallelism, speed against length, "
                                   "infilling and long outputs; writes report.md, report.json and PNG plots.")
    p.add_argument("--suite", choices=["quick", "full", "reasoning", "reasoning-quick", "epochs", "epochs-quick"],
                   default="quick",
                   help="quick: tiny models, about 12 minutes on 2 cores; full: longer training, more samples; "
                        "reasoning(-quick): Sudoku, Countdown, path planning solved by masked diffusion and AR; "
                        "epochs(-quick): a small corpus repeated for many epochs (see docs/architecture.md)")
    p.add_argument("--out", default="bench", help="folder for report.md, report.json and the plots")
    p.add_argument("--cache", default=None, help="where the trained models live (default ~/.cache/dlm/bench-SUITE)")
    p.add_argument("--minutes", type=non_negative_float, default=None,
                   help="override the training budget of each compared model")
    p.add_argument("--task", action="append", default=None, metavar="TASK",
                   help="reasoning suites: run only this task (sudoku6, countdown, paths: the suite's setting) or "
                        "a task spec as --data takes it (e.g. sudoku:givens=30 for 9x9); repeatable")
    p.add_argument("--json", action="store_true", help="print the report's path and summary as JSON")

    p = sub.add_parser("demo", help="train (or reuse) the demo models, then sample and infill live",
                       description="The main job: trains a tiny AR model on the bundled Shakespeare, then block "
                                   "and masked diffusion adapted from it, for a few minutes in all (cached); "
                                   "reports bits/char, generates by draft and verify against the AR model's "
                                   "speed, and infills with the masked model.")
    p.add_argument("--minutes", type=non_negative_float, default=None, help="training budget (default 3.5)")
    p.add_argument("--cache", default=None, help="where the demo model lives (default ~/.cache/dlm/demo)")
    p.add_argument("--retrain", action="store_true", help="ignore a cached model")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="train without torch.compile (starts faster; each step is slower)")
    p.add_argument("--eval-chunks", type=positive_int, default=None,
                   help="validation chunks for the reported bits/char (default: all 2,031)")
    p.add_argument("--json", action="store_true")

    from dlm.cli.serve import add_arguments as serve_arguments
    serve_arguments(sub.add_parser("serve", help="answer HTTP requests: OpenAI-style completions, infilling, a web page",
                                   description="Serve a checkpoint over HTTP: POST /v1/completions (OpenAI schema, "
                                               "streaming), POST /v1/infill, GET /v1/models, /health, /metrics, "
                                               "and a web page at / that draws the denoising. Needs the [server] extra."))

    from dlm.cli.lm_eval import add_arguments as lm_eval_arguments
    lm_eval_arguments(sub.add_parser("lm-eval", help="run lm-evaluation-harness tasks on a checkpoint",
                                     description="Evaluate a checkpoint on lm-evaluation-harness tasks through the "
                                                 "\"dlm\" adapter: loglikelihood is the Monte-Carlo ELBO (exact for "
                                                 "AR), generation runs dlm's samplers. Needs the [eval] extra."))
    return parser


def cache_home():
    """Where dlm keeps models it trains for itself (demo, bench): $DLM_CACHE, else ~/.cache/dlm."""
    import os
    from pathlib import Path

    return Path(os.environ.get("DLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dlm")


def load_from_args(args: argparse.Namespace):
    """The checkpoint (or LLaDA/Dream folder) named by DIR, on --device, its weights in --dtype."""
    from dlm.training.checkpoint import load_checkpoint
    from dlm.training.performance import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return load_checkpoint(args.checkpoint, device=device, dtype=resolve_dtype(args.dtype, device))


def emit_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        from importlib import import_module

        from dlm.training.performance import tune_allocator

        # Every command: with glibc's defaults each large activation is page-faulted in again at every
        # call (measured: `dlm eval` of a tiny model, 54 s -> 40 s, 15 s -> 0.5 s of system time).
        tune_allocator()
        module = {"train": "train", "distill": "distill", "eval": "evaluate", "generate": "sample", "infill": "sample",
                  "bench": "bench", "demo": "demo", "serve": "serve", "lm-eval": "lm_eval"}[args.command]
        return import_module(f"dlm.cli.{module}").run(args) or 0
    except DlmError as e:
        print(f"dlm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dlm {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
