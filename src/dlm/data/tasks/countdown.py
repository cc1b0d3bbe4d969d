"""Countdown: reach a target from `numbers` integers with + - * / (Ye et al., 2025, Countdown-4).

Prompt: the numbers and the target, e.g. "12,5,7,3>84|"; response: one equation per operation,
"12*7=84,5-3=2,84*2=168"-style, each combining two numbers still available (given or made by an
earlier equation) into a new one. A solution uses every number exactly once, so it has
numbers - 1 equations and the last result is the target. Intermediate results are positive
integers up to `max_result` (division only when exact). The instance's key is the multiset of
numbers and the target; the generator's own solution is one of possibly several, and the
checker accepts any. Equations are parsed and computed by hand (no eval()).
"""

from __future__ import annotations

import random
import re
from collections import Counter

from dlm.data.tasks.base import PROMPT_END, Instance, Param, Task
from dlm.errors import DlmError

OPS = "+-*/"
EQUATION = re.compile(r"^(\d{1,6})([-+*/])(\d{1,6})=(\d{1,7})$")
PROMPT = re.compile(r"^(\d+(?:,\d+)*)>(\d+)\|$")


def apply(a: int, op: str, b: int) -> int | None:
    """a op b when it is a positive integer (exact division, no zero or negative), else None."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b and a % b == 0 else None
    return None


class Countdown(Task):
    name = "countdown"
    params = {"numbers": Param(4, 2, 6, "numbers to combine"),
              "max_number": Param(50, 2, 999, "largest given number"),
              "max_result": Param(999, 10, 99999, "largest target and intermediate result")}
    alphabet = "0123456789,>+-*/=" + PROMPT_END
    description = "Countdown: combine every given number with + - * / into the target"

    def check(self) -> None:
        if self.p["max_result"] < self.p["max_number"]:
            raise DlmError(f"countdown needs max_result >= max_number, got {self.p['max_result']} < "
                           f"{self.p['max_number']}")

    @property
    def max_prompt(self) -> int:
        return self.p["numbers"] * (len(str(self.p["max_number"])) + 1) + len(str(self.p["max_result"])) + 1

    @property
    def max_response(self) -> int:
        width = len(str(self.p["max_result"]))
        return (self.p["numbers"] - 1) * (3 * width + 3) - 1

    def draw(self, rng: random.Random) -> Instance:
        k, top = self.p["numbers"], self.p["max_result"]
        while True:
            numbers = [rng.randint(1, self.p["max_number"]) for _ in range(k)]
            pool, steps = list(numbers), []
            while len(pool) > 1:
                i, j = rng.sample(range(len(pool)), 2)
                a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
                choices = [(op, c) for op in OPS if (c := apply(a, op, b)) is not None and c <= top]
                if not choices:
                    break
                op, c = rng.choice(choices)
                steps.append(f"{a}{op}{b}={c}")
                pool = [x for n, x in enumerate(pool) if n not in (i, j)] + [c]
            if len(pool) == 1:
                target = pool[0]
                prompt = ",".join(map(str, numbers)) + ">" + str(target) + PROMPT_END
                return Instance(prompt, ",".join(steps), key=(tuple(sorted(numbers)), target), difficulty=k)

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int] | None:
        m = PROMPT.match(prompt)
        if m is None:
            return None
        return [int(x) for x in m.group(1).split(",")], int(m.group(2))

    @staticmethod
    def parse(response: str) -> list[tuple[int, str, int, int]] | None:
        """The equations (a, op, b, c) of a well-formed response, else None."""
        steps = []
        for part in response.split(","):
            m = EQUATION.match(part)
            if m is None:
                return None
            steps.append((int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))))
        return steps

    def is_valid(self, prompt: str, response: str) -> bool:
        """Comma-separated equations "a op b = c" (right or wrong)."""
        return self.parse(response) is not None

    def is_solved(self, prompt: str, response: str) -> bool:
        """Each equation is right and uses numbers still available; all are used; the last is the target."""
        given, steps = self.parse_prompt(prompt), self.parse(response)
        if given is None or steps is None:
            return False
        numbers, target = given
        pool = Counter(numbers)
        for a, op, b, c in steps:
            pool[a] -= 1
            pool[b] -= 1
            if pool[a] < 0 or pool[b] < 0 or apply(a, op, b) != c:
                return False
            pool[c] += 1
        left = +pool  # drop zero counts
        return sum(left.values()) == 1 and left[target] == 1 and steps[-1][3] == target
