"""Sudoku (9x9, boxes 3x3) and its 6x6 variant (boxes 2 rows x 3 columns).

Prompt: the grid row by row, one character per cell, "." for a blank, then "|"; response: the
solved grid, one digit per cell. A puzzle is made by filling a random grid (randomised
backtracking), then blanking cells in random order while the solver proves the solution is still
unique, until `givens` cells are left (a grid that gets stuck above that is thrown away): every
puzzle has exactly one solution, and `givens` is its difficulty (fewer = harder).
"""

from __future__ import annotations

import random
from functools import cached_property

from dlm.data.tasks.base import PROMPT_END, Instance, Param, Task
from dlm.errors import DlmError

BLANK = "."


class Geometry:
    """An n x n grid with boxes of box_rows x box_cols; digits 1..n are bits 0..n-1 of a mask."""

    def __init__(self, box_rows: int, box_cols: int):
        self.box_rows, self.box_cols = box_rows, box_cols
        self.n = n = box_rows * box_cols
        self.cells = n * n
        self.full = (1 << n) - 1
        self.rcb = [(i // n, i % n, (i // n) // box_rows * box_rows + (i % n) // box_cols) for i in range(n * n)]

    def units(self) -> list[list[int]]:
        """Every row, column and box as a list of cell indices."""
        n = self.n
        rows = [[r * n + c for c in range(n)] for r in range(n)]
        cols = [[r * n + c for r in range(n)] for c in range(n)]
        boxes = [[i for i in range(n * n) if self.rcb[i][2] == b] for b in range(n)]
        return rows + cols + boxes


def solve(grid: list[int], geo: Geometry, *, limit: int = 2, rng: random.Random | None = None) -> list[list[int]]:
    """Up to `limit` solutions of `grid` (0 = blank), by depth-first search on the cell with the
    fewest candidates; digits are tried in random order when `rng` is given (to fill grids)."""
    rows, cols, boxes = [0] * geo.n, [0] * geo.n, [0] * geo.n
    grid = list(grid)
    for i, v in enumerate(grid):
        if v:
            r, c, b = geo.rcb[i]
            bit = 1 << (v - 1)
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return []  # the givens already clash
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    empties = [i for i, v in enumerate(grid) if not v]
    solutions: list[list[int]] = []

    def search() -> bool:  # True: stop (enough solutions)
        best, best_mask, best_count = -1, 0, geo.n + 1
        for i in empties:
            if grid[i]:
                continue
            r, c, b = geo.rcb[i]
            mask = geo.full & ~(rows[r] | cols[c] | boxes[b])
            count = mask.bit_count()
            if count < best_count:
                best, best_mask, best_count = i, mask, count
                if count <= 1:
                    break
        if best < 0:
            solutions.append(list(grid))
            return len(solutions) >= limit
        digits = [d for d in range(1, geo.n + 1) if best_mask >> (d - 1) & 1]
        if rng is not None:
            rng.shuffle(digits)
        r, c, b = geo.rcb[best]
        for d in digits:
            bit = 1 << (d - 1)
            grid[best] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search()
            grid[best] = 0
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            if stop:
                return True
        return False

    search()
    return solutions


def make_puzzle(geo: Geometry, givens: int, rng: random.Random) -> tuple[list[int], list[int]] | None:
    """(puzzle, solution) with exactly `givens` filled cells and one solution, or None when the
    random blanking order gets stuck above `givens` (every further blank would allow two)."""
    solution = solve([0] * geo.cells, geo, limit=1, rng=rng)[0]
    puzzle = list(solution)
    order = list(range(geo.cells))
    rng.shuffle(order)
    filled = geo.cells
    for i in order:
        if filled == givens:
            break
        puzzle[i] = 0
        if len(solve(puzzle, geo, limit=2)) == 1:
            filled -= 1
        else:
            puzzle[i] = solution[i]
    return (puzzle, solution) if filled == givens else None


class Sudoku(Task):
    name = "sudoku"
    box_rows, box_cols = 3, 3
    params = {"givens": Param(36, 17, 80, "filled cells of the puzzle (fewer = harder)")}
    description = "9x9 Sudoku with a unique solution"

    @cached_property
    def geo(self) -> Geometry:
        return Geometry(self.box_rows, self.box_cols)

    @property
    def alphabet(self) -> str:
        return "".join(str(d) for d in range(1, self.geo.n + 1)) + BLANK + PROMPT_END

    @property
    def max_prompt(self) -> int:
        return self.geo.cells + 1

    @property
    def max_response(self) -> int:
        return self.geo.cells

    def draw(self, rng: random.Random) -> Instance:
        while True:
            made = make_puzzle(self.geo, self.p["givens"], rng)
            if made is not None:
                puzzle, solution = made
                prompt = "".join(str(v) if v else BLANK for v in puzzle) + PROMPT_END
                return Instance(prompt, "".join(map(str, solution)), key=tuple(solution),
                                difficulty=self.p["givens"])

    def parse(self, response: str) -> list[int] | None:
        digits = "".join(str(d) for d in range(1, self.geo.n + 1))
        if len(response) != self.geo.cells or any(ch not in digits for ch in response):
            return None
        return [int(ch) for ch in response]

    def is_valid(self, prompt: str, response: str) -> bool:
        """A full grid of digits 1..n (whatever their arrangement)."""
        return self.parse(response) is not None

    def is_solved(self, prompt: str, response: str) -> bool:
        """Every row, column and box holds each digit once, and every given is kept."""
        grid = self.parse(response)
        if grid is None:
            return False
        cells = prompt[:-len(PROMPT_END)] if prompt.endswith(PROMPT_END) else prompt
        if len(cells) != self.geo.cells:
            return False
        if any(ch != BLANK and int(ch) != v for ch, v in zip(cells, grid)):
            return False
        want = set(range(1, self.geo.n + 1))
        return all({grid[i] for i in unit} == want for unit in self.geo.units())


class Sudoku6(Sudoku):
    name = "sudoku6"
    box_rows, box_cols = 2, 3
    params = {"givens": Param(18, 8, 35, "filled cells of the puzzle (fewer = harder)")}
    description = "6x6 Sudoku (boxes of 2 rows x 3 columns) with a unique solution"

    def check(self) -> None:
        if self.p["givens"] < 8:  # pragma: no cover (the range already says so)
            raise DlmError("a 6x6 Sudoku needs at least 8 givens to have a unique solution")
