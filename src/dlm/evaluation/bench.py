"""`dlm bench`: diffusion against autoregressive, measured side by side in one run.

Every process (masked, uniform, block, gaussian) and the AR baseline is trained with the same
preset and budget on the same data (cached, so a rerun only measures), then measured:

- likelihood: the validation bound in bits/char (exact for AR) with its standard error;
- sample quality: continuations of validation prompts judged by a larger AR model and by a
  character Kneser-Ney n-gram model, with unigram entropy, distinct-n and self-BLEU;
- quality against steps and against tokens per forward pass;
- speed against output length at batch 1 and 16, at a fixed number of steps for diffusion;
- infilling of a held-out line of Python (BPE), diffusion against AR that sees the prefix;
- long outputs: the judge's bits/char of the last quarter against the first (error accumulation).

Each measurement is a function from checkpoints to rows (plain dicts); `report.py` turns the
rows into report.md, report.json and the plots. Nothing in the report is typed in by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dlm.data.corpora import load_corpus
from dlm.errors import DlmError
from dlm.evaluation.judges import ARJudge, NgramJudge
from dlm.evaluation.likelihood import evaluate_checkpoint
from dlm.evaluation.metrics import char_accuracy, distinct_n, mean, self_bleu, unigram_entropy
from dlm.sampling import Canvas, infill_canvas
from dlm.sampling.registry import RECORDS, SamplerRequest, greedy_sampler, resolve
from dlm.sampling.run import run_plan
from dlm.training.cached import ensure_trained
from dlm.training.checkpoint import Checkpoint
from dlm.training.config import TrainConfig

PROCESSES = ("masked", "uniform", "block", "gaussian", "ar")
DIFFUSION = PROCESSES[:-1]
CODE_PROCESSES = ("masked", "ar")  # infilling code: diffusion that sees both sides, AR the text before


@dataclass(frozen=True)
class Suite:
    name: str
    preset: str  # the compared models
    minutes: float  # training budget of each compared model
    judge_preset: str
    judge_minutes: float
    code_minutes: float  # the two BPE models of the Python infilling test
    seq_len: int = 128
    eval_chunks: int = 256  # validation chunks for the likelihood table
    final_eval_chunks: int = 64  # validation chunks at the end of each model's training (the code models: half)
    prompts: int = 8  # validation prompts for sample quality
    samples_per_prompt: int = 4  # for self-BLEU (samples of one prompt against each other)
    prompt_chars: int = 32
    length: int = 96  # generated tokens per sample
    steps_grid: tuple[int, ...] = (8, 16, 32, 64, 96)
    thresholds: tuple[float, ...] = (0.9, 0.7, 0.5)
    speed_lengths: tuple[int, ...] = (64, 128, 256, 512)
    speed_batches: tuple[int, ...] = (1, 16)
    speed_steps: int = 32  # diffusion steps at every length (AR: one pass per token)
    infill_cases: int = 16
    long_length: int = 256
    long_samples: int = 4
    ngram_chars: int = 300_000
    compile: bool = True  # torch.compile the models' blocks while training (off in tests: compiling takes longer)
    frontier: str = ""  # a frontier suite (dlm.evaluation.frontier.SUITES) to measure too, "" = none


SUITES = {
    "quick": Suite("quick", preset="tiny", minutes=0.8, judge_preset="small", judge_minutes=2.5, code_minutes=0.9,
                   long_length=512),
    "full": Suite("full", preset="tiny", minutes=5.0, judge_preset="base", judge_minutes=30.0, code_minutes=5.0,
                  eval_chunks=0, prompts=32, samples_per_prompt=4, length=128,
                  steps_grid=(8, 16, 32, 64, 128, 256, 512, 1024), thresholds=(0.99, 0.9, 0.8, 0.7, 0.5),
                  speed_lengths=(64, 128, 256, 512, 1024), infill_cases=64, long_length=1024, long_samples=8,
                  frontier="bench-full"),
}


def validation_prompts(ckpt: Checkpoint, n: int, chars: int) -> list[str]:
    """n prompts of `chars` characters, evenly spaced through the validation text, each at a line start."""
    text = "\n".join(load_corpus(ckpt.config["train"]["data"]).validation)
    out = []
    for i in range(n):
        start = text.find("\n", i * len(text) // n) + 1
        out.append(text[start:start + chars])
    return out


def generate(ckpt: Checkpoint, prompts: list[str], length: int, *, steps: int | None = None, sampler: str | None = None,
             temperature: float | None = None, seed: int = 0, **knobs) -> tuple[list[str], object]:
    """Continue each prompt by `length` tokens in one batched call -> (texts cut at end-of-text, SampleOutput).
    The sampler (default: the process's) at its own default temperature unless told; `knobs` as in a request."""
    tok = ckpt.tokenizer
    canvas = Canvas.for_generation([tok.encode(p) for p in prompts], length, fill_id=tok.mask_id, pad_id=tok.pad_id,
                                   device=next(ckpt.model.parameters()).device)
    plan = resolve(ckpt.process, SamplerRequest(sampler=sampler, steps=steps or length, temperature=temperature,
                                                seed=seed, knobs=knobs), generated=length)
    out = run_plan(ckpt, canvas, plan)
    texts = [tok.decode_until_eos(canvas.generated(out.tokens, b)) for b in range(len(prompts))]
    return texts, out


# -- measurements ----------------------------------------------------------------------


def measure_likelihood(models: dict[str, Checkpoint], suite: Suite) -> list[dict]:
    rows = []
    for name, ckpt in models.items():
        est = evaluate_checkpoint(ckpt, chunks=suite.eval_chunks, samples=4)
        rows.append({"process": name, "bound": ckpt.process.bound, "bits_per_char": est.bits_per_char,
                     "stderr": est.stderr, "chunks": est.num_chunks, "samples_per_chunk": est.samples_per_chunk,
                     "parameters": ckpt.model.num_parameters(),
                     "train_tokens_per_second": ckpt.metrics.get("train_tokens_per_second", float("nan"))})
    return rows


def quality_row(prompts: list[str], texts: list[str], judge: ARJudge, ngram: NgramJudge | None,
                group: int = 1) -> dict:
    """Judged likelihood and diversity of continuations; `group` consecutive texts share a prompt."""
    row = {"judge_bits_per_char": mean(judge.bits_per_char(p, t) for p, t in zip(prompts, texts)),
           "entropy_bits": unigram_entropy(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
           "distinct_3": distinct_n(texts, 3), "mean_chars": mean(len(t) for t in texts)}
    if ngram is not None:
        row["ngram_bits_per_char"] = mean(ngram.bits_per_char(p, t) for p, t in zip(prompts, texts))
    if group > 1:
        row["self_bleu"] = mean(self_bleu(texts[i:i + group]) for i in range(0, len(texts), group))
    return row


def measure_samples(models, suite: Suite, judge: ARJudge, ngram: NgramJudge) -> list[dict]:
    """Each model's own default sampler, one step per token, temperature 1, several samples per prompt."""
    rows = []
    for name, ckpt in models.items():
        prompts = [p for p in validation_prompts(ckpt, suite.prompts, suite.prompt_chars)
                   for _ in range(suite.samples_per_prompt)]
        sampler = ckpt.process.default_sampler
        texts, out = generate(ckpt, prompts, suite.length, sampler=sampler, temperature=1.0)
        rows.append({"process": name, "sampler": sampler, "steps": out.steps, "nfe": out.nfe,
                     **quality_row(prompts, texts, judge, ngram, group=suite.samples_per_prompt),
                     "example": (prompts[0] + texts[0])[:160]})
    return rows


def measure_steps(models, suite: Suite, judge: ARJudge) -> list[dict]:
    """Quality against the number of steps (each process's default sampler) and, for masked
    diffusion, against tokens per forward with Fast-dLLM thresholds."""
    rows = []
    for name, ckpt in models.items():
        process = ckpt.process
        if not RECORDS[process.default_sampler].uses_steps:
            continue  # one forward pass per token: there are no steps to trade
        prompts = validation_prompts(ckpt, suite.prompts, suite.prompt_chars)
        n_blocks = process.min_steps(suite.length)
        for steps in suite.steps_grid:
            if steps < n_blocks:
                continue
            texts, out = generate(ckpt, prompts, suite.length, steps=steps)
            rows.append({"process": name, "kind": "steps", "setting": f"{steps} steps", "steps": steps,
                         "tokens_per_forward": suite.length / max(out.nfe, 1), "nfe": out.nfe,
                         **quality_row(prompts, texts, judge, None)})
        # Fast-dLLM's parallel decoding: a sampler of this process that takes LLaDA blocks and a threshold
        parallel = next((s for s in process.samplers if RECORDS[s].knob("threshold") and RECORDS[s].knob("block_length")),
                        None)
        if parallel is not None:
            for threshold in suite.thresholds:
                texts, out = generate(ckpt, prompts, suite.length, sampler=parallel, block_length=32,
                                      threshold=threshold)
                rows.append({"process": f"{name} (threshold)", "kind": "threshold", "setting": f"threshold {threshold}",
                             "steps": out.steps, "tokens_per_forward": suite.length / max(out.nfe, 1),
                             "nfe": out.nfe, **quality_row(prompts, texts, judge, None)})
    return rows


def measure_speed(models, suite: Suite) -> list[dict]:
    """Seconds to generate each length at batch 1 and 16: diffusion at a fixed number of steps,
    AR with its KV cache (one pass per token). One untimed warm-up call per setting."""
    rows = []
    for name, ckpt in models.items():
        tok = ckpt.tokenizer
        prompt = validation_prompts(ckpt, 1, 16)[0]
        fixed_steps = RECORDS[ckpt.process.default_sampler].uses_steps  # else one pass per token
        for batch in suite.speed_batches:
            for length in suite.speed_lengths:
                steps = max(suite.speed_steps, ckpt.process.min_steps(length)) if fixed_steps else None
                if length == suite.speed_lengths[0]:  # an untimed warm-up once per model and batch size
                    generate(ckpt, [prompt] * batch, length, steps=steps)
                out = generate(ckpt, [prompt] * batch, length, steps=steps)[1]
                rows.append({"process": name, "batch": batch, "length": length, "fixed_steps": fixed_steps,
                             "steps": out.steps, "nfe": out.nfe,
                             "seconds": out.seconds, "tokens_per_second": batch * length / out.seconds,
                             "tokens_per_forward": length / max(out.nfe, 1), "vocab": tok.vocab_size})
    return rows


def code_cases(ckpt: Checkpoint, n: int) -> list[tuple[str, str, str]]:
    """(before, line, after) from held-out Python functions: a non-blank body line, with the
    function's text around it, trimmed to fit the context."""
    tok, budget = ckpt.tokenizer, ckpt.context_length * 3 // 4
    cases = []
    for doc in load_corpus(ckpt.config["train"]["data"]).validation:
        lines = doc.split("\n")
        for i, line in enumerate(lines):
            if not line.startswith("def ") and not line.startswith("    def "):
                continue
            body = [j for j in range(i + 1, min(i + 12, len(lines))) if lines[j].strip() and
                    not lines[j].strip().startswith(("#", '"', "'"))]
            if len(body) < 3:
                continue
            j = body[len(body) // 2]
            before, after = "\n".join(lines[max(0, j - 6):j]) + "\n", "\n" + "\n".join(lines[j + 1:j + 4])
            if len(tok.encode(before + lines[j] + after)) <= budget and 4 <= len(lines[j].strip()) <= 60:
                cases.append((before, lines[j], after))
    if not cases:
        raise DlmError("found no held-out Python function to infill")
    return [cases[i * len(cases) // n] for i in range(min(n, len(cases)))]


def measure_infill(code: dict[str, Checkpoint], suite: Suite) -> list[dict]:
    """One line of each held-out function: masked diffusion infills it between the text before
    and after (told the line's length in tokens); AR sees only the text before it and writes
    greedily up to the end of the line (it is not trained fill-in-the-middle)."""
    cases = code_cases(code["masked"], suite.infill_cases)
    rows = []
    for name, ckpt in code.items():
        tok, infills = ckpt.tokenizer, ckpt.process.infills
        exact, accuracy, started = [], [], time.perf_counter()
        for before, line, after in cases:
            if infills:  # greedy, one token per step, between the text before and after
                n = len(tok.encode(line))
                infill = infill_canvas([before, n, after], tok, device=next(ckpt.model.parameters()).device)
                plan = resolve(ckpt.process, SamplerRequest(sampler=greedy_sampler(ckpt.process), steps=n,
                                                            temperature=0.0), generated=n)
                out = run_plan(ckpt, infill.canvas, plan)
                guess = infill.assemble(out.tokens, tok)[len(before):-len(after) or None]
            else:
                texts, _ = generate(ckpt, [before], max(len(tok.encode(line)) * 2, 8), temperature=0.0)
                guess = texts[0].lstrip("\n").split("\n")[0]  # the line it writes (a BPE token may open with \n)
            exact.append(float(guess.strip() == line.strip()))
            accuracy.append(char_accuracy(guess.strip(), line.strip()))
        rows.append({"model": name, "sees": "before and after" if infills else "before only",
                     "cases": len(cases), "exact_match": mean(exact), "char_accuracy": mean(accuracy),
                     "seconds": time.perf_counter() - started})
    return rows


def measure_long(models, suite: Suite, judge: ARJudge) -> list[dict]:
    """Long samples: the judge's bits/char of each quarter given what precedes it; error
    accumulation shows as a last quarter worse than the first."""
    rows = []
    for name, ckpt in models.items():
        prompts = validation_prompts(ckpt, suite.long_samples, suite.prompt_chars)
        length = suite.long_length
        if not ckpt.process.extends_context:
            # a whole-canvas sampler writes inside the trained context; block diffusion and AR slide a window
            length = min(length, ckpt.context_length - max(len(ckpt.tokenizer.encode(p)) for p in prompts))
        texts, _ = generate(ckpt, prompts, length)
        quarters = [[], [], [], []]
        for p, t in zip(prompts, texts):
            q = len(t) // 4
            for k in range(4):
                if q:
                    quarters[k].append(judge.bits_per_char(p + t[:k * q], t[k * q:(k + 1) * q]))
        first, last = mean(quarters[0]), mean(quarters[3])
        rows.append({"process": name, "length": length, "quarters": [mean(x) for x in quarters],
                     "first_quarter": first, "last_quarter": last, "last_over_first": last / first})
    return rows


# -- the run ----------------------------------------------------------------------------


@dataclass
class BenchResult:
    suite: dict
    machine: dict
    seconds: float
    likelihood: list
    samples: list
    steps: list
    speed: list
    infill: list
    long: list
    judge: dict
    frontier: object = None  # a FrontierResult, when the suite measures one


def machine() -> dict:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def run_bench(suite: Suite, cache: Path, *, log: Callable[[str], None] = print, progress: bool = False) -> BenchResult:
    """Train (or reuse from `cache`) every model the suite compares, then measure all of it."""
    started = time.perf_counter()
    base = dict(preset=suite.preset, minutes=suite.minutes, seq_len=suite.seq_len,
                final_eval_chunks=suite.final_eval_chunks, compile=suite.compile)

    def trained(config: TrainConfig, what: str) -> Checkpoint:
        return ensure_trained(config, progress=progress, log=lambda text: log("  " + text), what=what)[0]

    models = {}
    for name in PROCESSES:
        log(f"model: {name} ({suite.preset}, {suite.minutes:g} min)")
        models[name] = trained(TrainConfig(out=str(cache / name), process=name, **base), f"{name} model")
    log(f"judge: AR {suite.judge_preset}, {suite.judge_minutes:g} min")
    judge_ckpt = trained(TrainConfig(out=str(cache / "judge"), process="ar", preset=suite.judge_preset,
                                     minutes=suite.judge_minutes, seq_len=2 * suite.seq_len, batch_size=16,
                                     final_eval_chunks=suite.final_eval_chunks, compile=suite.compile), "judge")
    judge = ARJudge(judge_ckpt)
    code = {}
    for name in CODE_PROCESSES:
        log(f"code model: {name} (pystdlib, BPE, {suite.code_minutes:g} min)")
        code[name] = trained(TrainConfig(out=str(cache / f"code-{name}"), process=name, preset=suite.preset,
                                         data="pystdlib", tokenizer="bpe", vocab_size=2048,
                                         minutes=suite.code_minutes, seq_len=suite.seq_len,
                                         final_eval_chunks=max(suite.final_eval_chunks // 2, 1),
                                         compile=suite.compile), f"{name} code model")
    corpus = load_corpus(models["ar"].config["train"]["data"])
    log("judge: character 5-gram, Kneser-Ney (nltk)")
    ngram = NgramJudge("\n".join(corpus.train), order=5, max_chars=suite.ngram_chars)
    results = {}
    for key, measure in (("likelihood", lambda: measure_likelihood(models, suite)),
                         ("samples", lambda: measure_samples(models, suite, judge, ngram)),
                         ("steps", lambda: measure_steps(models, suite, judge)),
                         ("speed", lambda: measure_speed(models, suite)),
                         ("infill", lambda: measure_infill(code, suite)),
                         ("long", lambda: measure_long(models, suite, judge))):
        t0 = time.perf_counter()
        log(f"measuring: {key}")
        results[key] = measure()
        log(f"  {key}: {time.perf_counter() - t0:.0f} s")
    frontier = None
    if suite.frontier:
        from dlm.evaluation.frontier import run_frontier, suite_named

        log(f"measuring: the quality-against-speed frontier ({suite.frontier} suite)")
        frontier = run_frontier(suite_named(suite.frontier), cache / "frontier", log=lambda text: log("  " + text),
                                progress=progress)
    judge_info = {"preset": suite.judge_preset, "minutes": suite.judge_minutes,
                  "parameters": judge_ckpt.model.num_parameters(),
                  "val_bits_per_char": judge_ckpt.metrics.get("val_bits_per_char", math.nan),
                  "ngram_order": ngram.order}
    return BenchResult(suite=asdict(suite), machine=machine(), seconds=time.perf_counter() - started,
                       judge=judge_info, frontier=frontier, **results)


def suite_named(name: str, **overrides) -> Suite:
    if name not in SUITES:
        raise DlmError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return replace(SUITES[name], **overrides)
