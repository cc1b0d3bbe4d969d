"""Infilling a span of unknown length: does the length search find the right length, and is the
text better than at a fixed guess?

    python benchmarks/infill_length.py --model runs/masked --judge runs/ar --plot infill_length.png

Windows of three consecutive validation lines; the middle line is removed and infilled as a
span of unknown length (<fill:A-B>, --lengths lengths tried from --min to --max tokens) by
`dlm.sampling.length.infill_lengths` (each candidate filled by the confidence sampler, greedy,
one step per token; the likeliest whole text per character kept). Compared with filling at the
true length (an oracle) and at one fixed length for every line (the median line length of the
training split). Reported: the error of the chosen length in characters, its correlation with
the true length, and the AR judge's NLL (bits/char) of the fill and the line after it given the
line before: a fill of the wrong length that breaks the verse shows up there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from judge import Judge, figure, mean, save_figure  # noqa: E402

from dlm.data.corpora import load_corpus  # noqa: E402
from dlm.sampling import infill_canvas, sample_confidence  # noqa: E402
from dlm.sampling.length import infill_lengths  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402


def windows(text: str, n: int, low: int, high: int) -> list[tuple[str, str, str]]:
    """n (before, line, after) triples of consecutive lines, evenly spaced, the middle line
    between low and high characters long."""
    lines = text.split("\n")
    found = [(lines[i - 1], lines[i], lines[i + 1]) for i in range(1, len(lines) - 1)
             if low <= len(lines[i]) <= high and lines[i - 1] and lines[i + 1]]
    return [found[i * len(found) // n] for i in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a checkpoint of a process that infills (masked, uniform)")
    p.add_argument("--judge", required=True, help="an AR checkpoint of the same text")
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--min", type=int, default=8)
    p.add_argument("--max", type=int, default=56)
    p.add_argument("--lengths", type=int, default=7, help="lengths tried per span")
    p.add_argument("--score-samples", type=int, default=8)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model, judge = load_checkpoint(args.model), Judge(args.judge)
    tok = model.tokenizer
    if tok.kind != "char":
        raise SystemExit("this benchmark counts a span's length in characters: use a character-level model")
    corpus = load_corpus(model.config["train"]["data"])
    train_lines = [len(s) for doc in corpus.train for s in doc.split("\n") if args.min <= len(s) <= args.max]
    fixed = round(statistics.median(train_lines))
    cases = windows("\n".join(corpus.validation), args.windows, args.min, args.max)

    def fill(canvas):
        steps = int(canvas.editable[0].sum())
        return sample_confidence(model.model, model.process, canvas, steps=steps, temperature=0.0)

    def fill_at(before, n, after) -> str:
        infill = infill_canvas([before + "\n", n, "\n" + after], tok)
        return infill.assemble(fill(infill.canvas).tokens, tok)[len(before) + 1:-len(after) - 1]

    rows = []
    for i, (before, line, after) in enumerate(cases):
        search = infill_lengths(fill, model.model, model.process, [before + "\n", range(args.min, args.max + 1),
                                                                    "\n" + after], tok, per_span=args.lengths,
                                score_samples=args.score_samples, seed=i)
        searched = search.texts[0][len(before) + 1:-len(after) - 1]
        row = {"true": len(line), "chosen": search.lengths[0][0], "nfe": search.nfe, "seconds": search.seconds}
        for name, text in (("search", searched), ("oracle", fill_at(before, len(line), after)),
                           ("fixed", fill_at(before, fixed, after)), ("original", line)):
            row[name] = text
            row[f"{name}_judge"] = judge.bits_per_char(before + "\n", text + "\n" + after)
        rows.append(row)
        print(f"{len(line):3d} -> {row['chosen']:3d}  {searched!r}  (was {line!r})", file=sys.stderr)

    errors = [abs(r["chosen"] - r["true"]) for r in rows]
    fixed_errors = [abs(fixed - r["true"]) for r in rows]
    corr = statistics.correlation([r["true"] for r in rows], [r["chosen"] for r in rows])
    summary = {"windows": len(rows), "candidates": search.candidates, "fixed_length": fixed,
               "mean_abs_error_search": mean(errors), "mean_abs_error_fixed": mean(fixed_errors),
               "correlation": corr, "nfe_per_infill": mean([r["nfe"] for r in rows]),
               "seconds_per_infill": mean([r["seconds"] for r in rows]),
               **{f"judge_{k}": mean([r[f"{k}_judge"] for r in rows]) for k in ("search", "oracle", "fixed", "original")}}
    print(f"\n{len(rows)} validation lines of {args.min}-{args.max} characters, infilled between the lines around "
          f"them; lengths tried: {[c[0] for c in search.candidates]}; model {args.model}, judge {args.judge}\n")
    print("| length | mean abs. error (chars) | judge NLL of fill + next line (bits/char) |")
    print("|---|---|---|")
    print(f"| searched (corr. with true {corr:.2f}) | {summary['mean_abs_error_search']:.1f} | "
          f"{summary['judge_search']:.3f} |")
    print(f"| fixed at {fixed} (training median) | {summary['mean_abs_error_fixed']:.1f} | {summary['judge_fixed']:.3f} |")
    print(f"| true length (oracle) | 0 | {summary['judge_oracle']:.3f} |")
    print(f"| the original line | - | {summary['judge_original']:.3f} |")
    print(f"\nsearch cost: {summary['nfe_per_infill']:.0f} forward passes, {summary['seconds_per_infill']:.1f} s per infill")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    if args.plot:
        fig, ax = figure(figsize=(5.2, 4.4))
        ax.scatter([r["true"] for r in rows], [r["chosen"] for r in rows], label="searched length")
        ax.plot([args.min, args.max], [args.min, args.max], color="gray", linestyle=":", label="chosen = true")
        ax.axhline(fixed, color="tab:orange", linestyle="--", label=f"fixed guess ({fixed})")
        ax.set_xlabel("true length of the removed line (characters)")
        ax.set_ylabel("length chosen by the search (characters)")
        ax.set_title(f"unknown-length infilling (correlation {corr:.2f})")
        ax.legend(fontsize=8)
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
