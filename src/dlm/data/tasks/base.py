"""What every reasoning task shares: its parameters (parsed from a `--data` spec such as
``sudoku6:givens=18,train=20000``), deterministic generation, and train / validation / test
splits that never share an instance.

A task draws instances from one `random.Random` seeded by (task name, seed); each instance has a
`key` (its content: for Sudoku the solution grid, for Countdown the numbers and target, for paths
the graph, start and goal). Drawn instances whose key was seen before are skipped, and the first
`test` distinct ones are the test split, the next `valid` the validation split, the rest the
training split: so the splits are disjoint by content, and the test split does not depend on how
many training instances are asked for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from dlm.errors import DlmError

PROMPT_END = "|"  # every task's prompt ends with it: the response starts after it


@dataclass(frozen=True)
class Param:
    default: int
    low: int
    high: int
    help: str


COMMON = {
    "train": Param(20000, 1, 2_000_000, "training instances"),
    "valid": Param(200, 1, 100_000, "validation instances (the loss tracked while training)"),
    "test": Param(1000, 1, 100_000, "held-out test instances (what the reasoning bench solves)"),
    "seed": Param(0, 0, 2**31 - 1, "the generator's seed"),
}


@dataclass(frozen=True)
class Instance:
    prompt: str  # ends with PROMPT_END
    response: str
    key: tuple  # the instance's content, for deduplication across splits
    difficulty: int = 0  # a task-specific difficulty (Sudoku: givens; paths: planning distance)


class Task:
    """A procedural task: subclasses set `name`, `params` (their own `Param`s), `alphabet`, and
    write `draw` (one instance from an rng), `is_valid` (the response is well formed) and
    `is_solved` (it solves the prompt's instance). `self.p` holds the parsed parameter values."""

    name: str = ""
    params: dict[str, Param] = {}
    alphabet: str = ""
    description: str = ""

    def __init__(self, **values: int):
        known = {**COMMON, **self.params}
        self.p = {k: param.default for k, param in known.items()}
        self.p.update(values)
        self.check()

    def check(self) -> None:
        """Cross-parameter checks (each value is already inside its range); raise DlmError."""

    # -- what subclasses write ------------------------------------------------------------
    def draw(self, rng: random.Random) -> Instance:
        raise NotImplementedError

    def is_valid(self, prompt: str, response: str) -> bool:
        raise NotImplementedError

    def is_solved(self, prompt: str, response: str) -> bool:
        raise NotImplementedError

    @property
    def max_response(self) -> int:
        """The longest response in tokens (one character each)."""
        raise NotImplementedError

    @property
    def max_prompt(self) -> int:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Tokens a training row needs: prompt, response and one end-of-text."""
        return self.max_prompt + self.max_response + 1

    @property
    def spec(self) -> str:
        """The canonical `--data` spec of this task with every parameter written out."""
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in sorted(self.p.items()))

    def splits(self) -> dict[str, list[Instance]]:
        return _splits(type(self), tuple(sorted(self.p.items())))


@lru_cache(maxsize=8)
def _splits(cls: type, items: tuple) -> dict[str, list[Instance]]:
    task = cls(**dict(items))
    p = task.p
    need = p["test"] + p["valid"] + p["train"]
    rng = random.Random(f"{task.name}:{p['seed']}")  # str seeds hash deterministically (sha512)
    seen, drawn, tries = set(), [], 0
    while len(drawn) < need:
        tries += 1
        if tries > 20 * need + 1000:
            raise DlmError(f"{task.name} found only {len(drawn)} distinct instances of the {need} asked for "
                           f"(train + valid + test); ask for fewer or widen the task's parameters")
        inst = task.draw(rng)
        if inst.key in seen:
            continue
        seen.add(inst.key)
        drawn.append(inst)
    t, v = p["test"], p["test"] + p["valid"]
    return {"test": drawn[:t], "validation": drawn[t:v], "train": drawn[v:]}


def parse_spec(spec: str, tasks: dict[str, type]) -> Task:
    """``name`` or ``name:key=value,key=value`` (integers) -> the task; bad parameters are a DlmError
    that names the known ones and their ranges."""
    name, _, rest = spec.partition(":")
    cls = tasks[name]
    known = {**COMMON, **cls.params}
    values = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in known:
            listing = ", ".join(f"{k} ({p.low}..{p.high}, default {p.default}: {p.help})" for k, p in known.items())
            raise DlmError(f"task {name!r} has no parameter {key!r}; its parameters are: {listing}")
        try:
            number = int(value.strip()) if eq else None
        except ValueError:
            number = None
        if number is None:
            raise DlmError(f"task parameter {key} needs an integer value, like {name}:{key}={known[key].default}; "
                           f"got {item!r}")
        if not known[key].low <= number <= known[key].high:
            raise DlmError(f"task parameter {key}={number} is out of range: {name} takes {key} from "
                           f"{known[key].low} to {known[key].high} ({known[key].help})")
        values[key] = number
    return cls(**values)
