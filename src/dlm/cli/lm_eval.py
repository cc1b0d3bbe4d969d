"""`dlm lm-eval`: a checkpoint on lm-evaluation-harness tasks, through the "dlm" adapter
(`dlm.evaluation.harness`; needs the [eval] extra). Wraps `lm_eval.simple_evaluate` and prints
its results table; the bundled local tasks (dlm_shakespeare_mc, _gen, _ppl, or all three as
dlm_shakespeare) need no download."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return int(value) if value >= 1 and value == int(value) else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dlm.cli import DTYPES, non_negative_float, positive_int

    p.add_argument("checkpoint", nargs="?", metavar="DIR", help="a run or checkpoint folder written by `dlm train`, "
                   "or a LLaDA or Dream folder (as for `dlm generate`)")
    p.add_argument("--model", metavar="DIR", help="the same folder, as lm_eval's own command spells it")
    p.add_argument("--tasks", required=True, metavar="T[,T...]",
                   help="task names, comma-separated: lm_eval's own (downloaded by `datasets`), those under "
                        "--include-path, or the bundled local ones: dlm_shakespeare (= _mc, _gen and _ppl)")
    p.add_argument("--include-path", action="append", default=None, metavar="DIR",
                   help="a folder of task YAML files (repeatable); the bundled tasks are always included")
    p.add_argument("--limit", type=positive_number, default=None, metavar="N",
                   help="documents per task (a fraction of them if below 1)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--mc-num", type=positive_int, default=128,
                   help="Monte-Carlo draws of the bound per loglikelihood request (default 128, as LLaDA)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per forward pass")
    p.add_argument("--sampler", default=None, help="generation: default the process's own")
    p.add_argument("--steps", type=positive_int, default=None, help="generation: denoising steps (default one per token)")
    p.add_argument("--gen-length", type=positive_int, default=None,
                   help="generation: tokens to write (default: the task's max_gen_toks)")
    p.add_argument("--block-length", type=positive_int, default=None, help="generation: confidence sampler blocks")
    p.add_argument("--temperature", type=non_negative_float, default=None,
                   help="generation: default the task's (0 when it does not sample)")
    p.add_argument("--no-greedy-check", action="store_true",
                   help="report is_greedy as False instead of decoding each continuation greedily (faster; "
                        "only tasks such as LAMBADA's accuracy read it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' precision")
    p.add_argument("--output", default=None, metavar="FILE", help="also write lm_eval's results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show lm_eval's own log messages")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")


def task_manager(names: list[str], include_paths: list[str]):
    """A TaskManager that knows `names`: only the bundled and included folders when they hold
    them all (indexing lm_eval's thousands of tasks takes seconds), else lm_eval's tasks too."""
    from lm_eval.tasks import TaskManager

    from dlm.errors import DlmError
    from dlm.evaluation.harness import TASKS

    paths = [str(TASKS), *include_paths]
    manager = TaskManager(include_path=paths, include_defaults=False)
    by_name = [n for n in names if not n.endswith((".yaml", ".yml"))]
    if all(manager.match_tasks([n]) for n in by_name):
        return manager
    manager = TaskManager(include_path=paths)
    unknown = [n for n in by_name if not manager.match_tasks([n])]
    if unknown:
        raise DlmError(f"no task named {', '.join(unknown)}; list lm_eval's with `lm_eval ls tasks`, give the "
                       f"folder of your own with --include-path, or use the bundled dlm_shakespeare")
    return manager


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dlm.errors import DlmError

    try:
        import lm_eval
        from lm_eval.utils import handle_non_serializable, make_table
    except ImportError:
        raise DlmError("`dlm lm-eval` needs lm-evaluation-harness: pip install -e '.[eval]'") from None
    from dlm.evaluation.harness import DlmLM
    from dlm.training.performance import resolve_device

    if (args.checkpoint is None) == (args.model is None):
        raise DlmError("name the checkpoint once: `dlm lm-eval DIR --tasks ...` (or --model DIR)")
    model_dir = args.checkpoint or args.model
    for folder in args.include_path or []:
        if not Path(folder).is_dir():
            raise DlmError(f"--include-path {folder} is not a folder of task YAML files")
    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise DlmError("--tasks is empty; name at least one task, e.g. --tasks dlm_shakespeare")
    manager = task_manager(names, args.include_path or [])
    device = resolve_device(args.device)  # a GPU asked for and missing is an error here, not a fallback
    lm = DlmLM(model_dir, mc_num=args.mc_num, batch_size=args.batch_size, sampler=args.sampler, steps=args.steps,
               gen_length=args.gen_length, block_length=args.block_length, temperature=args.temperature,
               seed=args.seed, device=str(device), dtype=args.dtype, check_greedy=not args.no_greedy_check,
               progress=not (args.no_progress or args.json))
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=manager, log_samples=False, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
    seconds = time.perf_counter() - start
    if results is None:  # lm_eval returns nothing on ranks other than 0
        return 0
    payload = {"model": str(lm.ckpt.path), "process": lm.ckpt.process.name, "tasks": names,
               "results": results["results"], "groups": results.get("groups", {}),
               "n-samples": results.get("n-samples", {}), "higher_is_better": results.get("higher_is_better", {}),
               "config": {"mc_num": args.mc_num, "batch_size": args.batch_size, "seed": args.seed,
                          "limit": args.limit, "num_fewshot": args.num_fewshot},
               "seconds": seconds}
    text = json.dumps(payload, default=handle_non_serializable, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.json:
        print(json.dumps(json.loads(text)))
        return 0
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    bound = "exact log-likelihood" if lm.exact else f"ELBO from {args.mc_num} Monte-Carlo draws per request"
    print(f"[dlm lm-eval: {lm.ckpt.path} ({lm.ckpt.process.name}; {bound}), {seconds:.1f} s]", file=sys.stderr)
    return 0
