"""Quality against speed, AR against diffusion, on one protocol: the frontier plot and table.

    python benchmarks/frontier.py --out frontier            # trains (once; cached) and measures everything
    python benchmarks/frontier.py --out frontier --json     # ... and prints one JSON object on stdout

Trains or reuses (in ~/.cache/dlm/frontier-SUITE-VERSION, or --cache) AR models of three budgets or
sizes, masked diffusion from scratch, block diffusion adapted from the AR model, and the students
of self-distillation of both, plus the AR judge (a larger preset, at least 4x the longest
contestant's minutes); then decodes the protocol's held-out prompts with every setting at batch 1
and 8 and writes frontier.md, frontier.json and frontier.png (see dlm.evaluation.frontier).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from dlm import __version__
    from dlm.evaluation.frontier import SUITES, run_frontier, suite_named
    from dlm.evaluation.report import write_frontier

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="small")
    p.add_argument("--out", default="frontier", help="folder for frontier.md, frontier.json and frontier.png")
    p.add_argument("--cache", default=None, help="where the models live (default ~/.cache/dlm/frontier-SUITE-VERSION)")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    args = p.parse_args(argv)
    suite = suite_named(args.suite)
    if args.cache:
        cache = Path(args.cache).expanduser()
    else:
        from dlm.cli import cache_home

        cache = cache_home() / f"frontier-{suite.name}-{__version__}"
    log = lambda message: print(f"[frontier] {message}", file=sys.stderr, flush=True)  # noqa: E731
    result = run_frontier(suite, cache, log=log, progress=args.progress)
    path = write_frontier(result, Path(args.out))
    log(f"report: {path} ({result.seconds / 60:.1f} min)")
    if args.json:
        print(json.dumps(result.to_json(), default=str))
    else:
        print(path.read_text().split("## Models")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
