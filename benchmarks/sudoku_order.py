"""How much the order of filling matters on Sudoku, without any model: the share of puzzles that a
solver using only naked and hidden singles completes when it may fill cells in any order (what
confidence decoding, easiest first, can do) against left to right without looking ahead (what a
greedy AR decoder must do). This is how the reasoning suite's `sudoku6:givens=14` was chosen.

    python benchmarks/sudoku_order.py --puzzles 100
"""

from __future__ import annotations

import argparse
import json
import random

from dlm.data.tasks import load_task
from dlm.data.tasks.sudoku import make_puzzle


def single(grid: list[int], i: int, n: int, units_of: list[list[list[int]]]) -> int:
    """The digit a naked or hidden single forces at empty cell i, else 0."""
    def seen(cell: int) -> set[int]:
        return {grid[j] for unit in units_of[cell] for j in unit if grid[j]}

    candidates = set(range(1, n + 1)) - seen(i)
    if len(candidates) == 1:
        return candidates.pop()
    for unit in units_of[i]:
        for d in candidates:  # d fits nowhere else in this unit
            if all(grid[j] != d and (grid[j] or d in seen(j)) for j in unit if j != i):
                return d
    return 0


def solves(puzzle: list[int], n: int, units_of, *, any_order: bool) -> bool:
    grid = list(puzzle)
    if any_order:
        progress = True
        while progress:
            progress = False
            for i in range(len(grid)):
                if not grid[i] and (d := single(grid, i, n, units_of)):
                    grid[i], progress = d, True
        return all(grid)
    for i in range(len(grid)):
        if not grid[i]:
            grid[i] = single(grid, i, n, units_of)
            if not grid[i]:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puzzles", type=int, default=100)
    parser.add_argument("--settings", default="sudoku6:12,sudoku6:14,sudoku6:16,sudoku6:18,sudoku6:20,sudoku:30,sudoku:36")
    args = parser.parse_args()
    rows = []
    for setting in args.settings.split(","):
        name, givens = setting.split(":")
        task = load_task(f"{name}:givens={givens}")
        geo = task.geo
        units = geo.units()
        units_of = [[u for u in units if i in u] for i in range(geo.cells)]
        rng = random.Random(1)
        counts = {"any_order": 0, "left_to_right": 0}
        for _ in range(args.puzzles):
            made = None
            while made is None:
                made = make_puzzle(geo, int(givens), rng)
            for key in counts:
                counts[key] += solves(made[0], geo.n, units_of, any_order=key == "any_order")
        rows.append({"task": name, "givens": int(givens), "puzzles": args.puzzles,
                     **{k: v / args.puzzles for k, v in counts.items()}})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
