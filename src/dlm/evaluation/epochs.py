"""`dlm bench --suite epochs`: the data-constrained regime (Prabhudesai et al., 2025, "Diffusion beats
autoregressive in data-constrained settings"). A fixed slice of the Shakespeare training text
(`shakespeare-slice:chars=N`) is repeated for many epochs by masked diffusion and by AR models of
the same preset, AR with and without extra regularisation (arXiv 2510.04071: regularised AR
narrows the gap). The transformer has no dropout, so the regularisation here is weight decay.

Each model trains for a fixed number of epochs (steps = epochs x training tokens / (batch x
seq_len)); the training loop validates every `epochs / evals` epochs on held-out plays, so one
run gives the whole curve of validation bits/char (masked: the NELBO bound; AR: exact) against
epochs. The report gives the curves, each model's best figure and its epoch, and where the masked
curve crosses below each AR curve (linear interpolation between validations), if it does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dlm.data.corpora import load_corpus
from dlm.errors import DlmError
from dlm.training.cached import ensure_trained
from dlm.training.config import TrainConfig


@dataclass(frozen=True)
class Contender:
    name: str
    process: str
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig overrides (the regularisation)


# AR regularised two ways (arXiv 2510.04071 finds both narrow the gap): stronger weight decay, and
# dropout at the usual 0.1 on the embedding and every residual branch
CONTENDERS = (Contender("masked", "masked"), Contender("ar", "ar"),
              Contender("ar-regularised", "ar", (("weight_decay", 0.5),)),
              Contender("ar-dropout", "ar", (("dropout", 0.1),)))


@dataclass(frozen=True)
class EpochsSuite:
    name: str
    chars: int  # training characters (the slice)
    epochs: float  # passes over them per model
    preset: str = "tiny"
    seq_len: int = 128
    batch_size: int = 32
    evals: int = 20  # validations along the run (the curve's points)
    eval_chunks: int = 64
    validation_chars: int = 100_000
    minutes: float = 0.0  # > 0: each model trains this long instead of `epochs` (the curve still counts epochs)
    threads: int = 1
    compile: bool = False
    contenders: tuple[Contender, ...] = CONTENDERS
    seed: int = 0

    @property
    def data(self) -> str:
        return f"shakespeare-slice:chars={self.chars},validation_chars={self.validation_chars}"


EPOCHS_SUITES = {
    # ~1M characters: one epoch is ~240 steps of 4096 tokens, ~8 minutes of the tiny preset on one core here
    "epochs": EpochsSuite("epochs", chars=1_000_000, epochs=64, evals=32),
    # what fits in minutes on this machine: 10k characters, 40 epochs (~390 steps of 8 x 128 tokens)
    "epochs-quick": EpochsSuite("epochs-quick", chars=10_000, epochs=40, batch_size=8, evals=20,
                                validation_chars=20_000, eval_chunks=32),
}


def epochs_suite(name: str, **overrides) -> EpochsSuite:
    if name not in EPOCHS_SUITES:
        raise DlmError(f"unknown epochs suite {name!r}; choose one of {', '.join(EPOCHS_SUITES)}")
    return replace(EPOCHS_SUITES[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class EpochsResult:
    suite: dict
    machine: dict
    seconds: float
    train_tokens: int
    curves: dict  # model -> [{epoch, step, val_bits_per_char, val_stderr, minutes}]
    best: dict  # model -> {val_bits_per_char, val_stderr, epoch}
    crossings: dict  # "masked vs ar" -> epoch where masked goes below (None: never in the run)
    models: dict  # model -> {params, train_minutes, steps, process, overrides}


def read_curve(run_dir: Path, tokens_per_step: int, train_tokens: int) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_bits_per_char" in record:
            rows.append({"step": record["step"], "epoch": record["step"] * tokens_per_step / train_tokens,
                         "val_bits_per_char": record["val_bits_per_char"], "val_stderr": record["val_stderr"],
                         "minutes": record.get("elapsed", math.nan) / 60})
    return rows


def crossing(a: list[dict], b: list[dict]) -> float | None:
    """The first epoch at which curve `a` goes below curve `b` after being above it (b interpolated
    linearly at a's epochs); None if it never does, 0.0 if a starts below."""
    if not a or not b:
        return None

    def b_at(epoch: float) -> float:
        pts = [(r["epoch"], r["val_bits_per_char"]) for r in b]
        if epoch <= pts[0][0]:
            return pts[0][1]
        for (e0, v0), (e1, v1) in zip(pts, pts[1:]):
            if e0 <= epoch <= e1:
                return v0 + (v1 - v0) * (epoch - e0) / max(e1 - e0, 1e-12)
        return pts[-1][1]

    diffs = [(r["epoch"], r["val_bits_per_char"] - b_at(r["epoch"])) for r in a if r["epoch"] <= b[-1]["epoch"]]
    if not diffs:
        return None
    if diffs[0][1] < 0:
        return 0.0
    for (e0, d0), (e1, d1) in zip(diffs, diffs[1:]):
        if d0 >= 0 > d1:
            return e0 + (e1 - e0) * d0 / (d0 - d1)
    return None


def run_epochs(suite: EpochsSuite, cache: Path, *, log: Callable[[str], None] = print,
               progress: bool = False) -> EpochsResult:
    from dlm.evaluation.bench import machine

    started = time.perf_counter()
    corpus = load_corpus(suite.data)
    train_tokens = sum(len(d) for d in corpus.train) + len(corpus.train)  # char tokens + one end-of-text each
    tokens_per_step = suite.batch_size * suite.seq_len
    steps = max(1, math.ceil(suite.epochs * train_tokens / tokens_per_step))
    eval_every = max(1, steps // suite.evals)
    budget = f"{suite.minutes:g} minutes" if suite.minutes else f"{suite.epochs:g} epochs ({steps} steps)"
    log(f"{suite.data}: {train_tokens:,} training tokens; each model {budget}, validated every {eval_every} steps "
        f"({eval_every * tokens_per_step / train_tokens:.2f} epochs)")
    curves, models = {}, {}
    for who in suite.contenders:
        config = TrainConfig(out=str(cache / who.name), process=who.process, preset=suite.preset, data=suite.data,
                             seq_len=suite.seq_len, batch_size=suite.batch_size,
                             steps=0 if suite.minutes else steps, minutes=suite.minutes, eval_every=eval_every,
                             warmup_steps=max(1, min(100, steps // 10)),  # a short run still reaches its peak lr
                             eval_chunks=suite.eval_chunks, final_eval_chunks=suite.eval_chunks,
                             threads=suite.threads, compile=suite.compile, seed=suite.seed, **dict(who.train))
        log(f"model: {who.name} ({who.process}, {suite.preset}{''.join(f', {k}={v}' for k, v in who.train)})")
        ckpt = ensure_trained(config, progress=progress, log=lambda text: log("  " + text), what=f"{who.name} model")[0]
        curve = read_curve(Path(config.out), tokens_per_step, train_tokens)
        curves[who.name] = curve
        models[who.name] = {"process": who.process, "overrides": dict(who.train), "params": ckpt.model.num_parameters(),
                            "steps": ckpt.step, "epochs": ckpt.step * tokens_per_step / train_tokens,
                            "train_minutes": max((r["minutes"] for r in curve), default=math.nan)}
        if curve:
            best = min(curve, key=lambda r: r["val_bits_per_char"])
            log(f"  best {best['val_bits_per_char']:.4f} ± {best['val_stderr']:.4f} bits/char at epoch "
                f"{best['epoch']:.1f}; last {curve[-1]['val_bits_per_char']:.4f} at epoch {curve[-1]['epoch']:.1f}")
    best = {name: {k: min(c, key=lambda r: r["val_bits_per_char"])[k] for k in ("val_bits_per_char", "val_stderr",
                                                                                "epoch")}
            for name, c in curves.items() if c}
    first = suite.contenders[0].name
    crossings = {f"{first} vs {other.name}": crossing(curves.get(first, []), curves.get(other.name, []))
                 for other in suite.contenders[1:]}
    return EpochsResult(suite=asdict(suite) | {"data": suite.data, "steps": steps}, machine=machine(),
                        seconds=time.perf_counter() - started, train_tokens=train_tokens, curves=curves, best=best,
                        crossings=crossings, models=models)


def write_epochs_report(result: EpochsResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(result), indent=2, default=str) + "\n")
    s = result.suite
    lines = [f"# Epochs suite `{s['name']}`", "",
             f"`{s['data']}`: {result.train_tokens:,} training tokens, preset `{s['preset']}`, batch "
             f"{s['batch_size']} x {s['seq_len']} tokens, {s['threads']} thread(s), on {result.machine['cpu']}; "
             f"run took {result.seconds / 60:.1f} min.", "",
             "| model | process | regularisation | params | epochs | train min | best bits/char | ± | at epoch "
             "| last |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in result.models.items():
        b, curve = result.best.get(name, {}), result.curves.get(name, [])
        reg = ", ".join(f"{k}={v}" for k, v in m["overrides"].items()) or "default (weight_decay 0.1)"
        lines.append(f"| {name} | {m['process']} | {reg} | {m['params']:,} | {m['epochs']:.1f} | "
                     f"{m['train_minutes']:.1f} | {b.get('val_bits_per_char', math.nan):.4f} | "
                     f"{b.get('val_stderr', math.nan):.4f} | {b.get('epoch', math.nan):.1f} | "
                     f"{curve[-1]['val_bits_per_char'] if curve else math.nan:.4f} |")
    lines += [""] + [f"- {pair}: " + (f"crosses at epoch {e:.1f}" if e is not None else "no crossing in this run")
                     for pair, e in result.crossings.items()]
    plot = _plot(result, out)
    if plot is not None:
        lines += ["", f"![validation bits/char against epochs]({plot.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(result: EpochsResult, out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in result.curves.items():
        ax.errorbar([r["epoch"] for r in curve], [r["val_bits_per_char"] for r in curve],
                    yerr=[r["val_stderr"] for r in curve], marker=".", capsize=2, label=name)
    ax.set_xlabel("epochs over the training slice")
    ax.set_ylabel("validation bits/char (masked: bound)")
    ax.set_title(result.suite["data"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "epochs.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
