"""The bench report: report.json (every row), report.md (the tables, the mission document's
comparison table with measured rows) and PNG plots, all from one BenchResult."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from dlm.evaluation.bench import DIFFUSION, BenchResult

COLORS = {"masked": "tab:blue", "uniform": "tab:orange", "block": "tab:green", "gaussian": "tab:purple",
          "ar": "tab:gray", "masked (threshold)": "tab:cyan"}


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def by(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def plots(result: BenchResult, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    # speed against length
    batches = sorted({r["batch"] for r in result.speed})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name in COLORS:
            pts = sorted(by(result.speed, process=name, batch=batch), key=lambda r: r["length"])
            if pts:
                ax.plot([r["length"] for r in pts], [r["seconds"] for r in pts], marker="o", color=COLORS[name],
                        label=f"{name} ({pts[0]['steps']} steps)" if pts[0].get("fixed_steps", True) else name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("generated tokens per sample")
        ax.set_ylabel("seconds per batch (wall clock)")
        ax.set_title(f"speed against output length, batch {batch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    files["speed"] = "speed_vs_length.png"
    fig.savefig(out / files["speed"], dpi=110)
    plt.close(fig)
    # quality against steps, and against tokens per forward
    for key, xkey, xlabel, log2 in (("quality_steps", "steps", "denoising steps", True),
                                    ("quality_tpf", "tokens_per_forward", "generated tokens per forward pass", True)):
        fig, ax = plt.subplots(figsize=(6.2, 4.4))
        for name in COLORS:
            pts = sorted(by(result.steps, process=name), key=lambda r: r[xkey])
            if pts and not (key == "quality_steps" and pts[0].get("kind") == "threshold"):
                ax.plot([r[xkey] for r in pts], [r["judge_bits_per_char"] for r in pts], marker="o",
                        color=COLORS[name], label=name)
        ar = by(result.samples, process="ar")
        if ar:
            ax.axhline(ar[0]["judge_bits_per_char"], color=COLORS["ar"], linestyle=":", label="AR (1 token/forward)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AR judge NLL of the samples (bits/char)")
        ax.set_title("quality against " + ("steps" if key == "quality_steps" else "parallelism"))
        ax.legend(fontsize=8)
        fig.tight_layout()
        files[key] = f"{key.replace('quality_', 'quality_vs_')}.png"
        fig.savefig(out / files[key], dpi=110)
        plt.close(fig)
    # likelihood
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    names = [r["process"] for r in result.likelihood]
    ax.bar(names, [r["bits_per_char"] for r in result.likelihood], yerr=[r["stderr"] for r in result.likelihood],
           color=[COLORS.get(n, "tab:gray") for n in names], capsize=4)
    ax.set_ylabel("validation bits/char (bound; exact for AR)")
    ax.set_title("likelihood at the same preset and training budget")
    fig.tight_layout()
    files["likelihood"] = "likelihood.png"
    fig.savefig(out / files["likelihood"], dpi=110)
    plt.close(fig)
    return files


def classic_table(result: BenchResult) -> str:
    """The mission document's comparison table (generation, speed, quality, training, control,
    architecture), each cell a measured figure of this run."""
    like = {r["process"]: r for r in result.likelihood}
    samples = {r["process"]: r for r in result.samples}
    speed = result.speed
    lengths = sorted({r["length"] for r in speed})
    lo, hi = lengths[0], lengths[-1]

    def growth(name: str, batch: int = 1) -> str:
        a, b = by(speed, process=name, batch=batch, length=lo), by(speed, process=name, batch=batch, length=hi)
        return f"{b[0]['seconds'] / a[0]['seconds']:.1f}x" if a and b else "n/a"

    diffusion = [n for n in DIFFUSION if n in like]
    best = min(diffusion, key=lambda n: like[n]["bits_per_char"]) if diffusion else None
    fastest_tpf = max((r for r in result.steps), key=lambda r: r["tokens_per_forward"], default=None)
    infill = {r["model"]: r for r in result.infill}
    ar_s = samples.get("ar", {})
    rows = [
        ["Generation", f"parallel: up to {fmt(fastest_tpf['tokens_per_forward'], 1)} tokens per forward pass "
                       f"({fastest_tpf['process']}, {fastest_tpf['setting']})" if fastest_tpf else "n/a",
         "sequential: 1 token per forward pass"],
        ["Inference speed", f"time from {lo} to {hi} tokens at {by(speed, process='masked')[0]['steps']} steps: "
                            f"masked x{growth('masked')[:-1]}, block x{growth('block')[:-1]} (batch 1)",
         f"time from {lo} to {hi} tokens: x{growth('ar')[:-1]} (batch 1, KV cache)"],
        ["Quality", f"best bound {fmt(like[best]['bits_per_char'])} bits/char ({best}); AR judge "
                    f"{fmt(samples[best]['judge_bits_per_char'])}, n-gram judge "
                    f"{fmt(samples[best].get('ngram_bits_per_char'))} bits/char" if best else "n/a",
         f"exact {fmt(like['ar']['bits_per_char'])} bits/char; AR judge {fmt(ar_s.get('judge_bits_per_char'))}, "
         f"n-gram judge {fmt(ar_s.get('ngram_bits_per_char'))} bits/char" if "ar" in like else "n/a"],
        ["Training", f"{fmt(like[best]['train_tokens_per_second'], 0)} tokens/s ({best}); same budget" if best
         else "n/a", f"{fmt(like['ar']['train_tokens_per_second'], 0)} tokens/s" if "ar" in like else "n/a"],
        ["Control", f"infills a held-out code line from both sides: exact match "
                    f"{fmt(infill['masked']['exact_match'], 2)}, char accuracy {fmt(infill['masked']['char_accuracy'], 2)}"
         if "masked" in infill else "n/a",
         f"prefix only: exact match {fmt(infill['ar']['exact_match'], 2)}, char accuracy "
         f"{fmt(infill['ar']['char_accuracy'], 2)}" if "ar" in infill else "n/a"],
        ["Architecture", f"the same Transformer, bidirectional attention, {like[best]['parameters'] / 1e6:.2f}M "
                         f"parameters" if best else "n/a",
         f"the same Transformer, causal attention, {like['ar']['parameters'] / 1e6:.2f}M parameters"
         if "ar" in like else "n/a"],
    ]
    return table(["Aspect", "Diffusion LM (measured)", "Autoregressive LM (measured)"], rows)


def write_report(result: BenchResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    files = plots(result, out)
    m, s = result.machine, result.suite
    md = [f"# dlm bench: diffusion against autoregressive ({s['name']} suite)", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads"
          f"{', GPU ' + m['gpu'] if m['gpu'] else ', no GPU'}; torch {m['torch']}. "
          f"Run time {result.seconds / 60:.1f} min. Models: preset `{s['preset']}`, {s['minutes']:g} min of training "
          f"each, context {s['seq_len']}. Judges: an AR `{result.judge['preset']}` model "
          f"({result.judge['parameters'] / 1e6:.1f}M parameters, {result.judge['minutes']:g} min, validation "
          f"{fmt(result.judge['val_bits_per_char'])} bits/char) and a character {result.judge['ngram_order']}-gram "
          f"Kneser-Ney model (nltk). Every figure below comes from this run.", "",
          "## The comparison", "", classic_table(result), "",
          "## Likelihood", "", f"![likelihood]({files['likelihood']})", "",
          table(["process", "bits/char", "± stderr", "what it is", "params", "train tokens/s"],
                [[r["process"], r["bits_per_char"], r["stderr"], r["bound"], f"{r['parameters'] / 1e6:.2f}M",
                  fmt(r["train_tokens_per_second"], 0)] for r in result.likelihood]), "",
          "## Sample quality and diversity", "",
          f"{s['prompts']} validation prompts x {s['samples_per_prompt']} samples of {s['length']} tokens, each "
          "model's default sampler at one step per token, temperature 1. Judge NLLs in bits/char (lower = likelier "
          "to the judge); judged likelihood rewards repetition, so read it with the entropy and distinct-n "
          "(higher = more varied) and self-BLEU (lower = samples of one prompt differ more).", "",
          table(["process", "sampler", "NFE", "AR judge", "n-gram judge", "entropy (bits)", "distinct-1",
                 "distinct-2", "distinct-3", "self-BLEU"],
                [[r["process"], r["sampler"], str(r["nfe"]), r["judge_bits_per_char"], r.get("ngram_bits_per_char"),
                  r["entropy_bits"], r["distinct_1"], r["distinct_2"], r["distinct_3"], r.get("self_bleu")]
                 for r in result.samples]), "",
          "## Quality against steps and parallelism", "",
          f"![quality against steps]({files['quality_steps']}) ![quality against tokens per forward]"
          f"({files['quality_tpf']})", "",
          table(["process", "setting", "NFE", "tokens/forward", "AR judge (bits/char)", "entropy (bits)"],
                [[r["process"], r["setting"], str(r["nfe"]), r["tokens_per_forward"], r["judge_bits_per_char"],
                  r["entropy_bits"]] for r in result.steps]), "",
          "## Speed against output length", "",
          f"Diffusion at a fixed {s['speed_steps']} steps (block diffusion: at least one per block), AR one forward "
          "pass per token with its KV cache; one untimed warm-up per model and batch size.", "",
          f"![speed against length]({files['speed']})", "",
          table(["process", "batch", "tokens", "steps", "NFE", "seconds", "tokens/s", "tokens/forward"],
                [[r["process"], str(r["batch"]), str(r["length"]), str(r["steps"]), str(r["nfe"]), r["seconds"],
                  fmt(r["tokens_per_second"], 0), r["tokens_per_forward"]] for r in result.speed]), "",
          "## Infilling Python (BPE)", "",
          "One line of each held-out standard-library function. Masked diffusion fills it between the text "
          "before and after, told its length in tokens, greedy confidence decoding; the AR model is not trained "
          "fill-in-the-middle: it sees the text before the line only and writes greedily to the end of the line.", "",
          table(["model", "sees", "cases", "exact match", "char accuracy", "seconds"],
                [[r["model"], r["sees"], str(r["cases"]), r["exact_match"], r["char_accuracy"], r["seconds"]]
                 for r in result.infill]), "",
          "## Long outputs", "",
          "The AR judge's bits/char of each quarter of long samples, given everything before it. Error "
          "accumulation shows as last/first > 1. Whole-canvas samplers write within their trained context.", "",
          table(["process", "tokens", "Q1", "Q2", "Q3", "Q4", "last / first"],
                [[r["process"], str(r["length"]), *r["quarters"], r["last_over_first"]] for r in result.long]), ""]
    if result.frontier is not None:
        frontier_plot(result.frontier, out / "frontier.png")
        section = frontier_markdown(result.frontier, "frontier.png").split("\n", 1)[1]
        md += ["## Quality against speed: the frontier", section]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


# -- the quality-against-speed frontier (dlm.evaluation.frontier) ------------------------------
FAMILY_COLORS = {"AR": "black", "masked": "tab:blue", "adapted": "tab:green", "distilled": "tab:red"}


def frontier_plot(result, path: Path) -> None:
    """x = tokens/s (log), y = judge bits/char: every row a point, each family's Pareto front a line,
    each point annotated with its entropy; one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlm.evaluation.frontier import pareto

    batches = sorted({r["batch"] for r in result.rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(7.2 * len(batches), 5.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in result.rows if r["batch"] == batch]
        for family in dict.fromkeys(r["family"] for r in rows):
            pts = [r for r in rows if r["family"] == family]
            color = FAMILY_COLORS.get(family, "tab:gray")
            ax.scatter([r["tokens_per_second"] for r in pts], [r["judge_bits_per_char"] for r in pts], color=color,
                       s=24, alpha=0.8)
            ax.errorbar([r["tokens_per_second"] for r in pts], [r["judge_bits_per_char"] for r in pts],
                        yerr=[r["judge_stderr"] for r in pts], fmt="none", ecolor=color, alpha=0.4)
            front = sorted(pareto(pts), key=lambda r: r["tokens_per_second"])
            ax.plot([r["tokens_per_second"] for r in front], [r["judge_bits_per_char"] for r in front], color=color,
                    label=f"{family} (Pareto front)")
            for r in pts:
                ax.annotate(f"{r['model']}: {r['setting']}\nH={r['entropy_bits']:.2f}",
                            (r["tokens_per_second"], r["judge_bits_per_char"]), textcoords="offset points",
                            xytext=(4, 3), fontsize=5.5, color=color)
        ref = result.reference
        ax.axhline(ref["judge_bits_per_char"], color="gray", linestyle=":",
                   label=f"held-out text (H={ref['entropy_bits']:.2f})")
        best = (result.best_speedup_at_equal_quality if batch == batches[0]
                else result.best_speedup_at_equal_quality_batch8)
        if best:
            d, a = best["diffusion_row"], best["ar_row"]
            ax.annotate("", xy=(d["tokens_per_second"], d["judge_bits_per_char"]),
                        xytext=(a["tokens_per_second"], a["judge_bits_per_char"]),
                        arrowprops=dict(arrowstyle="->", color="purple"))
            ax.set_title(f"batch {batch}: best speed-up at equal quality {best['ratio']:.2f}x")
        else:
            ax.set_title(f"batch {batch}: no diffusion setting reaches an AR row's quality")
        ax.set_xscale("log")
        ax.set_xlabel("tokens/s (wall clock, this machine)")
        ax.set_ylabel(f"judge bits/char (AR {result.judge['preset']}; lower = likelier)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def frontier_markdown(result, plot_name: str = "frontier.png") -> str:
    m, s, j = result.machine, result.suite, result.judge
    p = s["protocol"]

    def speedup(best, what):
        if not best:
            return f"- {what}: no diffusion row is at least as good as any AR row."
        d, a = best["diffusion_row"], best["ar_row"]
        return (f"- {what}: **{best['ratio']:.2f}x**: {d['model']} ({d['setting']}, {fmt(d['tokens_per_forward'], 2)} "
                f"tokens/forward, {fmt(d['tokens_per_second'], 0)} tokens/s, judge {fmt(d['judge_bits_per_char'])} ± "
                f"{fmt(d['judge_stderr'])}, entropy {fmt(d['entropy_bits'], 2)}) against {a['model']} "
                f"({fmt(a['tokens_per_second'], 0)} tokens/s, judge {fmt(a['judge_bits_per_char'])} ± "
                f"{fmt(a['judge_stderr'])}, entropy {fmt(a['entropy_bits'], 2)})")

    models = table(["model", "family", "process", "params", "steps", "train minutes", "validation bits/char", "bound"],
                   [[r["model"], r["family"], r["process"], f"{r['parameters'] / 1e6:.2f}M", str(r["steps"]),
                     fmt(r["train_minutes"], 1), f"{fmt(r['val_bits_per_char'])} ± {fmt(r['val_stderr'])}", r["bound"]]
                    for r in result.models])
    rows = table(["model", "setting", "batch", "tokens/s", "tokens/forward", "NFE", "judge bits/char", "± stderr",
                  "n-gram judge", "entropy", "distinct-2"],
                 [[r["model"], r["setting"], str(r["batch"]), fmt(r["tokens_per_second"], 0), r["tokens_per_forward"],
                   fmt(r["nfe"], 1), r["judge_bits_per_char"], r["judge_stderr"], r.get("ngram_bits_per_char"),
                   r["entropy_bits"], r["distinct_2"]] for r in result.rows])
    ref = result.reference
    return "\n".join([
        f"# Quality against speed ({s['name']} suite)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads"
        f"{', GPU ' + m['gpu'] if m['gpu'] else ', no GPU'}; torch {m['torch']}. Run time {result.seconds / 60:.1f} "
        f"min. Protocol: {p['samples']} held-out prompts of {p['prompt_chars']} characters, {p['length']} tokens each, "
        f"temperature {p['temperature']:g}, {'top-p ' + str(p['top_p']) if p['top_p'] else 'no nucleus'}; judged by "
        f"an AR `{j['preset']}` model ({j['parameters'] / 1e6:.1f}M parameters, {j['steps']} steps, "
        f"{fmt(j['train_minutes'], 1)} min; {fmt(j['train_minutes'] / j['longest_contestant_minutes'] if j['train_minutes'] else None, 1)}x "
        f"the longest contestant's {fmt(j['longest_contestant_minutes'], 1)} min; validation "
        f"{fmt(j['val_bits_per_char'])} bits/char), never a contestant, and a character {j['ngram_order']}-gram "
        f"Kneser-Ney model. Equal quality: judge bits/char within {p['band_stderrs']:g} standard errors or "
        f"{p['band_relative']:.0%}, entropy within {p['entropy_relative']:.0%}. The held-out continuations "
        f"themselves score {fmt(ref['judge_bits_per_char'])} ± {fmt(ref['judge_stderr'])} bits/char, entropy "
        f"{fmt(ref['entropy_bits'], 2)} bits.", "",
        speedup(result.best_speedup_at_equal_quality, f"best speed-up at equal quality, batch {p['batches'][0]}"),
        speedup(result.best_speedup_at_equal_quality_batch8, f"the same at batch {p['batches'][-1]}"),
        speedup(result.best_speedup_with_4_tokens_per_forward,
                f"among diffusion rows with at least 4 tokens per forward, batch {p['batches'][0]}"), "",
        f"![quality against speed]({plot_name})", "", "## Models", "", models, "", "## Every setting", "", rows, ""])


def write_frontier(result, out: Path) -> Path:
    """frontier.json (every row and the speed-ups), frontier.md and frontier.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    frontier_plot(result, out / "frontier.png")
    path = out / "frontier.md"
    path.write_text(frontier_markdown(result))
    return path


# -- the roofline (benchmarks/roofline.py) -----------------------------------------------------

def roofline_plot(result: dict, path: Path) -> None:
    """Measured seconds against the hardware's limit, log-log: the diagonal is the roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    steps = list(dict.fromkeys(r["step"] for r in result["rows"]))
    markers = dict(zip(sorted({r["preset"] for r in result["rows"]}), "osD^v"))
    for i, step in enumerate(steps):
        rows = [r for r in result["rows"] if r["step"] == step]
        for preset, marker in markers.items():
            mine = [r for r in rows if r["preset"] == preset]
            if mine:
                ax.scatter([r["limit_seconds"] * 1e3 for r in mine], [r["seconds"] * 1e3 for r in mine],
                           color=f"C{i}", marker=marker, label=f"{step}, {preset}", s=28)
    floors = [r for r in result["rows"] if "matmul_seconds" in r]
    if floors:  # where each decoding step would be if only its weight products took time
        ax.scatter([r["limit_seconds"] * 1e3 for r in floors], [r["matmul_seconds"] * 1e3 for r in floors],
                   color="0.55", marker="x", s=16, lw=0.8, label="its matmuls alone")
    lo = min(r["limit_seconds"] for r in result["rows"]) * 1e3
    hi = max(r["seconds"] for r in result["rows"]) * 1e3
    for factor, style in ((1, "-"), (3, "--"), (10, ":")):
        ax.plot([lo, hi / factor], [lo * factor, hi], "k" + style, lw=0.8, label=f"{factor}x the limit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("limit: max(FLOPs / peak, bytes / bandwidth), ms")
    ax.set_ylabel("measured step, ms")
    ax.set_title(f"dlm steps against the roofline ({result['dtype']}, {result.get('machine', {}).get('cpu', '')})",
                 fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_markdown(result: dict, before: dict | None = None, plot_name: str = "roofline.png") -> str:
    machine = result.get("machine", {})
    lines = ["# The roofline of dlm's steps\n",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, torch "
             f"{machine.get('torch', '?')}; precision {result['dtype']}; measured peak "
             f"{result['peak_flops'] / 1e9:.0f} GFLOP/s, copy bandwidth {result['bandwidth'] / 1e9:.1f} GB/s. "
             f"Canvas: {result['shape']['prompt']} prompt + {result['shape']['generate']} generated tokens, blocks "
             f"of {result['shape']['block']}; training sequences of {result['shape']['train_seq_len']}.\n",
             f"![roofline]({plot_name})\n"]
    old = {(r["preset"], r["batch"], r["step"]): r for r in (before or {}).get("rows", [])}
    header = ["preset", "batch", "step", "ms", "limit ms", "x limit", "matmuls ms", "x matmuls"] + (
        ["before ms", "speed-up"] if old else [])
    rows = []
    for r in result["rows"]:
        row = [r["preset"], r["batch"], r["step"], fmt(r["seconds"] * 1e3, 2), fmt(r["limit_seconds"] * 1e3, 3),
               fmt(r["ratio"], 1)]
        row += [fmt(r["matmul_seconds"] * 1e3, 2), fmt(r["matmul_ratio"], 1)] if "matmul_seconds" in r else ["", ""]
        if old:
            b = old.get((r["preset"], r["batch"], r["step"]))
            row += [fmt(b["seconds"] * 1e3, 2), fmt(b["seconds"] / r["seconds"], 2)] if b else ["", ""]
        rows.append(row)
    lines.append(table(header, rows))
    fractions = ", ".join(f"{p}: {100 * f:.1f}%" for p, f in result["train_fraction_of_peak"].items())
    lines.append(f"\nTraining (the best batch) reaches {fractions} of the matrix peak.\n")
    lines.append("\"matmuls\": the step's weight products alone, measured as this machine's matrix library runs "
                 "them (every Linear and the head once, on the pass's rows); \"x matmuls\" is the step over that "
                 "floor, the share of dlm's own work (attention, norms, the sampler).\n")
    return "\n".join(lines)


def write_roofline(result: dict, out: Path, before: dict | None = None) -> Path:
    """roofline.json, roofline.md (with a before column when `before` is given) and roofline.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.json").write_text(json.dumps(result, indent=2, default=str))
    roofline_plot(result, out / "roofline.png")
    path = out / "roofline.md"
    path.write_text(roofline_markdown(result, before))
    return path
