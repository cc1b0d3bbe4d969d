"""Procedural reasoning and planning tasks as prompt/response corpora: `--data sudoku`, `sudoku6`,
`countdown`, `paths`, with integer parameters after a colon, e.g. ``--data sudoku6:givens=14,train=50000``.

Every task also takes train= / valid= / test= (instances per split) and seed=. Each split is a
list of `Instance`s; the corpus (`task_corpus`) holds the training and validation pairs for the
existing conditional training, and its tokenizer text is the task's whole alphabet, so that the
character tokenizer gives every digit and symbol one token of its own. The test split is read by
the reasoning bench (`load_task(spec).splits()["test"]`), with the task's checker
(`is_solved`, `is_valid`).

Generating large splits takes a while (about 5 ms a 6x6 Sudoku, 10-25 ms a 9x9 one, on one core),
so splits of 2000 instances or more are kept in a JSON file under $DLM_CACHE/tasks (else
~/.cache/dlm/tasks), named by the task's full spec and the generator version.
"""

from __future__ import annotations

import json
import os
import pathlib

from dlm.data.tasks.base import COMMON, PROMPT_END, Instance, Param, Task, parse_spec
from dlm.data.tasks.countdown import Countdown
from dlm.data.tasks.paths import Paths
from dlm.data.tasks.sudoku import Sudoku, Sudoku6

TASKS: dict[str, type[Task]] = {"sudoku": Sudoku, "sudoku6": Sudoku6, "countdown": Countdown, "paths": Paths}
GENERATOR_VERSION = 1  # bump when a generator changes what it draws: cached splits are then made afresh
CACHE_FROM = 2000  # instances; smaller splits are generated each time (well under a second)


def is_task(spec: str) -> bool:
    return spec.partition(":")[0] in TASKS


def load_task(spec: str) -> Task:
    """The task a `--data` spec names, its parameters checked (DlmError for bad ones)."""
    return parse_spec(spec, TASKS)


def _cache_file(task: Task) -> pathlib.Path:
    root = (os.environ.get("DLM_CACHE")
            or pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dlm")
    name = task.spec.replace(":", "-").replace(",", "-").replace("=", "")
    return pathlib.Path(root) / "tasks" / f"{name}-v{GENERATOR_VERSION}.json"


def task_splits(task: Task) -> dict[str, list[Instance]]:
    """The task's train / validation / test instances (from the cache file when there is one)."""
    total = task.p["train"] + task.p["valid"] + task.p["test"]
    if total < CACHE_FROM:
        return task.splits()
    path = _cache_file(task)
    try:
        data = json.loads(path.read_text())
        return {split: [Instance(p, r, key=(p,), difficulty=d) for p, r, d in rows] for split, rows in data.items()}
    except (OSError, ValueError, TypeError):
        pass
    splits = task.splits()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({s: [[i.prompt, i.response, i.difficulty] for i in rows]
                                   for s, rows in splits.items()}))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs time
    return splits


def task_corpus(spec: str):
    """A `Corpus` of the task's training and validation prompt/response pairs."""
    from dlm.data.corpora import Corpus

    task = load_task(spec)
    splits = task_splits(task)
    train = tuple((i.prompt, i.response) for i in splits["train"])
    validation = tuple((i.prompt, i.response) for i in splits["validation"])
    # the tokenizer reads `train`: the alphabet comes first, so every symbol has its token
    return Corpus(spec, (task.alphabet,) + tuple(p + r for p, r in train), tuple(p + r for p, r in validation),
                  f"{task.description} ({task.spec})", train, validation)


__all__ = ["COMMON", "PROMPT_END", "TASKS", "Countdown", "Instance", "Param", "Paths", "Sudoku", "Sudoku6", "Task",
           "is_task", "load_task", "task_corpus", "task_splits"]
