"""`dlm train`: every TrainConfig field is a flag (--batch-size for batch_size), over an optional TOML file."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from dlm.errors import DlmError
from dlm.training.config import RESUME_MAY_CHANGE, TrainConfig

HELP = {
    "out": "run folder for checkpoints and metrics.jsonl (required)",
    "process": "forward process: masked, uniform, gaussian, block (--block-size) or ar",
    "block_size": "block diffusion: tokens per block (1 = autoregressive, --seq-len = masked diffusion)",
    "preset": "model size: tiny (~1M params), small (~10M), base (~40M)",
    "data": "shakespeare, pystdlib, a reasoning task (sudoku, sudoku6, countdown, paths; parameters as in "
            "sudoku6:givens=14,train=30000), or a path: .txt file, folder of .txt files, .jsonl with a \"text\" field",
    "tokenizer": "char or bpe",
    "steps": "optimizer steps (default 2000 unless --minutes is given)",
    "minutes": "wall-clock budget for the whole run; sizes the number of steps",
    "objective": "masked/block: nelbo (exact weights) or normalized (lower variance); empty = the process's "
                 "default; evaluation always reports the bound",
    "optimizer": "muon (Muon on hidden matrices, AdamW on the rest) or adamw",
    "schedule": "noise schedule for training (masked/uniform/block: linear, cosine, loglinear, polynomial; "
                "gaussian: sqrt, cosine); empty = the process's default",
    "precision": "auto (bf16 autocast where the CPU/GPU has bf16 units), bf16 or fp32",
    "compile": "torch.compile the transformer blocks (--no-compile to skip the ~15 s compile)",
    "seed": "seed for initialisation, data order and noise",
    "fsdp": "under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2) instead of "
            "replicating them (DDP); for models that do not fit one device",
    "grad_accum": "micro-batches per optimizer step in each process (under torchrun the global --batch-size is cut "
                  "into processes x grad-accum micro-batches)",
    "init_from": "start from these weights and this tokenizer: a dlm run or checkpoint (an AR run, for AR-to-diffusion "
                 "adaptation) or a Qwen2/LLaMA Hugging Face folder; the model's size is theirs, not --preset's",
    "logit_shift": "masked/block: predict token i from position i - 1, as the AR head does (use with --init-from AR)",
    "clean_attention": "block: committed text attends to its whole block (block, BD3-LM) or causally (causal, the "
                       "attention of the AR model it starts from)",
    "anneal_steps": "masked/block: open the attention inside a block from causal to bidirectional over these first "
                    "steps (DiffuLLaMA's attention-mask annealing)",
    "block_warmup_steps": "block: train blocks of 1, 2, 4, ... tokens up to --block-size over these first steps",
    "ar_loss_weight": "block with --logit-shift --clean-attention causal: add this times the clean stream's next-token "
                      "loss (TiDAR's joint objective), so the model stays the AR model on committed text",
}
DISTILL_ONLY = ("distill_from", "distill_rounds", "teacher_steps", "distill_divergence", "distill_target")  # `dlm distill`'s


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with training settings (flags override it)")
    for f in fields(TrainConfig):
        if f.name in DISTILL_ONLY:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        kind = type(default)
        help_text = HELP.get(f.name, "") + f" (default: {default})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, type=kind, default=None, help=help_text, metavar=f.name.upper())
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped "
                   "(on any number of processes; --fsdp, --threads and --compile may change, nothing else)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress bar (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the result on stdout")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in DISTILL_ONLY and getattr(args, f.name) is not None}
    if overrides.get("steps") and overrides.get("minutes"):
        raise DlmError("give --steps or --minutes, not both")
    if args.resume:
        extra = sorted(k for k in overrides if k != "out" and k not in RESUME_MAY_CHANGE)
        if extra or args.config:
            raise DlmError(f"--resume continues the stored run exactly; drop {', '.join('--' + k.replace('_', '-') for k in extra) or '--config'}")
    if args.config:
        return TrainConfig.from_toml(args.config, **overrides)
    return TrainConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    from dlm.training.distributed import from_environment
    from dlm.training.loop import train

    if args.out is None:
        raise DlmError("--out DIR is required: the run folder for checkpoints and metrics")
    config = config_from_args(args)
    result = train(config, resume=args.resume, progress=args.progress, device=args.device)
    if not from_environment().is_main:
        return 0  # under torchrun, process 0 reports for all
    v = result.validation
    payload = {"checkpoint": str(result.checkpoint), "step": result.step, "total_steps": result.total_steps,
               "num_parameters": result.num_parameters, "tokens_per_second": result.tokens_per_second,
               "seconds": result.seconds, "stopped": result.stopped,
               "bits_per_char": v.get("val_bits_per_char"), "bits_per_token": v.get("val_bits_per_token"),
               "stderr": v.get("val_stderr")}
    if args.json:
        from dlm.cli import emit_json

        emit_json(payload)
    else:
        print(f"checkpoint: {result.checkpoint} (step {result.step})", file=sys.stderr)
        if v:
            print(f"validation: {v['val_bits_per_char']:.4f} ± {v['val_stderr']:.4f} bits/char (validation bound; `dlm eval` says which)",
                  file=sys.stderr)
        print(f"throughput: {result.tokens_per_second:,.0f} tokens/s over {result.seconds:.0f} s", file=sys.stderr)
    return 0
