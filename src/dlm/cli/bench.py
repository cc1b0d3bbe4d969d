"""`dlm bench`: run a comparison suite and write its report (see dlm.evaluation.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlm import __version__


def cache_root(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache).expanduser()
    from dlm.cli import cache_home

    return cache_home() / f"bench-{args.suite}-{__version__}"


def run(args: argparse.Namespace) -> int:
    if args.suite.startswith(("reasoning", "epochs")):
        return run_extra(args)
    from dlm.evaluation.bench import run_bench, suite_named
    from dlm.evaluation.report import write_report

    overrides = {} if args.minutes is None else {"minutes": args.minutes}
    suite = suite_named(args.suite, **overrides)
    cache = cache_root(args)
    log = lambda message: print(f"[dlm bench] {message}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{suite.name} suite; models cached in {cache}")
    result = run_bench(suite, cache, log=log)
    path = write_report(result, Path(args.out))
    log(f"report: {path} ({result.seconds / 60:.1f} min)")
    if args.json:
        from dlm.cli import emit_json

        emit_json({"report": str(path), "seconds": result.seconds, "likelihood": result.likelihood,
                   "samples": result.samples})
    else:
        print(path.read_text().split("## Likelihood")[0])
    return 0


def run_extra(args: argparse.Namespace) -> int:
    """The reasoning suite (dlm.evaluation.reasoning) and the repeated-epochs suite (dlm.evaluation.epochs)."""
    if args.suite.startswith("reasoning"):
        from dlm.evaluation.reasoning import reasoning_suite as named, run_reasoning as measure
        from dlm.evaluation.reasoning import write_reasoning_report as write
    else:
        from dlm.evaluation.epochs import epochs_suite as named, run_epochs as measure, write_epochs_report as write
    suite = named(args.suite, minutes=args.minutes)
    cache = cache_root(args)
    log = lambda message: print(f"[dlm bench] {message}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{suite.name} suite; models cached in {cache}")
    result = measure(suite, cache, log=log)
    path = write(result, Path(args.out))
    log(f"report: {path} ({result.seconds / 60:.1f} min)")
    if args.json:
        from dlm.cli import emit_json

        emit_json({"report": str(path), "seconds": result.seconds})
    else:
        print(path.read_text())
    return 0
