"""`dlm distill TEACHER --out DIR`: self-distillation through time (SDTT) of a masked or block
diffusion checkpoint. The run is a `dlm train` run (same checkpoints, resume, atomic saves,
--minutes budget, progress) whose objective is the student's one step against the teacher's
two; each of --rounds rounds halves the sampling steps (see dlm.processes.distillation)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from dlm.errors import DlmError
from dlm.training.config import RESUME_MAY_CHANGE, TrainConfig

# What a distillation run may set besides the teacher, with the defaults that differ from `dlm train`'s:
# fine-tuning a trained model wants AdamW at a small constant rate after a short warm-up (SDTT: AdamW,
# 3e-4, constant), and an EMA whose horizon is well inside one round.
SETTINGS = ("steps", "minutes", "batch_size", "grad_accum", "seq_len", "data", "optimizer", "lr", "min_lr_ratio",
            "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "precision", "compile", "threads", "eval_every",
            "eval_chunks", "final_eval_chunks", "log_every", "seed")
DEFAULTS = {"optimizer": "adamw", "lr": 3e-4, "min_lr_ratio": 1.0, "warmup_steps": 20, "weight_decay": 0.0,
            "ema_decay": 0.99}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", metavar="TEACHER", nargs="?", help="a masked or block diffusion run or checkpoint "
                   "(leave out with --resume)")
    p.add_argument("--out", required=True, help="run folder of the student (checkpoints, metrics.jsonl)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each halves the sampling steps (default 3)")
    p.add_argument("--teacher-steps", type=int, default=None, metavar="N",
                   help="the teacher's sampling steps in round 0 (per block for block diffusion); the student of "
                        "round R samples in N / 2^R (default: the teacher's context, or its block size)")
    p.add_argument("--divergence", choices=["reverse_kl", "forward_kl"], default="reverse_kl",
                   help="reverse_kl = KL(student || target), SDTT's default; forward_kl = KL(target || student)")
    p.add_argument("--target", choices=["composition", "sdtt"], default="composition",
                   help="composition: the teacher's two steps exactly; sdtt: the released SDTT code's target")
    for f in fields(TrainConfig):
        if f.name not in SETTINGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = DEFAULTS.get(f.name, f.default if f.default is not MISSING else None)
        if type(default) is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        else:
            p.add_argument(flag, type=type(default), default=None, metavar=f.name.upper(),
                           help=f"(default: {'the teacher' + chr(39) + 's' if f.name in ('data', 'seq_len') else default})")
    p.add_argument("--resume", action="store_true", help="continue the distillation in --out where it stopped")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress bar (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the result on stdout")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if given.get("steps") and given.get("minutes"):
        raise DlmError("give --steps or --minutes, not both")
    if args.resume:
        extra = sorted(k for k in given if k not in RESUME_MAY_CHANGE)
        if extra or args.teacher:
            drop = [("--" + k.replace("_", "-")) for k in extra] + (["TEACHER"] if args.teacher else [])
            raise DlmError(f"--resume continues the stored distillation exactly; drop {', '.join(drop)}")
        return TrainConfig(out=args.out, **given)
    if not args.teacher:
        raise DlmError("name the TEACHER checkpoint to distil (or --resume a distillation in --out)")
    from dlm.training.checkpoint import load_checkpoint

    teacher = load_checkpoint(args.teacher)
    if not teacher.process.distills:
        raise DlmError(f"{args.teacher} holds a {teacher.process.name} model; self-distillation needs a masked or "
                       f"block diffusion teacher")
    trained = teacher.config.get("train") or {}
    block = getattr(teacher.process, "block_size", None)
    steps = args.teacher_steps or (block if block is not None else teacher.context_length)
    settings = {**DEFAULTS, "data": trained.get("data", "shakespeare"), "seq_len": teacher.context_length,
                **given}
    return TrainConfig(out=args.out, process=teacher.process.name, preset=trained.get("preset", "tiny"),
                       distill_from=args.teacher, distill_rounds=args.rounds, teacher_steps=steps,
                       distill_divergence=args.divergence, distill_target=args.target, **settings)


def run(args: argparse.Namespace) -> int:
    from dlm.training.loop import train

    config = config_from_args(args)
    result = train(config, resume=args.resume, progress=args.progress, device=args.device)
    stored = result.config
    v = result.validation
    student_steps = stored.teacher_steps // 2 ** stored.distill_rounds if stored.distill_rounds else None
    payload = {"checkpoint": str(result.checkpoint), "step": result.step, "total_steps": result.total_steps,
               "rounds": stored.distill_rounds, "teacher_steps": stored.teacher_steps,
               "student_steps": student_steps, "seconds": result.seconds, "stopped": result.stopped,
               "bits_per_char": v.get("val_bits_per_char"), "stderr": v.get("val_stderr")}
    if args.json:
        from dlm.cli import emit_json

        emit_json(payload)
    else:
        print(f"student: {result.checkpoint} (step {result.step}); it samples in {student_steps} steps where its "
              f"teacher took {stored.teacher_steps}", file=sys.stderr)
        if v:
            print(f"validation: {v['val_bits_per_char']:.4f} ± {v['val_stderr']:.4f} bits/char", file=sys.stderr)
    return 0
