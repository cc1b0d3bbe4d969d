"""The training loop: one loop for every process (the objective lives in the process).

corpus -> tokenizer -> packed stream -> random windows (B, L) -> process.loss(model, x0) ->
AdamW step (warmup + cosine, clipping, accumulation, bf16 autocast) -> EMA -> periodic
validation (NELBO bits/char on held-out works) and atomic checkpoints -> metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dlm.data.corpora import Corpus, load_corpus
from dlm.data.packing import evenly_spaced, pack_text, random_windows, validation_chunks
from dlm.data.tokenizer import TOKENIZERS, Tokenizer, UnknownCharacterError
from dlm.errors import DlmError
from dlm.models.transformer import Transformer, preset_config
from dlm.processes import PROCESSES
from dlm.processes.likelihood import LikelihoodEstimate, estimate_likelihood
from dlm.training.checkpoint import load_training_state, read_config, resolve, save_checkpoint
from dlm.training.config import TrainConfig
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


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: torch.Tensor  # (N_train,) token stream
    validation: torch.Tensor  # (N_val, L) chunks
    tokens_per_char: float  # of the validation text (eos counts as one character)


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


def validate(model, process, data: Dataset, *, chunks: int, samples: int, seed: int,
             device: torch.device) -> LikelihoodEstimate:
    """NELBO bits/char on `chunks` evenly spaced validation chunks, in fp32, with a fixed seed
    so that successive validations see the same times and masks."""
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return estimate_likelihood(process, model, evenly_spaced(data.validation, chunks).to(device),
                                   samples_per_chunk=samples, batch_size=64, tokens_per_char=data.tokens_per_char,
                                   generator=generator)
    finally:
        model.train(was_training)


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, *, resume: bool = False, progress: bool | None = None,
          device: str | None = None) -> TrainResult:
    """Train (or resume) the run in config.out; returns where the checkpoint is and how it went.

    Ctrl-C or SIGTERM (when called from the main thread) finishes the current step, writes a
    checkpoint and raises KeyboardInterrupt; a second Ctrl-C stops at once, keeping the last
    checkpoint. A non-finite loss raises TrainingDiverged and keeps the last good checkpoint.
    """
    started = time.perf_counter()
    tune_allocator()
    if config.threads:
        torch.set_num_threads(config.threads)
    dev = resolve_device(device)
    run_dir = Path(config.out)

    state = None
    tokenizer = None
    if resume:
        folder = resolve(run_dir)
        stored = read_config(folder)
        config = replace(TrainConfig.from_dict(stored["train"]), out=str(run_dir))
        state = load_training_state(folder)
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    elif (run_dir / "latest").exists() or any(run_dir.glob("checkpoint-*")):
        raise DlmError(f"{run_dir} already holds a training run; continue it with --resume or choose "
                       f"another --out")

    data = prepare_data(config, tokenizer)
    tokenizer = data.tokenizer
    if config.process not in PROCESSES:
        raise DlmError(f"unknown process {config.process!r}; choose one of {sorted(PROCESSES)}")
    process = PROCESSES[config.process].from_config(
        {"name": config.process, "schedule": {"name": config.schedule}, "objective": config.objective},
        vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    try:
        model_config = preset_config(config.preset, vocab_size=tokenizer.vocab_size, max_len=config.seq_len,
                                     attention=process.attention)
    except KeyError as e:
        raise DlmError(str(e.args[0])) from None
    torch.manual_seed(config.seed)
    model = Transformer(model_config).to(dev)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                betas=(config.beta1, config.beta2))
    data_rng = torch.Generator().manual_seed(config.seed)
    noise_rng = torch.Generator(device=dev).manual_seed(config.seed + 1)
    step, total_steps = 0, config.steps or (0 if config.minutes else DEFAULT_STEPS)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        data_rng.set_state(state["data_rng"])
        noise_rng.set_state(state["noise_rng"])
        step, total_steps = state["step"], state["total_steps"]
    precision = resolve_precision(config.precision, dev)
    compiled = compile_blocks(model) if config.compile else False
    eval_model = ema.model if ema is not None else model

    def publish(at_step: int, metrics: dict) -> Path:
        training_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "ema": ema.state_dict() if ema is not None else None,
                          "data_rng": data_rng.get_state(), "noise_rng": noise_rng.get_state(),
                          "step": at_step, "total_steps": total_steps}
        return save_checkpoint(run_dir, step=at_step, model=eval_model, process=process, tokenizer=tokenizer,
                               train_config=config.to_dict(), training_state=training_state, metrics=metrics)

    micro_batch = config.batch_size // config.grad_accum
    tokens_per_step = config.batch_size * config.seq_len
    num_params = model.num_parameters()
    # With --minutes the run is sized after timing a few steps (a resumed run keeps its size).
    deadline = started + 60 * config.minutes if config.minutes and total_steps == 0 else None
    calibrate_from, calibrate_to = step + CALIBRATION[0], step + CALIBRATION[1]
    run_dir.mkdir(parents=True, exist_ok=True)
    _append_metrics(run_dir, {"event": "resume" if resume else "start", "step": step, "params": num_params,
                              "precision": precision, "compiled": compiled, "device": str(dev),
                              "config": config.to_dict()})
    bar = TrainingProgress(total_steps or 1, enabled=progress, start_step=step)
    bar.message(f"training {num_params / 1e6:.2f}M parameters ({config.preset}, {config.process}) on "
                f"{config.data}: {data.train.numel():,} tokens, {precision}{', compiled' if compiled else ''}")

    losses: list[float] = []
    last_saved, validation, stopped = (step if state is not None else -1), {}, "completed"
    loop_started, calib_start, window_start, window_tokens = time.perf_counter(), None, time.perf_counter(), 0
    tokens_done = 0
    model.train()
    stop = GracefulStop()
    try:
        stop.__enter__()
        while total_steps == 0 or step < total_steps:
            if total_steps == 0 and step == calibrate_from:
                calib_start = time.perf_counter()
            if total_steps == 0 and step == calibrate_to:
                step_seconds = (time.perf_counter() - calib_start) / (calibrate_to - calibrate_from)
                total_steps = _size_run(config, data, step, step_seconds, deadline)
                bar.set_total(total_steps)
            lr = lr_at(step, lr=config.lr, warmup_steps=config.warmup_steps,
                       total_steps=total_steps or 10**9, min_lr_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(config.grad_accum):
                x0 = random_windows(data.train, micro_batch, config.seq_len, generator=data_rng).to(dev)
                with autocast(precision, dev):
                    out = process.loss(model, x0, generator=noise_rng)
                (out.loss / config.grad_accum).backward()
                loss_sum += out.loss.item()
            loss = loss_sum / config.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                _append_metrics(run_dir, {"event": "diverged", "step": step + 1, "loss": loss, "grad_norm": grad_norm})
                where = (f"the last good checkpoint (step {last_saved}) is in {run_dir}" if last_saved >= 0
                         else "no checkpoint had been written yet")
                raise TrainingDiverged(
                    f"the loss became {loss} (gradient norm {grad_norm}) at step {step + 1}; training stopped and "
                    f"{where}. Try a lower --lr (now {config.lr}), more --warmup-steps, or --precision fp32.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            losses.append(loss)
            tokens_done += tokens_per_step
            window_tokens += tokens_per_step

            if step % config.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                _append_metrics(run_dir, {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                          "tokens_per_second": tps, "elapsed": now - started})
                bar.update(step, loss=loss, tokens_per_second=tps)
            out_of_time = deadline is not None and total_steps > 0 and \
                time.perf_counter() > deadline - _final_eval_seconds(config, data, loop_started, tokens_done)
            final = step == total_steps or out_of_time
            if step % config.eval_every == 0 or final:
                chunks = config.final_eval_chunks if final else config.eval_chunks
                est = validate(eval_model, process, data, chunks=chunks, samples=config.eval_samples,
                               seed=config.seed + 2, device=dev)
                validation = {"step": step, "val_bits_per_char": est.bits_per_char, "val_stderr": est.stderr,
                              "val_bits_per_token": est.bits_per_token, "val_chunks": est.num_chunks,
                              "val_samples": est.samples_per_chunk, "final": final,
                              "train_tokens_per_second": tokens_done / max(time.perf_counter() - loop_started, 1e-9)}
                _append_metrics(run_dir, {**validation, "elapsed": time.perf_counter() - started})
                bar.message(f"step {step}: validation {est.bits_per_char:.4f} ± {est.stderr:.4f} bits/char "
                            f"(NELBO, {est.num_chunks} chunks)")
                publish(step, validation)
                last_saved = step
            if out_of_time:
                stopped = "time"
                break
            if stop.requested:
                if step > last_saved:
                    publish(step, validation)
                _append_metrics(run_dir, {"event": "interrupted", "step": step})
                bar.close()
                bar.message(f"interrupted: checkpoint at step {step} in {run_dir}; continue with --resume")
                raise KeyboardInterrupt
    finally:
        stop.__exit__()
        bar.close()
    seconds = time.perf_counter() - loop_started
    return TrainResult(run_dir=run_dir, checkpoint=resolve(run_dir), step=step, total_steps=total_steps,
                       num_parameters=num_params, tokens_per_second=tokens_done / max(seconds, 1e-9),
                       seconds=time.perf_counter() - started, validation=validation, losses=losses, stopped=stopped)


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


def _eval_tokens(config: TrainConfig, data: Dataset, chunks: int) -> int:
    n = data.validation.shape[0] if chunks <= 0 else min(chunks, data.validation.shape[0])
    return n * config.eval_samples * config.seq_len


def _final_eval_seconds(config: TrainConfig, data: Dataset, loop_started: float, tokens_done: int) -> float:
    """Time to keep for the last validation and checkpoint (a forward pass costs about a third
    of a training step, but validation runs in fp32 without compile: EVAL_SPEEDUP)."""
    train_tps = tokens_done / max(time.perf_counter() - loop_started, 1e-9)
    return _eval_tokens(config, data, config.final_eval_chunks) / max(EVAL_SPEEDUP * train_tps, 1.0) + 2.0


def _size_run(config: TrainConfig, data: Dataset, step: int, step_seconds: float, deadline: float) -> int:
    """With --minutes: how many steps fit before the deadline, leaving time for validations."""
    eval_tps = EVAL_SPEEDUP * config.batch_size * config.seq_len / step_seconds
    final_eval = _eval_tokens(config, data, config.final_eval_chunks) / eval_tps + 2.0
    per_eval = _eval_tokens(config, data, config.eval_chunks) / eval_tps + 0.5
    remaining = deadline - time.perf_counter() - final_eval
    per_step = step_seconds + per_eval / config.eval_every
    return max(step + int(0.97 * remaining / per_step), step + 1)
