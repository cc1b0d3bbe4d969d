"""The training loop: one loop for every process (the objective lives in the process).

corpus -> tokenizer -> packed stream -> random windows (B, L) -> process.loss(model, x0) ->
AdamW step (warmup + cosine, clipping, accumulation, bf16 autocast) -> EMA -> periodic
validation (NELBO bits/char on held-out works) and atomic checkpoints -> metrics.jsonl.

Under torchrun the same loop runs in every process (see distributed.py): each draws the same
global batch, trains on its share of it, and DDP or FSDP2 averages the gradients.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dlm.data.corpora import Corpus, load_corpus
from dlm.data.packing import (evenly_spaced, pack_pairs, pack_text, random_windows, validation_chunks,
                              validation_pairs)
from dlm.data.tokenizer import TOKENIZERS, Tokenizer, UnknownCharacterError
from dlm.errors import DlmError
from dlm.models.transformer import ModelConfig, Transformer, preset_config
from dlm.processes import PROCESSES
from dlm.processes.distillation import SelfDistillation
from dlm.processes.likelihood import LikelihoodEstimate, estimate_likelihood
from dlm.training.checkpoint import (load_checkpoint, load_training_state, read_config, read_tokenizer, resolve,
                                     save_checkpoint)
from dlm.training.config import RESUME_MAY_CHANGE, TrainConfig
from dlm.training.distributed import (Distributed, gather_full, init_distributed, no_sync, replicate, shard_model,
                                     shard_optimizer_state)
from dlm.training.ema import EMA
from dlm.training.optim import build_optimizer, lr_at
from dlm.training.performance import (autocast, compile_blocks, resolve_device, resolve_precision,
                                      tune_allocator)
from dlm.training.progress import TrainingProgress

DEFAULT_STEPS = 2000
CALIBRATION = (10, 30)  # with --minutes, time steps [10, 30) of the run to size it (the first ones compile)
EVAL_SPEEDUP = 2.0  # validation tokens/s over training tokens/s (forward only, fp32, eager), measured


class TrainingDiverged(DlmError):
    """The loss or the gradient stopped being a finite number."""


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    total_steps: int
    num_parameters: int
    tokens_per_second: float  # training throughput of this invocation
    seconds: float
    validation: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # objective at each step of this invocation
    stopped: str = "completed"  # or "time"
    config: TrainConfig | None = None  # the run's settings (a resumed run's are the stored ones)


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: torch.Tensor  # (N_train,) token stream; for prompt/response pairs (N_pairs, L) rows
    validation: torch.Tensor  # (N_val, L) chunks
    tokens_per_char: float  # of the validation text (eos counts as one character)
    train_mask: torch.Tensor | None = None  # (N_pairs, L) bool: scored positions (responses), for pairs
    validation_mask: torch.Tensor | None = None  # (N_val, L)

    def batch(self, batch_size: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) training tokens and their loss mask (None: every position is scored)."""
        if self.train_mask is None:
            return random_windows(self.train, batch_size, length, generator=generator), None
        rows = torch.randint(0, self.train.shape[0], (batch_size,), generator=generator)  # (B,)
        return self.train[rows], self.train_mask[rows]


def build_tokenizer(config: TrainConfig, corpus: Corpus) -> Tokenizer:
    if config.tokenizer not in TOKENIZERS:
        raise DlmError(f"unknown tokenizer {config.tokenizer!r}; choose one of {sorted(TOKENIZERS)}")
    if config.tokenizer == "bpe":
        return TOKENIZERS["bpe"](corpus.train, vocab_size=config.vocab_size)
    return TOKENIZERS[config.tokenizer](corpus.train)


def prepare_data(config: TrainConfig, tokenizer: Tokenizer | None = None) -> Dataset:
    """Load the corpus, build (or reuse) the tokenizer, pack both splits."""
    corpus = load_corpus(config.data)
    tokenizer = tokenizer or build_tokenizer(config, corpus)
    if corpus.is_pairs:
        return prepare_pairs(config, corpus, tokenizer)
    if config.cond_drop:
        raise DlmError(f"--cond-drop needs prompt/response pairs to drop prompts from; {config.data!r} is plain "
                       f"text (use a .jsonl with \"prompt\" and \"response\" fields, or shakespeare-pairs)")
    train, _ = pack_text(tokenizer, corpus.train)
    try:
        validation, tokens_per_char = validation_chunks(tokenizer, corpus.validation, config.seq_len)
    except UnknownCharacterError as e:
        raise DlmError(f"the validation split of {config.data!r} uses a character the training split never does "
                       f"({e}). The char vocabulary comes from the training split only: use --tokenizer bpe, or "
                       f"a corpus whose held-out part uses the same characters") from None
    if train.numel() <= config.seq_len:
        raise DlmError(f"the training split of {config.data!r} has {train.numel()} tokens, not more than one "
                       f"window of --seq-len {config.seq_len}; use a larger corpus or a shorter --seq-len")
    if validation.shape[0] == 0:
        raise DlmError(f"the validation split of {config.data!r} is shorter than one chunk of --seq-len "
                       f"{config.seq_len} tokens; use a larger corpus or a shorter --seq-len")
    return Dataset(tokenizer, train, validation, tokens_per_char=tokens_per_char)


def prepare_pairs(config: TrainConfig, corpus: Corpus, tokenizer: Tokenizer) -> Dataset:
    """Prompt/response pairs as padded rows with loss masks (see pack_pairs)."""
    try:
        train, train_mask, _ = pack_pairs(tokenizer, corpus.train_pairs, config.seq_len)
        validation, validation_mask, tokens_per_char = validation_pairs(tokenizer, corpus.validation_pairs,
                                                                        config.seq_len)
    except UnknownCharacterError as e:
        raise DlmError(f"the validation pairs of {config.data!r} use a character the training pairs never do ({e}); "
                       f"use --tokenizer bpe") from None
    if train.shape[0] == 0 or validation.shape[0] == 0:
        raise DlmError(f"no prompt/response pair of {config.data!r} fits in --seq-len {config.seq_len} with room "
                       f"for a response; use a longer --seq-len")
    return Dataset(tokenizer, train, validation, tokens_per_char=tokens_per_char,
                   train_mask=train_mask, validation_mask=validation_mask)


def validate(model, process, data: Dataset, *, chunks: int, samples: int, seed: int,
             device: torch.device) -> LikelihoodEstimate:
    """NELBO bits/char on `chunks` evenly spaced validation chunks, in fp32, with a fixed seed
    so that successive validations see the same times and masks."""
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        masks = None if data.validation_mask is None else evenly_spaced(data.validation_mask, chunks).to(device)
        return estimate_likelihood(process, model, evenly_spaced(data.validation, chunks).to(device),
                                   samples_per_chunk=samples, batch_size=64, tokens_per_char=data.tokens_per_char,
                                   generator=generator, loss_masks=masks)
    finally:
        model.train(was_training)


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class Source:
    """Weights a run starts from (--init-from, or a distillation's teacher)."""
    model_config: ModelConfig
    state: dict
    tokenizer: Tokenizer
    description: str


def load_source(path: str) -> Source:
    """A dlm run or checkpoint (any process: an AR run for adaptation), or a Qwen2/LLaMA Hugging Face
    causal-LM folder (models/foreign.py), as the starting point of a run."""
    from dlm.models import foreign

    folder = resolve(path)
    config = foreign.read_json(folder / "config.json")
    if foreign.is_foreign(config):
        ar = foreign.load_ar_source(folder)
        return Source(ar.model_config, ar.state, ar.tokenizer, f"the {ar.architecture} model in {folder}")
    ckpt = load_checkpoint(folder)
    return Source(ckpt.model.config, ckpt.model.state_dict(), ckpt.tokenizer,
                  f"the {ckpt.process.name} model in {folder}")


def source_model_config(source: Source, process, config: TrainConfig) -> ModelConfig:
    """The shape of the model a run starts from, with what the new process needs (attention, time
    input, logit shift) and the new context; its size is the source's, whatever --preset says."""
    try:
        return replace(source.model_config, max_len=config.seq_len, dropout=config.dropout, **process.model_options())
    except (TypeError, ValueError) as e:
        raise DlmError(f"{source.description} cannot become a {config.process} model: {e}") from None


def load_teacher(path: str):
    """A distillation's teacher: a checkpoint of a process that self-distillation applies to."""
    teacher = load_checkpoint(path)
    if not teacher.process.distills:
        raise DlmError(f"{path} holds a {teacher.process.name} model; self-distillation needs a masked or block "
                       f"diffusion teacher")
    return teacher


# TrainConfig field -> (the process config key it sets, its neutral value)
PROCESS_OPTIONS = {"logit_shift": ("shift", False), "clean_attention": ("clean", "block"),
                   "anneal_steps": ("anneal_steps", 0), "block_warmup_steps": ("warmup_steps", 0),
                   "ar_loss_weight": ("ar_weight", 0.0)}


def build_process(config: TrainConfig, tokenizer: Tokenizer):
    """The forward process a training configuration asks for: the process's training defaults,
    overridden by what the configuration sets."""
    if config.process not in PROCESSES:
        raise DlmError(f"unknown process {config.process!r}; choose one of {sorted(PROCESSES)}")
    cls = PROCESSES[config.process]
    settings = {**getattr(cls, "TRAINING_DEFAULTS", {}), "name": config.process, "block_size": config.block_size}
    for field_name, (key, default) in PROCESS_OPTIONS.items():
        value = getattr(config, field_name)
        if value == default:
            continue
        if key not in cls.options:
            takes = [name for name, other in PROCESSES.items() if key in other.options]
            raise DlmError(f"--{field_name.replace('_', '-')} is an option of the {' and '.join(takes)} processes, not "
                           f"of {config.process}")
        settings[key] = value
    if config.schedule:
        settings["schedule"] = {"name": config.schedule}
    if config.objective:
        settings["objective"] = config.objective
    try:
        return cls.from_config(settings, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    except (KeyError, ValueError) as e:
        raise DlmError(f"cannot build the {config.process} process: {e}") from None


class Run:
    """Everything one training run carries from step to step, and what can be done with it.

    In a distributed run every process holds one; `place` says which process this is."""

    def __init__(self, config: TrainConfig, *, resume: bool, device: str | None, place: Distributed | None = None):
        self.run_dir = Path(config.out)
        self.place = place = place or Distributed()
        self.device = resolve_device(device)
        state, tokenizer, stored_run, source, teacher = None, None, None, None, None
        if resume:
            folder = resolve(self.run_dir)
            stored_run = read_config(folder)
            stored = TrainConfig.from_dict(stored_run["train"])
            # How the run is executed may change on resume (sharding, threads, compiling); what it
            # computes may not, so every other setting is the stored one.
            executed = {k: getattr(config, k) for k in RESUME_MAY_CHANGE if getattr(config, k) != getattr(TrainConfig, k)}
            config = replace(stored, out=str(self.run_dir), **executed)
            state = load_training_state(folder)
            tokenizer = read_tokenizer(folder, stored_run)
        elif (self.run_dir / "latest").exists() or any(self.run_dir.glob("checkpoint-*")):
            raise DlmError(f"{self.run_dir} already holds a training run; continue it with --resume or choose "
                           f"another --out")
        else:
            if config.distill_from:
                teacher = load_teacher(config.distill_from)
                source = Source(teacher.model.config, teacher.model.state_dict(), teacher.tokenizer,
                                f"the teacher {config.distill_from}")
            elif config.init_from:
                source = load_source(config.init_from)
            if source is not None:
                tokenizer = source.tokenizer
        self.config = config = self._micro_batching(config, state)
        if tokenizer is None and place.enabled:
            # Process 0 builds the tokenizer (BPE training need not be reproducible across
            # processes); the others receive it, so that every process encodes alike.
            data = prepare_data(config) if place.is_main else None
            tokenizer = place.broadcast(data.tokenizer if data is not None else None)
            self.data = data or prepare_data(config, tokenizer)
        else:
            try:
                self.data = prepare_data(config, tokenizer)
            except UnknownCharacterError as e:
                raise DlmError(f"the tokenizer of {source.description} cannot encode {config.data!r} ({e}); start "
                               f"from a model trained on text with the same characters") from None
        tokenizer = self.data.tokenizer
        if stored_run is not None:  # a resumed run is what its checkpoint says, whatever the presets say now
            self.process = PROCESSES[stored_run["process"]["name"]].from_config(
                stored_run["process"], vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
            model_config = ModelConfig(**stored_run["model"])
        elif teacher is not None:  # the student is the teacher's process and model
            self.process, model_config = teacher.process, teacher.model.config
        else:
            self.process = build_process(config, tokenizer)
            try:
                model_config = (source_model_config(source, self.process, config) if source is not None else
                                preset_config(config.preset, vocab_size=tokenizer.vocab_size, max_len=config.seq_len,
                                              dropout=config.dropout, **self.process.model_options()))
            except KeyError as e:
                raise DlmError(str(e.args[0])) from None
        sharded = config.fsdp and place.enabled
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model = Transformer(model_config)  # on the host: with FSDP, sharding moves each block's shard over
        if not sharded:
            self.model.to(self.device)
        if state is not None:
            self.model.load_state_dict(state["model"])
        elif source is not None:
            try:
                self.model.load_state_dict(source.state, strict=True)
            except RuntimeError as e:
                raise DlmError(f"the weights of {source.description} do not fit a {config.process} model: "
                               f"{str(e).splitlines()[-1].strip()}") from None
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        if self.ema is not None and state is not None:
            self.ema.load_state_dict(state["ema"])
        self.compiled = False
        if sharded:
            # FSDP2: each block's parameters, gradients and optimizer state are split over the
            # processes and gathered for its forward and backward; the EMA copy is split alike.
            # Sharding block by block from the host keeps the device from ever holding the whole model.
            shard_model(self.model, self.device)
            if self.ema is not None:
                shard_model(self.ema.model, self.device)
            self.trained = self.model
            if config.compile:
                warnings.warn("--fsdp trains eagerly: the blocks are not compiled")
        else:
            self.compiled = compile_blocks(self.model) if config.compile else False
            self.trained = replicate(self.model, self.device) if place.enabled else self.model
        try:
            self.optimizer = build_optimizer(self.model, name=config.optimizer, lr=config.lr,
                                             weight_decay=config.weight_decay, betas=(config.beta1, config.beta2))
        except ValueError as e:
            raise DlmError(str(e)) from None
        self.data_rng = torch.Generator().manual_seed(config.seed)  # the same in every process
        self.step, self.total_steps = 0, config.steps or (0 if config.minutes else DEFAULT_STEPS)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            shard_optimizer_state(self.optimizer)
            self.data_rng.set_state(state["data_rng"])
            self.step, self.total_steps = state["step"], state["total_steps"]
        self.precision = resolve_precision(config.precision, self.device)
        self.last_saved = self.step if state is not None else -1
        self.distillation = None
        if config.distill_from:  # self-distillation through time: a frozen teacher, one round at a time
            teacher_model = Transformer(model_config).to(self.device)
            teacher_model.load_state_dict(state["teacher"] if state is not None else teacher.model.state_dict())
            teacher_model.eval().requires_grad_(False)
            self.round = state["round"] if state is not None else 0
            self.round_steps = state.get("round_steps", 0) if state is not None else (
                config.steps // config.distill_rounds if config.steps else 0)
            self.distillation = SelfDistillation(self.process, teacher_model,
                                                 teacher_steps=config.teacher_steps // 2 ** self.round,
                                                 divergence=config.distill_divergence, target=config.distill_target)
            if not self.round_steps and self.total_steps:
                self.round_steps = self.total_steps // config.distill_rounds

    def _micro_batching(self, config: TrainConfig, state: dict | None) -> TrainConfig:
        """The global batch is cut into world_size x grad_accum micro-batches; a resumed run keeps
        the number of micro-batches it was trained with when the new world size divides it, so
        that it draws the same batches and the same noise as if it had not moved."""
        world = self.place.world_size
        stored = (state or {}).get("micro_batches")
        if stored and stored % world == 0:
            config = replace(config, grad_accum=stored // world)
        elif stored and stored != world * config.grad_accum:
            warnings.warn(f"this run was saved with micro_batches={stored} per step, which {world} processes "
                          f"cannot share evenly; it goes on with {world * config.grad_accum}, so its noise draws "
                          f"differ from an uninterrupted run's (its batches do not)")
        micro = world * config.grad_accum
        if config.batch_size % micro:
            raise DlmError(f"--batch-size {config.batch_size} does not split into {world} processes x "
                           f"--grad-accum {config.grad_accum} = {micro} equal micro-batches; choose a multiple of "
                           f"{micro}")
        return config

    @property
    def micro_batches(self) -> int:
        return self.place.world_size * self.config.grad_accum

    @property
    def published_model(self) -> Transformer:
        """The weights that are evaluated and published: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def noise_generator(self, micro_batch: int) -> torch.Generator:
        """The generator of the forward process's noise for one micro-batch of this step. It
        depends on (seed, step, micro-batch) only, so the noise a micro-batch gets does not depend
        on which process trains it, and a resumed run draws what the uninterrupted one drew."""
        seed = (self.config.seed + 1) * 1_000_003 + self.step * 65_537 + micro_batch
        return torch.Generator(device=self.device).manual_seed(seed % 2**63)

    def train_step(self, signals=lambda: ()) -> tuple[float, float, float, tuple[bool, ...]]:
        """One optimizer step over the global batch of batch_size sequences, of which this process
        trains micro-batches rank*A .. rank*A + A-1 (A = grad_accum). `signals()` gives flags (stop
        requested, out of time), read after the backward passes; a flag holds if any process raises
        it, for it travels in the step's one small all-reduce. -> (loss averaged over the whole
        batch, grad norm, lr, the flags)."""
        cfg, place = self.config, self.place
        lr = lr_at(self.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=self.total_steps or 10**9,
                   min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        objective = self.distillation if self.distillation is not None else self.process.for_step(self.step)
        if self.distillation is not None:
            self.next_round()
        x0_all, mask_all = self.data.batch(cfg.batch_size, cfg.seq_len, self.data_rng)  # (B, L), all processes alike
        if mask_all is not None and cfg.cond_drop:  # condition dropout: the prompt becomes [MASK]s, so the model learns p(x)
            drop = torch.rand(cfg.batch_size, generator=self.data_rng) < cfg.cond_drop  # (B,)
            x0_all = torch.where(drop[:, None] & ~mask_all, self.data.tokenizer.mask_id, x0_all)
        size = cfg.batch_size // self.micro_batches
        loss = 0.0
        for i in range(cfg.grad_accum):
            j = place.rank * cfg.grad_accum + i  # this micro-batch's index in the global batch
            x0 = x0_all[j * size:(j + 1) * size].to(self.device)  # (B / micro_batches, L)
            loss_mask = None if mask_all is None else mask_all[j * size:(j + 1) * size].to(self.device)
            last = i == cfg.grad_accum - 1
            with autocast(self.precision, self.device), no_sync(self.trained, skip=not last):
                out = objective.loss(self.trained, x0, loss_mask=loss_mask, generator=self.noise_generator(j))
                (out.loss / cfg.grad_accum).backward()
            loss += out.loss.item() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        loss_sum, *raised = place.sum([loss, *map(float, signals())], self.device)
        loss, signals = loss_sum / place.world_size, tuple(r > 0 for r in raised)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            if place.is_main:
                _append_metrics(self.run_dir, {"event": "diverged", "step": self.step + 1, "loss": loss,
                                               "grad_norm": grad_norm})
            where = (f"the last good checkpoint (step {self.last_saved}) is in {self.run_dir}" if self.last_saved >= 0
                     else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"the loss became {loss} (gradient norm {grad_norm}) at step {self.step + 1}; training stopped and "
                f"{where}. Try a lower --lr (now {cfg.lr}), more --warmup-steps, or --precision fp32.")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss, grad_norm, lr, signals

    def next_round(self) -> None:
        """Self-distillation: at the first step of a round the student becomes the teacher (its raw
        weights, as SDTT) and the teacher's step count halves."""
        cfg = self.config
        current = min(self.step // self.round_steps, cfg.distill_rounds - 1) if self.round_steps else 0
        if current > self.round:
            self.distillation.teacher.load_state_dict(gather_full(self.model.state_dict()))
            self.round = current
            self.distillation.teacher_steps = cfg.teacher_steps // 2 ** current

    def size(self, total_steps: int) -> None:
        """Fix the number of steps (--minutes sizes a run, then re-plans it at each validation). A
        distillation's rounds are fixed at the first sizing: its plan never moves a round's end."""
        if self.distillation is None:
            self.total_steps = total_steps
        elif not self.round_steps:
            self.round_steps = max(total_steps // self.config.distill_rounds, 1)
            self.total_steps = self.round_steps * self.config.distill_rounds

    @property
    def validates_everywhere(self) -> bool:
        """Sharded weights are gathered layer by layer, so every process takes part in validation;
        replicated ones are validated by process 0 alone."""
        return self.place.enabled and self.config.fsdp

    def validate(self, chunks: int) -> LikelihoodEstimate | None:
        """The validation bound (on process 0; None on the others)."""
        if not (self.place.is_main or self.validates_everywhere):
            return None
        est = validate(self.published_model, self.process, self.data, chunks=chunks,
                       samples=self.config.eval_samples, seed=self.config.seed + 2, device=self.device)
        return est if self.place.is_main else None

    def save(self, metrics: dict) -> Path | None:
        """Write a checkpoint (process 0; every process must call it, for sharded weights are
        gathered first and the others wait until the checkpoint is on disk)."""
        model_state = gather_full(self.model.state_dict())
        ema_state = gather_full(self.ema.state_dict()) if self.ema is not None else None
        state = {"model": model_state, "optimizer": gather_full(self.optimizer.state_dict()),
                 "ema": ema_state, "data_rng": self.data_rng.get_state(), "step": self.step,
                 "total_steps": self.total_steps, "micro_batches": self.micro_batches,
                 "world_size": self.place.world_size}
        if self.distillation is not None:
            state.update(teacher=self.distillation.teacher.state_dict(), round=self.round, round_steps=self.round_steps)
        path = None
        if self.place.is_main:
            published = self.published_model
            if self.validates_everywhere:  # sharded: publish a whole copy
                published = Transformer(self.model.config)
                published.load_state_dict(ema_state["model"] if ema_state is not None else model_state)
            path = save_checkpoint(self.run_dir, step=self.step, model=published, process=self.process,
                                   tokenizer=self.data.tokenizer, train_config=self.config.to_dict(),
                                   training_state=state, metrics=metrics)
        self.place.barrier()
        self.last_saved = self.step
        return path


def train(config: TrainConfig, *, resume: bool = False, progress: bool | None = None,
          device: str | None = None) -> TrainResult:
    """Train (or resume) the run in config.out; returns where the checkpoint is and how it went.

    Ctrl-C or SIGTERM (when called from the main thread) finishes the current step, writes a
    checkpoint and raises KeyboardInterrupt; a second Ctrl-C stops at once, keeping the last
    checkpoint. A non-finite loss raises TrainingDiverged and keeps the last good checkpoint.
    Launched by torchrun, every process runs this function (see distributed.py).
    """
    started = time.perf_counter()
    tune_allocator()
    if config.threads:
        torch.set_num_threads(config.threads)
    place, device = init_distributed(resolve_device(device))
    try:
        return _train(config, resume=resume, progress=progress, device=device, place=place, started=started)
    finally:
        place.close()


def _train(config: TrainConfig, *, resume: bool, progress: bool | None, device: torch.device,
           place: Distributed, started: float) -> TrainResult:
    run = Run(config, resume=resume, device=device, place=place)
    cfg, main = run.config, place.is_main
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = (lambda record: _append_metrics(run.run_dir, record)) if main else (lambda record: None)
    log({"event": "resume" if resume else "start", "step": run.step, "params": run.model.num_parameters(),
         "precision": run.precision, "compiled": run.compiled, "device": str(run.device),
         "world_size": place.world_size, "config": cfg.to_dict()})
    bar = TrainingProgress(run.total_steps or 1, enabled=progress if main else False, start_step=run.step)
    where = f" on {place.world_size} processes ({'FSDP2' if run.validates_everywhere else 'DDP'})" if place.enabled else ""
    bar.message(f"training {run.model.num_parameters() / 1e6:.2f}M parameters ({cfg.preset}, {cfg.process}) on "
                f"{cfg.data}: {run.data.train.numel():,} tokens, {run.precision}"
                f"{', compiled' if run.compiled else ''}{where}")

    # With --minutes the run is sized after timing a few steps (a resumed run keeps its size);
    # process 0's clock decides for all.
    budget = TimeBudget(cfg, run.data, started, first_step=run.step) if cfg.minutes and not run.total_steps else None
    tokens_per_step = cfg.batch_size * cfg.seq_len
    losses, validation, stopped = [], {}, "completed"
    loop_started = window_start = time.perf_counter()
    window_tokens = 0
    run.trained.train()
    with GracefulStop() as stop:
        try:
            while run.total_steps == 0 or run.step < run.total_steps:
                if budget is not None and run.total_steps == 0:
                    sized = place.broadcast(budget.size(run.step))
                    if sized:
                        run.size(sized)
                        bar.set_total(run.total_steps)
                loss, grad_norm, lr, (stop_requested, out_of_time) = run.train_step(
                    lambda: (stop.requested, main and budget is not None and budget.out_of_time()))
                losses.append(loss)
                window_tokens += tokens_per_step
                tokens_per_second = len(losses) * tokens_per_step / max(time.perf_counter() - loop_started, 1e-9)
                if run.step % cfg.log_every == 0 or run.step == run.total_steps:
                    now = time.perf_counter()
                    recent = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    log({"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                         "tokens_per_second": recent, "elapsed": now - started})
                    bar.update(run.step, loss=loss, tokens_per_second=recent)
                if out_of_time and not run.total_steps:  # the budget ran out while still calibrating
                    run.total_steps = run.step
                final = run.step == run.total_steps or out_of_time
                if run.step % cfg.eval_every == 0 or final:
                    est = run.validate(cfg.final_eval_chunks if final else cfg.eval_chunks)
                    if est is not None:
                        validation = {"step": run.step, "val_bits_per_char": est.bits_per_char,
                                      "val_stderr": est.stderr, "val_stderr_chunks": est.stderr_chunks,
                                      "val_bits_per_token": est.bits_per_token, "val_chunks": est.num_chunks,
                                      "val_samples": est.samples_per_chunk, "final": final,
                                      "train_tokens_per_second": tokens_per_second}
                        log({**validation, "elapsed": time.perf_counter() - started})
                        bar.message(f"step {run.step}: validation {est.bits_per_char:.4f} ± {est.stderr:.4f} "
                                    f"bits/char (NELBO, {est.num_chunks} chunks)")
                    run.save(validation)
                    if budget is not None and run.total_steps and not final:
                        run.size(place.broadcast(budget.replan(run.step) if main else None))
                        bar.set_total(run.total_steps)
                if out_of_time:
                    stopped = "time"
                    break
                if stop_requested:
                    if run.step > run.last_saved:
                        run.save(validation)
                    log({"event": "interrupted", "step": run.step})
                    bar.close()
                    bar.message(f"interrupted: checkpoint at step {run.step} in {run.run_dir}; continue with "
                                f"--resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()
    seconds = time.perf_counter() - loop_started
    # other processes need not see process 0's files (resuming does need --out shared by all machines)
    checkpoint = resolve(run.run_dir) if main else run.run_dir / f"checkpoint-{run.last_saved:06d}"
    return TrainResult(run_dir=run.run_dir, checkpoint=checkpoint, step=run.step,
                       total_steps=run.total_steps, num_parameters=run.model.num_parameters(),
                       tokens_per_second=len(losses) * tokens_per_step / max(seconds, 1e-9),
                       seconds=time.perf_counter() - started, validation=validation, losses=losses, stopped=stopped,
                       config=run.config)


class TimeBudget:
    """--minutes: time steps [10, 30) of this invocation, then fix the number of steps that fits
    before the deadline, keeping time for the validations; re-plan at each validation; stop
    early if the machine slows down."""

    def __init__(self, config: TrainConfig, data: Dataset, started: float, *, first_step: int):
        self.config, self.data = config, data
        self.deadline = started + 60 * config.minutes
        self.calibrate_from, self.calibrate_to = first_step + CALIBRATION[0], first_step + CALIBRATION[1]
        self.calibration_started = None
        self.step_seconds = None  # measured; None while calibrating

    def eval_seconds(self, chunks: int) -> float:
        """A validation's time: its tokens at EVAL_SPEEDUP times the training rate, plus saving."""
        n = self.data.validation.shape[0] if chunks <= 0 else min(chunks, self.data.validation.shape[0])
        tokens = n * self.config.eval_samples * self.config.seq_len
        train_tps = self.config.batch_size * self.config.seq_len / self.step_seconds
        return tokens / (EVAL_SPEEDUP * train_tps) + 1.0

    def size(self, step: int) -> int:
        """0 while calibrating; then the total number of steps."""
        if step == self.calibrate_from:
            self.calibration_started = time.perf_counter()
        if step < self.calibrate_to or self.calibration_started is None:
            return 0
        cfg = self.config
        self.step_seconds = (time.perf_counter() - self.calibration_started) / (step - self.calibrate_from)
        remaining = self.deadline - time.perf_counter() - self.eval_seconds(cfg.final_eval_chunks)
        per_step = self.step_seconds + self.eval_seconds(cfg.eval_chunks) / cfg.eval_every
        return max(step + int(0.97 * remaining / per_step), step + 1)

    def replan(self, step: int) -> int:
        """Re-size the run from the average step time since calibration (validations included):
        the first steps run slower than the rest, so the first estimate leaves time unused."""
        now = time.perf_counter()
        self.step_seconds = (now - self.calibration_started) / max(step - self.calibrate_from, 1)
        remaining = self.deadline - now - self.eval_seconds(self.config.final_eval_chunks)
        return max(step + int(0.98 * remaining / self.step_seconds), step + 1)

    def out_of_time(self) -> bool:
        """Whether the last validation must start now to end by the deadline."""
        reserve = self.eval_seconds(self.config.final_eval_chunks) if self.step_seconds else 0.0
        return time.perf_counter() > self.deadline - reserve


class GracefulStop:
    """While training, SIGINT and SIGTERM only raise a flag that the loop reads between steps,
    so a stop never lands between an optimizer update and the state that goes with it. A
    second SIGINT raises KeyboardInterrupt at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
