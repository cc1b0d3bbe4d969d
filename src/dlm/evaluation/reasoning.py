"""`dlm bench --suite reasoning`: where diffusion should win. Per reasoning task (dlm.data.tasks),
a masked diffusion model and an AR model of the same preset are trained for the same minutes on
the same prompt/response pairs, then asked to solve held-out test instances:

- exact-solve accuracy (the task's checker) with its standard error, and the validity rate
  (well-formed answers), for every decoding rule of each model: masked diffusion fills the whole
  response by confidence (easiest first: probability, margin or entropy) and by ReMDM; AR writes
  left to right, greedy and sampled;
- accuracy against training minutes (models trained for fractions of the budget) and against
  decoding steps (masked diffusion with fewer steps than response tokens);
- accuracy against the instance's difficulty, where the test set mixes several (the planning
  distance of `paths`).

The contestants and their decoders are data (`Contestant`, `Decoder`): a decoder runs on a model
whose process lists its sampler, and nothing here compares process names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dlm.data.tasks import TASKS, Instance, load_task, task_splits
from dlm.errors import DlmError
from dlm.sampling import SAMPLERS, Canvas
from dlm.training.cached import ensure_trained
from dlm.training.checkpoint import Checkpoint
from dlm.training.config import TrainConfig


@dataclass(frozen=True)
class Decoder:
    label: str
    sampler: str  # a SAMPLERS entry; the decoder runs on models whose process lists it
    knobs: tuple[tuple[str, object], ...] = ()
    steps_per_token: float = 1.0  # forward passes per response token (AR: ignored, one per token)
    parallel: bool = False  # it can commit several tokens a pass: measured against fewer steps too


@dataclass(frozen=True)
class Contestant:
    name: str  # the report's key
    process: str
    decoders: tuple[Decoder, ...]  # the first is the headline figure
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig overrides of this contestant


MASKED_DECODERS = (
    Decoder("confidence", "confidence", (("temperature", 0.0), ("confidence", "prob")), parallel=True),
    Decoder("margin", "confidence", (("temperature", 0.0), ("confidence", "margin"))),
    Decoder("entropy", "confidence", (("temperature", 0.0), ("confidence", "entropy"))),
    Decoder("remdm", "remdm", (("temperature", 1.0), ("schedule", "cap"), ("eta", 0.02)), steps_per_token=2.0),
)
AR_DECODERS = (
    Decoder("greedy", "autoregressive", (("temperature", 0.0),)),
    Decoder("sampled", "autoregressive", (("temperature", 1.0),)),
)
CONTESTANTS = (Contestant("masked", "masked", MASKED_DECODERS), Contestant("ar", "ar", AR_DECODERS))


@dataclass(frozen=True)
class ReasoningSuite:
    name: str
    tasks: tuple[str, ...]  # --data specs
    minutes: float  # training budget of each model
    preset: str = "tiny"
    steps: int = 0  # > 0: each model trains this many steps instead (a loaded machine then changes only
    # the minutes, never the weights); the report gives the minutes each run took
    minutes_grid: tuple[float, ...] = (0.25, 0.5)  # fractions of `minutes` also trained, for accuracy vs minutes
    steps_grid: tuple[float, ...] = (0.125, 0.25, 0.5)  # steps per response token of the headline masked decoder
    n_test: int = 500  # held-out instances each headline figure is measured on
    n_curve: int = 200  # instances for each point of the curves
    batch_size: int = 32
    lr: float = 4e-3
    threads: int = 0  # torch threads while training (0 = torch's default)
    compile: bool = False  # torch.compile's start-up would eat a large part of a few minutes' budget
    decode_batch: int = 100
    contestants: tuple[Contestant, ...] = CONTESTANTS
    seed: int = 0


TASK_SPECS = ("sudoku6:givens=14,train=30000", "countdown:numbers=3,max_number=30,train=30000",
              "paths:degree=2,length=5,min_length=2,train=30000")
REASONING_SUITES = {
    # equal fixed steps (the measured setting: 33 minutes a model on the loaded 2-core machine, one
    # thread); --minutes M trains M minutes a model instead
    "reasoning": ReasoningSuite("reasoning", TASK_SPECS, minutes=10.0, steps=800, threads=1),
    # a smoke run: the headline decoders only, 100 test instances (not the 500 the figures need),
    # one more point per curve
    "reasoning-quick": ReasoningSuite("reasoning-quick", TASK_SPECS, minutes=1.0, minutes_grid=(0.5,),
                                      steps_grid=(0.25,), n_test=100, n_curve=50, threads=1,
                                      contestants=tuple(replace(c, decoders=c.decoders[:1]) for c in CONTESTANTS)),
}


def chosen_tasks(suite_specs: tuple[str, ...], wanted: list[str]) -> tuple[str, ...]:
    """--task choices as --data specs: a bare name takes the suite's spec of that task (or the task's
    defaults when the suite has none), a full spec (name:key=value,...) is used as given."""
    specs = []
    for w in wanted:
        name = w.partition(":")[0]
        if name not in TASKS:
            raise DlmError(f"unknown task {name!r}; choose from {', '.join(TASKS)} (or a spec such as "
                           f"sudoku:givens=30)")
        if ":" in w:
            load_task(w)  # its parameters checked now, not after an hour of training
            specs.append(w)
        else:
            specs.append(next((s for s in suite_specs if s.partition(":")[0] == name), name))
    return tuple(dict.fromkeys(specs))


def reasoning_suite(name: str, *, tasks: list[str] | None = None, **overrides) -> ReasoningSuite:
    """The named suite, with `tasks` (see chosen_tasks) and other fields replaced."""
    if name not in REASONING_SUITES:
        raise DlmError(f"unknown reasoning suite {name!r}; choose one of {', '.join(REASONING_SUITES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if tasks:
        overrides["tasks"] = chosen_tasks(REASONING_SUITES[name].tasks, tasks)
    if "minutes" in overrides:  # a minutes budget replaces a suite's fixed steps
        overrides.setdefault("steps", 0)
    return replace(REASONING_SUITES[name], **overrides)


# -- solving ---------------------------------------------------------------------------


def decode(ckpt: Checkpoint, prompts: list[str], length: int, decoder: Decoder, *, steps: int | None = None,
           seed: int = 0, batch: int = 100) -> list[str]:
    """Each prompt's response: `length` positions after the prompt (a training row's layout), cut
    at end-of-text. `steps` defaults to the decoder's steps per token times `length`."""
    tok = ckpt.tokenizer
    device = next(ckpt.model.parameters()).device
    steps = steps or max(1, round(decoder.steps_per_token * length))
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo:lo + batch]
        canvas = Canvas.for_generation([tok.encode(p) for p in chunk], length, fill_id=tok.mask_id,
                                       pad_id=tok.pad_id, device=device)
        result = SAMPLERS[decoder.sampler](ckpt.model, ckpt.process, canvas, steps=steps, generator=generator,
                                           **dict(decoder.knobs))
        out += [tok.decode_until_eos(canvas.generated(result.tokens, b)) for b in range(len(chunk))]
    return out


def score(task, instances: list[Instance], responses: list[str]) -> dict:
    """Exact-solve accuracy with its binomial standard error, and the validity rate."""
    solved = [task.is_solved(i.prompt, r) for i, r in zip(instances, responses)]
    valid = [task.is_valid(i.prompt, r) for i, r in zip(instances, responses)]
    n = len(solved)
    acc = sum(solved) / max(n, 1)
    return {"accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / max(n, 1)), "valid_rate": sum(valid) / max(n, 1),
            "n_test": n, "solved": solved}


def solve(ckpt: Checkpoint, task, instances: list[Instance], decoder: Decoder, *, steps: int | None = None,
          seed: int = 0, batch: int = 100) -> dict:
    started = time.perf_counter()
    # a training row is prompt + response + end-of-text padding up to seq_len: generate the rest of it,
    # so rows with prompts of one length decode together
    prompts = [i.prompt for i in instances]
    responses: list[str] = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for k, p in enumerate(prompts):
        by_len.setdefault(len(ckpt.tokenizer.encode(p)), []).append(k)
    for n_prompt, rows in sorted(by_len.items()):
        texts = decode(ckpt, [prompts[k] for k in rows], task_length(ckpt, n_prompt), decoder,
                       steps=steps, seed=seed, batch=batch)
        for k, text in zip(rows, texts):
            responses[k] = text
    row = score(task, instances, responses)
    row.update(seconds=time.perf_counter() - started, example=instances[0].prompt + responses[0])
    return row | {"responses": responses}


def task_length(ckpt: Checkpoint, prompt_tokens: int) -> int:
    """Positions to generate after a prompt: the rest of the training row."""
    seq_len = int(ckpt.config.get("train", {}).get("seq_len") or ckpt.context_length)
    return max(seq_len - prompt_tokens, 1)


# -- the run ---------------------------------------------------------------------------


@dataclass
class TaskResult:
    task: str
    spec: str
    models: dict  # contestant -> {headline figures, params, train_minutes, decoders: [...]}
    minutes_curve: list = field(default_factory=list)  # {model, minutes, steps, accuracy, stderr, n}
    steps_curve: list = field(default_factory=list)  # {model, decoder, steps, steps_per_token, accuracy, stderr}
    difficulty_curve: list = field(default_factory=list)  # {model, difficulty, accuracy, stderr, n}


@dataclass
class ReasoningResult:
    suite: dict
    machine: dict
    seconds: float
    tasks: list[TaskResult]


def train_minutes(ckpt: Checkpoint) -> float:
    """Wall-clock minutes of the run that made the checkpoint (from its metrics.jsonl)."""
    import json

    path = Path(ckpt.path).parent / "metrics.jsonl"
    elapsed = 0.0
    try:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            elapsed = max(elapsed, float(record.get("elapsed", 0.0)))
    except (OSError, ValueError):
        return float(ckpt.config.get("train", {}).get("minutes") or math.nan)
    return elapsed / 60


def run_reasoning(suite: ReasoningSuite, cache: Path, *, log: Callable[[str], None] = print,
                  progress: bool = False) -> ReasoningResult:
    from dlm.evaluation.bench import machine

    started = time.perf_counter()
    results = []
    for spec in suite.tasks:
        task = load_task(spec)
        if task.p["test"] < suite.n_test:
            task = load_task(spec + f",test={suite.n_test}")
        spec = task.spec
        test = task_splits(task)["test"][:suite.n_test]
        curve = test[:suite.n_curve]
        log(f"task {spec}: {len(test)} test instances, rows of {task.seq_len} tokens")

        def trained(who: Contestant, fraction: float) -> Checkpoint:
            steps, minutes = round(suite.steps * fraction), round(suite.minutes * fraction, 3)
            out = cache / task.name / (f"{who.name}-{steps}steps" if steps else f"{who.name}-{minutes:g}min")
            config = TrainConfig(out=str(out), process=who.process, preset=suite.preset, data=spec,
                                 seq_len=task.seq_len, minutes=0.0 if steps else minutes, steps=steps,
                                 batch_size=suite.batch_size, lr=suite.lr,
                                 threads=suite.threads, compile=suite.compile, eval_chunks=16,
                                 final_eval_chunks=32, eval_every=10**9, seed=suite.seed, **dict(who.train))
            log(f"  {who.name}: {suite.preset}, " + (f"{steps} steps" if steps else f"{minutes:g} min"))
            return ensure_trained(config, progress=progress, log=lambda text: log("    " + text),
                                  what=f"{who.name} {task.name} model")[0]

        models, minutes_curve, steps_curve, difficulty_curve = {}, [], [], []
        for who in suite.contestants:
            ckpt = trained(who, 1.0)
            decoders = [d for d in who.decoders if d.sampler in ckpt.process.samplers]
            rows = []
            for d in decoders:
                row = solve(ckpt, task, test, d, seed=suite.seed, batch=suite.decode_batch)
                log(f"    {who.name} {d.label}: {row['accuracy']:.3f} ± {row['stderr']:.3f} solved, "
                    f"{row['valid_rate']:.3f} valid ({row['seconds']:.0f} s)")
                rows.append({"decoder": d.label, "sampler": d.sampler, "knobs": dict(d.knobs), **row})
            head = rows[0]
            models[who.name] = {"accuracy": head["accuracy"], "stderr": head["stderr"],
                                "valid_rate": head["valid_rate"], "n_test": head["n_test"],
                                "params": ckpt.model.num_parameters(), "train_minutes": train_minutes(ckpt),
                                "budget_minutes": suite.minutes, "steps": ckpt.step, "process": who.process,
                                "preset": suite.preset, "decoder": head["decoder"], "example": head["example"],
                                "val_bits_per_char": ckpt.metrics.get("val_bits_per_char", math.nan),
                                "decoders": [{k: v for k, v in r.items() if k not in ("solved", "responses")}
                                             for r in rows]}
            difficulties = sorted({i.difficulty for i in test})
            if len(difficulties) > 1:
                for level in difficulties:
                    picked = [s for i, s in zip(test, head["solved"]) if i.difficulty == level]
                    acc = sum(picked) / len(picked)
                    difficulty_curve.append({"model": who.name, "difficulty": level, "accuracy": acc, "n": len(picked),
                                             "stderr": math.sqrt(acc * (1 - acc) / len(picked))})
            minutes_curve.append({"model": who.name, "minutes": models[who.name]["train_minutes"], "steps": ckpt.step,
                                  **_point(solve(ckpt, task, curve, decoders[0], seed=suite.seed,
                                                 batch=suite.decode_batch))})
            for fraction in suite.minutes_grid:
                small = trained(who, fraction)
                minutes_curve.append({"model": who.name, "minutes": train_minutes(small), "steps": small.step,
                                      **_point(solve(small, task, curve, decoders[0], seed=suite.seed,
                                                     batch=suite.decode_batch))})
            for d in decoders[:1]:
                if not d.parallel:  # one pass per token whatever `steps` says: nothing to vary
                    continue
                for per_token in (*suite.steps_grid, d.steps_per_token):
                    point = solve(ckpt, task, curve, replace(d, steps_per_token=per_token), seed=suite.seed,
                                  batch=suite.decode_batch)
                    steps_curve.append({"model": who.name, "decoder": d.label, "steps_per_token": per_token,
                                        **_point(point)})
        minutes_curve.sort(key=lambda r: (r["model"], r["minutes"]))
        results.append(TaskResult(task.name, spec, models, minutes_curve, steps_curve, difficulty_curve))
        gap = models[suite.contestants[0].name]["accuracy"] - models[suite.contestants[-1].name]["accuracy"]
        log(f"  {task.name}: {suite.contestants[0].name} - {suite.contestants[-1].name} = {100 * gap:+.1f} points")
    return ReasoningResult(suite=asdict(suite), machine=machine(), seconds=time.perf_counter() - started,
                           tasks=results)


def _point(row: dict) -> dict:
    return {"accuracy": row["accuracy"], "stderr": row["stderr"], "valid_rate": row["valid_rate"], "n": row["n_test"]}


# -- the report ------------------------------------------------------------------------


def write_reasoning_report(result: ReasoningResult, out: Path) -> Path:
    """report.json (per task: `masked` and `ar` objects and the curves), report.md and plots."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    data = {"suite": result.suite, "machine": result.machine, "seconds": result.seconds,
            "tasks": {t.task: {"spec": t.spec, **t.models, "minutes_curve": t.minutes_curve,
                               "steps_curve": t.steps_curve, "difficulty_curve": t.difficulty_curve}
                      for t in result.tasks}}
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    plots = _plots(result, out)
    suite = result.suite
    lines = [f"# Reasoning suite `{suite['name']}`", "",
             f"Each model: preset `{suite['preset']}`, "
             + (f"{suite['steps']} training steps" if suite["steps"] else f"{suite['minutes']:g} training minutes")
             + f" of batch {suite['batch_size']}, on "
             f"{result.machine['cpu']} ({suite['threads'] or result.machine['threads']} threads); "
             f"{suite['n_test']} held-out test instances per task; run took {result.seconds / 60:.1f} min.", "",
             "| task | model | decoder | accuracy | ± stderr | valid | params | train min | steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in result.tasks:
        for name, m in t.models.items():
            for d in m["decoders"]:
                lines.append(f"| {t.task} | {name} | {d['decoder']} | {d['accuracy']:.3f} | {d['stderr']:.3f} | "
                             f"{d['valid_rate']:.3f} | {m['params']:,} | {m['train_minutes']:.1f} | {m['steps']} |")
    lines += ["", "Headline: each model's first decoder (masked: confidence, easiest first; AR: greedy).", ""]
    for t in result.tasks:
        names = list(t.models)
        gap = t.models[names[0]]["accuracy"] - t.models[names[-1]]["accuracy"]
        lines.append(f"- `{t.spec}`: {names[0]} {t.models[names[0]]['accuracy']:.3f}, {names[-1]} "
                     f"{t.models[names[-1]]['accuracy']:.3f} ({100 * gap:+.1f} points)")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(result: ReasoningResult, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for t in result.tasks:
        # a suite of fixed steps plots against steps: on a shared machine its minutes measure the load too
        by_steps = bool(result.suite.get("steps"))
        panels = [("steps" if by_steps else "minutes", "training steps" if by_steps else "training minutes",
                   t.minutes_curve),
                  ("steps_per_token", "decoding steps per response token", t.steps_curve),
                  ("difficulty", "planning distance" if t.task == "paths" else "difficulty", t.difficulty_curve)]
        panels = [p for p in panels if p[2]]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
        for ax, (key, label, rows) in zip(axes[0], panels):
            for model in dict.fromkeys(r["model"] for r in rows):
                pts = sorted((r[key], r["accuracy"], r["stderr"]) for r in rows if r["model"] == model)
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, label=model)
            if key == "steps_per_token":
                for model, m in t.models.items():
                    if not any(r["model"] == model for r in rows):
                        ax.axhline(m["accuracy"], linestyle="--", color="gray", label=f"{model} (one pass per token)")
            ax.set_xlabel(label)
            ax.set_ylabel("exact-solve accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(t.spec, fontsize=9)
        fig.tight_layout()
        path = out / f"reasoning-{t.task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
