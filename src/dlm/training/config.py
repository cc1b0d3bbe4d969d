"""The training configuration: one frozen dataclass, readable from TOML, overridable from the CLI."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from dlm.errors import DlmError
from dlm.processes.block import CLEAN_ATTENTION
from dlm.processes.distillation import DIVERGENCES, TARGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRECISIONS = ("auto", "bf16", "fp32")

RESUME_MAY_CHANGE = ("fsdp", "threads", "compile")  # how a run executes, not what it computes: --resume may change them


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/dlm"  # run folder: checkpoints, metrics.jsonl
    # what to train
    process: str = "masked"  # masked, uniform, gaussian, block or ar
    schedule: str = ""  # noise schedule for training; "" = the process's training default (for masked diffusion
    # alpha = 1 - t^2: the NELBO does not depend on it, but lightly-masked sequences trained better here)
    objective: str = ""  # masked/block: "nelbo" (exact weights) or "normalized" (lower variance); "" = default
    block_size: int = 16  # block diffusion only: tokens per block (1 = AR, seq_len = masked diffusion)
    cond_drop: float = 0.0  # prompt/response data: probability that a prompt is replaced by [MASK]s (for guidance)
    preset: str = "tiny"  # model size: tiny (~1M), small (~10M), base (~40M)
    # starting from another model (AR-to-diffusion adaptation: Dream, DiffuLLaMA, Fast-dLLM v2, SDAR)
    init_from: str = ""  # its weights and tokenizer: a dlm run or checkpoint, or a Qwen2/LLaMA Hugging Face folder
    logit_shift: bool = False  # masked/block: token i is predicted from position i - 1, as the AR head predicts
    clean_attention: str = "block"  # block: clean text sees its whole block ("block", BD3-LM) or itself and before ("causal")
    anneal_steps: int = 0  # masked/block: attention within a block opens from causal to bidirectional over these steps
    block_warmup_steps: int = 0  # block: block sizes 1, 2, 4, ... up to block_size over these first steps
    ar_loss_weight: float = 0.0  # block (shifted, causal clean stream): weight of the clean stream's AR loss (TiDAR)
    # self-distillation through time (dlm distill)
    distill_from: str = ""  # the teacher: a masked or block diffusion checkpoint (the student starts from it)
    distill_rounds: int = 0  # each round halves the sampling steps
    teacher_steps: int = 0  # the teacher's sampling steps in round 0 (per block for block diffusion)
    distill_divergence: str = "reverse_kl"  # reverse_kl = KL(student || target), as SDTT; or forward_kl
    distill_target: str = "composition"  # composition: the teacher's two steps exactly; sdtt: SDTT's released target
    data: str = "shakespeare"  # built-in corpus name or a path (.txt, folder of .txt, .jsonl)
    tokenizer: str = "char"  # "char" or "bpe"
    vocab_size: int = 4096  # BPE only
    seq_len: int = 128  # tokens per training chunk = the model's context
    # how long
    steps: int = 0  # optimizer steps; 0 = decided by `minutes` (or 2000 when neither is set)
    minutes: float = 0.0  # wall-clock budget for the whole run, data preparation and evaluation included
    # optimisation
    batch_size: int = 32  # sequences per optimizer step (4096 tokens: more, smaller steps train faster here)
    grad_accum: int = 1  # micro-batches per step and process (batch_size divides by it x processes); memory, not maths
    optimizer: str = "muon"  # Muon on the blocks' matrices + AdamW on the rest, or "adamw" everywhere
    lr: float = 4e-3  # with Muon; 1.5e-3, 2.5e-3, 4e-3, 6e-3 gave 2.79, 2.77, 2.74, 2.75 bits/char in 5 minutes (tiny)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only
    dropout: float = 0.0  # residual and embedding dropout of a new model (regularisation for many epochs)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables; evaluation and model.safetensors use the EMA weights
    # speed
    precision: str = "auto"  # bf16 autocast where the hardware has it (measured ~2x on this AMX CPU)
    compile: bool = True  # torch.compile each block (fuses norms, RoPE, SwiGLU); falls back to eager on failure
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    # bookkeeping
    eval_every: int = 500  # steps between validations (each also writes a checkpoint)
    eval_chunks: int = 64  # validation chunks for periodic validation (evenly spaced)
    final_eval_chunks: int = 0  # for the last validation; 0 = every validation chunk
    eval_samples: int = 2  # Monte-Carlo time samples per chunk
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise DlmError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise DlmError(f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum "
                           f"({self.grad_accum})")
        if self.seq_len < 2:
            raise DlmError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.steps < 0 or self.minutes < 0:
            raise DlmError("--steps and --minutes must not be negative")
        for name, least in (("eval_every", 1), ("log_every", 1), ("eval_samples", 1), ("eval_chunks", 0),
                            ("final_eval_chunks", 0)):  # chunks: 0 = every validation chunk
            if getattr(self, name) < least:
                raise DlmError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise DlmError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.cond_drop < 1:
            raise DlmError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.block_size < 1:
            raise DlmError(f"block_size must be at least 1, got {self.block_size}")
        if self.lr <= 0:
            raise DlmError(f"lr must be positive, got {self.lr}")
        if self.clean_attention not in CLEAN_ATTENTION:
            raise DlmError(f"clean_attention must be {' or '.join(CLEAN_ATTENTION)}, got {self.clean_attention!r}")
        if self.anneal_steps < 0 or self.block_warmup_steps < 0:
            raise DlmError("--anneal-steps and --block-warmup-steps must not be negative")
        if self.distill_from:
            if self.distill_rounds < 1 or self.teacher_steps < 2:
                raise DlmError(f"distillation needs --rounds >= 1 and --teacher-steps >= 2, got "
                               f"{self.distill_rounds} and {self.teacher_steps}")
            if self.teacher_steps % 2 ** self.distill_rounds:
                raise DlmError(f"--teacher-steps {self.teacher_steps} cannot be halved {self.distill_rounds} times; use a "
                               f"multiple of {2 ** self.distill_rounds}")
            if self.distill_divergence not in DIVERGENCES:
                raise DlmError(f"--divergence must be one of {DIVERGENCES}, got {self.distill_divergence!r}")
            if self.distill_target not in TARGETS:
                raise DlmError(f"--target must be one of {TARGETS}, got {self.distill_target!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DlmError(f"unknown training settings {unknown}; known ones: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DlmError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise DlmError(f"config file {path} is not valid TOML: {e}") from None
        data = data.get("train", data)  # either a [train] table or top-level keys
        return replace(cls.from_dict(data), **overrides)
