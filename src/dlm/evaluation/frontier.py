"""The quality-against-speed frontier: every model and decoding setting as one point (tokens/s,
judge bits/char), AR and diffusion measured by one protocol (dlm.evaluation.quality).

Models (cached; each trained for a fixed number of steps, so that a rerun trains the same ones; the
minutes each took are measured and reported):
- AR models of three budgets or sizes: the contestant preset at the full budget (the model the
  adaptation starts from), at a quarter of it, and another preset (or budget);
- masked diffusion trained from scratch for the AR model's steps plus the adaptation's share;
- block diffusion adapted from the AR model (`--init-from`, logit shift, causal clean stream,
  attention annealing, block-size warm-up, the clean stream's AR loss);
- students of self-distillation through time, from the scratch masked model and the adapted one.

`best_speedup_at_equal_quality` (per batch size): for each diffusion row, the fastest AR row that
writes text at least as good (`quality.at_least_as_good`), and the ratio of their tokens/s; the
best ratio over the diffusion rows. A diffusion row better than every AR row has no AR row of its
quality to be compared with, and gets no ratio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dlm.data.corpora import load_corpus
from dlm.errors import DlmError
from dlm.evaluation.judges import ARJudge, NgramJudge
from dlm.evaluation.quality import Judges, QualityProtocol, at_least_as_good, held_out_prompts, judge_training
from dlm.sampling import SAMPLERS, Canvas
from dlm.training.cached import ensure_trained
from dlm.training.checkpoint import Checkpoint
from dlm.training.config import TrainConfig


@dataclass(frozen=True)
class Setting:
    """One way to decode a model: a sampler, its step budget for the protocol's length, its knobs."""
    name: str
    sampler: str
    tokens_per_step: float = 1.0  # the step budget: length / this many steps (a threshold may use fewer)
    knobs: dict = field(default_factory=dict)

    def steps(self, length: int) -> int:
        return max(math.ceil(length / self.tokens_per_step), 1)


@dataclass(frozen=True)
class Contestant:
    name: str  # the row's model name
    family: str  # "AR", or the diffusion family drawn as one front ("masked", "adapted", "distilled")
    config: TrainConfig
    settings: tuple[Setting, ...]

    @property
    def autoregressive(self) -> bool:
        return self.family == "AR"


@dataclass(frozen=True)
class FrontierSuite:
    name: str
    preset: str = "small"  # the contestants
    other_preset: str = "tiny"  # one more AR model, of this preset ...
    other_steps: int = 1000  # ... trained this many steps
    data: str = "shakespeare"
    seq_len: int = 256
    batch_size: int = 16
    ar_steps: int = 600  # the AR contestant (and the start of the adaptation): about 7 min here
    short_ar_steps: int = 150  # an AR model of a quarter of the budget
    block_size: int = 4  # the adapted block model's
    adapt_steps: int = 48  # at most 25% of the AR model's minutes (a block step reads 2L + K + 1 tokens: 2.1-2.2 s here)
    adapt_lr: float = 1e-3
    adapt_anneal_steps: int = 24
    adapt_warmup_steps: int = 0  # block-size warm-up: at 100 steps it cost 0.035 bits/char (benchmarks/adaptation.py)
    adapt_ar_weight: float = 0.5
    scratch_steps: int = 900  # masked from scratch: about the AR model's minutes plus the adaptation's
    distill_rounds: int = 3
    distill_round_steps: int = 80
    distill_lr: float = 3e-4
    masked_teacher_steps: int = 128  # the scratch masked model's sampling steps in round 0 (one per token)
    compile: bool = True
    judge_preset: str = "base"
    judge_steps: int = 1000  # base at 512 x 8: about 2.5 s a step here, > 4 x the longest contestant (masked, ~9.5 min)
    judge_seq_len: int = 512
    judge_batch_size: int = 8
    protocol: QualityProtocol = field(default_factory=QualityProtocol)

    def base(self, out: Path, **settings) -> TrainConfig:
        """A contestant's training: the suite's data, preset, context and batch, a fixed number of steps."""
        common = dict(out=str(out), data=self.data, preset=self.preset, seq_len=self.seq_len,
                      batch_size=self.batch_size, final_eval_chunks=256, compile=self.compile)
        steps = settings.get("steps", 0)
        return TrainConfig(**{**common, "eval_every": max(steps // 4, 1), **settings})

    def judge(self, cache: Path) -> TrainConfig:
        return judge_training(cache / "judge", data=self.data, preset=self.judge_preset, steps=self.judge_steps,
                              seq_len=self.judge_seq_len, batch_size=self.judge_batch_size, compile=self.compile)

    def contestants(self, cache: Path) -> list[Contestant]:
        """Every model, in training order (a model comes after the one it starts from)."""
        L = self.protocol.length
        ar_settings = (Setting("KV cache", "autoregressive"),)
        ar = self.base(cache / "ar", process="ar", steps=self.ar_steps)
        adapted = self.base(cache / "adapted", process="block", block_size=self.block_size, init_from=ar.out,
                            logit_shift=True, clean_attention="causal", anneal_steps=self.adapt_anneal_steps,
                            block_warmup_steps=self.adapt_warmup_steps, ar_loss_weight=self.adapt_ar_weight,
                            steps=self.adapt_steps, lr=self.adapt_lr, warmup_steps=10,
                            ema_decay=0.0)  # over a hundred steps an EMA would still be mostly the AR model
        masked = self.base(cache / "masked", process="masked", steps=self.scratch_steps)
        b = self.block_size
        distill = dict(distill_rounds=self.distill_rounds, steps=self.distill_rounds * self.distill_round_steps,
                       optimizer="adamw", lr=self.distill_lr, min_lr_ratio=1.0, warmup_steps=10, weight_decay=0.0,
                       ema_decay=0.95)  # a horizon of 20 steps, well inside a round
        masked_student = self.base(cache / "masked-sdtt", process="masked", distill_from=masked.out,
                                   teacher_steps=self.masked_teacher_steps, **distill)
        block_rounds = min(self.distill_rounds, b.bit_length() - 1)  # from b steps per block down to at least 1
        adapted_student = self.base(cache / "adapted-sdtt", process="block", distill_from=adapted.out, teacher_steps=b,
                                    **{**distill, "distill_rounds": block_rounds,
                                       "steps": block_rounds * self.distill_round_steps})
        shrink = 2 ** self.distill_rounds
        masked_settings = tuple(Setting(f"{L // k} steps", "ancestral", k) for k in (1, 2, 4, 8)) + tuple(
            Setting(f"threshold {th}, blocks of 32, dual cache", "confidence", 1,
                    {"block_length": 32, "threshold": th, "cache": "dual"}) for th in (0.9, 0.7))
        block_settings = tuple(Setting(f"{b // k} step{'s' if b // k > 1 else ''} per block", "block", k) for k in (1, 2, 4, 8) if k <= b) + tuple(
            Setting(f"threshold {th}", "block", 1, {"threshold": th}) for th in (0.9, 0.7, 0.5)) + (
            Setting("draft and verify", "speculative"),)
        return [
            Contestant("ar", "AR", ar, ar_settings),
            Contestant("ar-short", "AR", self.base(cache / "ar-short", process="ar", steps=self.short_ar_steps),
                       ar_settings),
            Contestant(f"ar-{self.other_preset}-{self.other_steps}", "AR",
                       self.base(cache / f"ar-{self.other_preset}-{self.other_steps}", process="ar",
                                 preset=self.other_preset, steps=self.other_steps), ar_settings),
            Contestant("masked", "masked", masked, masked_settings),
            Contestant("adapted", "adapted", adapted, block_settings),
            Contestant("masked-sdtt", "distilled", masked_student,
                       tuple(Setting(f"{self.masked_teacher_steps // shrink // k} steps", "ancestral",
                                     L / (self.masked_teacher_steps // shrink // k)) for k in (1, 2))),
            Contestant("adapted-sdtt", "distilled", adapted_student,
                       (Setting(f"{b >> block_rounds} step{'s' if b >> block_rounds > 1 else ''} per block", "block",
                                b / (b >> block_rounds)),)),
        ]


SUITES = {
    "small": FrontierSuite("small"),
    # the frontier section of `dlm bench --suite full`: tiny contestants, AR at three budgets
    "bench-full": FrontierSuite("bench-full", preset="tiny", other_preset="tiny", other_steps=500, seq_len=256,
                                ar_steps=1000, short_ar_steps=250, adapt_steps=100, scratch_steps=1250,
                                judge_steps=1600),
}


# -- measuring ------------------------------------------------------------------------------


def decode(ckpt: Checkpoint, setting: Setting, prompts: list[str], protocol: QualityProtocol, batch: int,
           seed: int) -> dict:
    """Every prompt continued by protocol.length tokens, `batch` prompts per call (one untimed warm-up
    call first) -> texts, nfe per sample, tokens/s and tokens per forward."""
    tok, device = ckpt.tokenizer, next(ckpt.model.parameters()).device
    sampler = SAMPLERS[setting.sampler]
    L = protocol.length
    knobs = dict(setting.knobs)
    if protocol.top_p is not None:
        knobs["top_p"] = protocol.top_p

    def call(group: list[str], index: int):
        canvas = Canvas.for_generation([tok.encode(p) for p in group], L, fill_id=tok.mask_id, pad_id=tok.pad_id,
                                       device=device)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
        out = sampler(ckpt.model, ckpt.process, canvas, steps=setting.steps(L), temperature=protocol.temperature,
                      generator=generator, **knobs)
        return [tok.decode_until_eos(canvas.generated(out.tokens, b)) for b in range(len(group))], out

    call(prompts[:batch], -1)  # untimed: allocations, kernel choices
    texts, nfe, seconds = [], 0, 0.0
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        started = time.perf_counter()
        got, out = call(group, i)
        seconds += time.perf_counter() - started
        texts += got
        nfe += out.nfe * len(group)
    tokens = L * len(prompts)
    return {"texts": texts, "nfe": nfe / len(prompts), "tokens_per_forward": tokens / max(nfe, 1),
            "tokens_per_second": tokens / seconds, "seconds": seconds}


def measure(contestants: list[tuple[Contestant, Checkpoint]], judges: Judges, protocol: QualityProtocol,
            log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Rows for every (model, setting, batch size), and the held-out text's own row (the reference)."""
    data = contestants[0][1].config["train"]["data"]
    prompts, truths = held_out_prompts(data, protocol.samples, protocol.prompt_chars, protocol.length)
    reference = {"model": "held-out text", "setting": "what follows each prompt", **judges.score(prompts, truths)}
    rows = []
    for contestant, ckpt in contestants:
        trained = ckpt.metrics
        for setting in contestant.settings:
            for batch in protocol.batches:
                got = decode(ckpt, setting, prompts, protocol, batch, protocol.seed)
                row = {"model": contestant.name, "family": contestant.family, "process": ckpt.process.name,
                       "setting": setting.name, "batch": batch, "tokens_per_second": got["tokens_per_second"],
                       "tokens_per_forward": got["tokens_per_forward"], "nfe": got["nfe"],
                       **judges.score(prompts, got["texts"]), "parameters": ckpt.model.num_parameters(),
                       "train_steps": ckpt.step, "train_minutes": trained.get("train_minutes"),
                       "example": (prompts[0] + got["texts"][0])[:160]}
                rows.append(row)
                log(f"  {contestant.name:12s} {setting.name:34s} batch {batch}: {row['tokens_per_second']:8.0f} tok/s "
                    f"{row['tokens_per_forward']:5.2f} tok/fwd  judge {row['judge_bits_per_char']:.3f} ± "
                    f"{row['judge_stderr']:.3f}  entropy {row['entropy_bits']:.2f}")
    return rows, reference


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both speed and judged quality, fastest first."""
    front = [r for r in rows if not any(o is not r and o["tokens_per_second"] >= r["tokens_per_second"]
                                        and o["judge_bits_per_char"] <= r["judge_bits_per_char"]
                                        and (o["tokens_per_second"], o["judge_bits_per_char"]) !=
                                        (r["tokens_per_second"], r["judge_bits_per_char"]) for o in rows)]
    return sorted(front, key=lambda r: -r["tokens_per_second"])


def best_speedup(rows: list[dict], protocol: QualityProtocol, reference_entropy: float, batch: int,
                 autoregressive: Callable[[dict], bool], min_tokens_per_forward: float = 0.0) -> dict | None:
    """The best ratio of a diffusion row's tokens/s to that of the fastest AR row at least as good
    (see the module docstring); None when no diffusion row has an AR row to compare with."""
    ar_rows = [r for r in rows if r["batch"] == batch and autoregressive(r)]
    best = None
    for row in rows:
        if row["batch"] != batch or autoregressive(row) or row["tokens_per_forward"] < min_tokens_per_forward:
            continue
        fair = [a for a in ar_rows if at_least_as_good(a, row, protocol, reference_entropy)]
        if not fair:
            continue
        fastest = max(fair, key=lambda a: a["tokens_per_second"])
        ratio = row["tokens_per_second"] / fastest["tokens_per_second"]
        if best is None or ratio > best["ratio"]:
            best = {"ratio": ratio, "diffusion_row": row, "ar_row": fastest}
    return best


@dataclass
class FrontierResult:
    suite: dict
    machine: dict
    rows: list
    reference: dict
    models: list  # per model: name, family, process, parameters, steps, minutes, validation bound
    judge: dict
    best_speedup_at_equal_quality: dict | None
    best_speedup_at_equal_quality_batch8: dict | None
    best_speedup_with_4_tokens_per_forward: dict | None
    seconds: float

    def to_json(self) -> dict:
        def row(r):
            return None if r is None else {k: v for k, v in r.items()}

        out = asdict(self)
        for key in ("best_speedup_at_equal_quality", "best_speedup_at_equal_quality_batch8",
                    "best_speedup_with_4_tokens_per_forward"):
            out[key] = row(getattr(self, key))
        return out


def train_minutes(ckpt: Checkpoint) -> float | None:
    """Minutes the run's optimizer steps take on this machine: its step count times its step time,
    read from metrics.jsonl as the lower quartile of its logged windows' seconds per step. The lower
    quartile, because this machine is shared: another job only ever slows a window down, and a run
    trained for a fixed number of steps computes the same model however long it waited."""
    import json

    path = ckpt.path.parent / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines()]
    except (OSError, ValueError):
        return None
    logged = [(r["step"], r["elapsed"]) for r in records if "loss" in r and "elapsed" in r]
    per_step = sorted((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(logged, logged[1:])
                      if s1 > s0 and t1 > t0)  # a resumed run restarts its clock
    if not per_step:
        return None
    return ckpt.step * per_step[len(per_step) // 4] / 60


def run_frontier(suite: FrontierSuite, cache: Path, *, log: Callable[[str], None] = print,
                 progress: bool = False) -> FrontierResult:
    from dlm.evaluation.bench import machine

    started = time.perf_counter()
    trained = []
    for contestant in suite.contestants(cache):
        log(f"model {contestant.name} ({contestant.family}): {contestant.config.process}, "
            f"{contestant.config.steps} steps")
        ckpt = ensure_trained(contestant.config, progress=progress, log=lambda text: log("  " + text),
                              what=contestant.name)[0]
        ckpt.metrics["train_minutes"] = train_minutes(ckpt)
        trained.append((contestant, ckpt))
    log(f"judge: AR {suite.judge_preset}, {suite.judge_steps} steps")
    judge_ckpt = ensure_trained(suite.judge(cache), progress=progress, log=lambda text: log("  " + text),
                                what="judge")[0]
    longest = max(c.metrics["train_minutes"] or 0.0 for _, c in trained)
    judge_minutes = train_minutes(judge_ckpt)
    if judge_minutes is not None and judge_minutes < suite.protocol.judge_factor * longest:
        log(f"warning: the judge trained {judge_minutes:.1f} min, less than {suite.protocol.judge_factor:g} x the "
            f"longest contestant's {longest:.1f} min on this machine")
    corpus = load_corpus(suite.data)
    judges = Judges(ARJudge(judge_ckpt), NgramJudge("\n".join(corpus.train), order=suite.protocol.ngram_order,
                                                     max_chars=suite.protocol.ngram_chars))
    log("measuring every setting")
    rows, reference = measure(trained, judges, suite.protocol, log=log)
    is_ar = {c.name: c.autoregressive for c, _ in trained}

    def autoregressive(r):
        return is_ar[r["model"]]

    H = reference["entropy_bits"]
    models = [{"model": c.name, "family": c.family, "process": k.process.name, "parameters": k.model.num_parameters(),
               "steps": k.step, "train_minutes": k.metrics["train_minutes"],
               "val_bits_per_char": k.metrics.get("val_bits_per_char"), "val_stderr": k.metrics.get("val_stderr"),
               "bound": k.process.bound, "checkpoint": str(k.path)} for c, k in trained]
    judge = {"preset": suite.judge_preset, "steps": judge_ckpt.step, "train_minutes": judge_minutes,
             "parameters": judge_ckpt.model.num_parameters(),
             "val_bits_per_char": judge_ckpt.metrics.get("val_bits_per_char"),
             "longest_contestant_minutes": longest, "ngram_order": suite.protocol.ngram_order}
    batches = suite.protocol.batches
    return FrontierResult(
        suite=asdict(suite), machine=machine(), rows=rows, reference=reference, models=models, judge=judge,
        best_speedup_at_equal_quality=best_speedup(rows, suite.protocol, H, batches[0], autoregressive),
        best_speedup_at_equal_quality_batch8=(best_speedup(rows, suite.protocol, H, batches[-1], autoregressive)
                                              if len(batches) > 1 else None),
        best_speedup_with_4_tokens_per_forward=best_speedup(rows, suite.protocol, H, batches[0], autoregressive,
                                                            min_tokens_per_forward=4.0),
        seconds=time.perf_counter() - started)


def suite_named(name: str) -> FrontierSuite:
    if name not in SUITES:
        raise DlmError(f"unknown frontier suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[name]
