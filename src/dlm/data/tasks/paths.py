"""Path-star graphs (Bachmann and Nagarajan, 2024, "The pitfalls of next-token prediction").

A start node with `degree` arms, each a directed chain of `length` further nodes; the goal is the
end of one arm. Nodes are distinct letters drawn at random per instance (one token each).
Prompt: the shuffled edge list, "ab,cd,...", then ";", start, goal and "|"; response: the path
from start to goal, one letter per node (length + 1 letters). The planning distance is the arm
length: with `min_length` below `length`, each instance draws its arm length from that range.

Teacher-forced left-to-right models tend to learn the "Clever Hans" rule (follow the edge out of
the previous node), which is right everywhere except at the one choice that matters, the first
step from the start (1 in `degree`); the goal's side of the path is a chain of look-ups.
"""

from __future__ import annotations

import random
import string

from dlm.data.tasks.base import PROMPT_END, Instance, Param, Task
from dlm.errors import DlmError

NODES = string.ascii_letters  # 52 labels
EDGE_SEP, QUERY = ",", ";"


class Paths(Task):
    name = "paths"
    params = {"degree": Param(2, 2, 10, "arms out of the start node"),
              "length": Param(5, 1, 50, "nodes on each arm: the planning distance"),
              "min_length": Param(0, 0, 50, "shortest arm when arm lengths vary (0: always `length`)")}
    alphabet = NODES + EDGE_SEP + QUERY + PROMPT_END
    description = "path-star graphs: find the path from the start to the goal"

    def check(self) -> None:
        d, n = self.p["degree"], self.p["length"]
        if 1 + d * n > len(NODES):
            raise DlmError(f"paths:degree={d},length={n} needs {1 + d * n} distinct nodes; there are {len(NODES)} "
                           f"labels, so keep 1 + degree x length <= {len(NODES)}")
        if self.p["min_length"] > n:
            raise DlmError(f"paths needs min_length <= length, got {self.p['min_length']} > {n}")

    @property
    def lengths(self) -> range:
        return range(self.p["min_length"] or self.p["length"], self.p["length"] + 1)

    @property
    def max_prompt(self) -> int:
        return 3 * self.p["degree"] * self.p["length"] - 1 + 4

    @property
    def max_response(self) -> int:
        return self.p["length"] + 1

    def draw(self, rng: random.Random) -> Instance:
        d, n = self.p["degree"], rng.choice(self.lengths)
        labels = rng.sample(NODES, 1 + d * n)
        start, arms = labels[0], [labels[1 + a * n:1 + (a + 1) * n] for a in range(d)]
        edges = [(([start] + arm)[i], arm[i]) for arm in arms for i in range(n)]
        rng.shuffle(edges)
        goal_arm = rng.randrange(d)
        goal = arms[goal_arm][-1]
        prompt = EDGE_SEP.join(u + v for u, v in edges) + QUERY + start + goal + PROMPT_END
        return Instance(prompt, start + "".join(arms[goal_arm]), key=(frozenset(edges), start, goal), difficulty=n)

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[set[tuple[str, str]], str, str] | None:
        body, _, query = prompt.rstrip(PROMPT_END).partition(QUERY)
        pairs = body.split(EDGE_SEP)
        if len(query) != 2 or any(len(p) != 2 for p in pairs):
            return None
        return {(p[0], p[1]) for p in pairs}, query[0], query[1]

    def is_valid(self, prompt: str, response: str) -> bool:
        """At least two letters, each a node of this graph."""
        parsed = self.parse_prompt(prompt)
        if parsed is None:
            return False
        nodes = {u for e in parsed[0] for u in e}
        return len(response) >= 2 and all(ch in nodes for ch in response)

    def is_solved(self, prompt: str, response: str) -> bool:
        """Starts at the start, ends at the goal, and every step follows an edge of the graph."""
        parsed = self.parse_prompt(prompt)
        if parsed is None or not self.is_valid(prompt, response):
            return False
        edges, start, goal = parsed
        return (response[0] == start and response[-1] == goal
                and all((u, v) in edges for u, v in zip(response, response[1:])))
