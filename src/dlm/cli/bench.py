"""`dlm bench`: run a comparison suite and write its report (see dlm.evaluation.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlm import __version__
from dlm.errors import DlmError


def cache_root(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache).expanduser()
    from dlm.cli import cache_home

    return cache_home() / f"bench-{args.suite}-{__version__}"


def run(args: argparse.Namespace) -> int:
    """Train (or reuse) the suite's models, measure, write the report; print its path and summary."""
    if args.suite.startswith("reasoning"):
        from dlm.evaluation.reasoning import reasoning_suite as named, run_reasoning as measure
        from dlm.evaluation.reasoning import write_reasoning_report as write
        suite = named(args.suite, minutes=args.minutes, tasks=args.task)
    elif args.task:
        raise DlmError(f"--task picks the tasks of a reasoning suite; the {args.suite} suite has none")
    elif args.suite.startswith("epochs"):
        from dlm.evaluation.epochs import epochs_suite as named, run_epochs as measure, write_epochs_report as write
        suite = named(args.suite, minutes=args.minutes)
    else:
        from dlm.evaluation.bench import run_bench as measure, suite_named
        from dlm.evaluation.report import write_report as write
        suite = suite_named(args.suite, **({} if args.minutes is None else {"minutes": args.minutes}))
    cache = cache_root(args)
    log = lambda message: print(f"[dlm bench] {message}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{suite.name} suite; models cached in {cache}")
    result = measure(suite, cache, log=log)
    path = write(result, Path(args.out))
    log(f"report: {path} ({result.seconds / 60:.1f} min)")
    # the comparison suite's summary: its likelihood and sample rows, and the report up to its likelihood table
    summary = {k: getattr(result, k) for k in ("likelihood", "samples") if hasattr(result, k)}
    if args.json:
        from dlm.cli import emit_json

        emit_json({"report": str(path), "seconds": result.seconds, **summary})
    else:
        print(path.read_text().split("## Likelihood")[0])
    return 0
