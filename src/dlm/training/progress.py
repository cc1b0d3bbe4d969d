"""A progress line for long work: a live bar on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class TrainingProgress:
    """Shows step/total, loss, tokens/s and ETA on stderr. `enabled=None` means: when stderr is a terminal
    show a live bar, otherwise print a plain line every `every_seconds`."""

    def __init__(self, total: int, *, enabled: bool | None = None, every_seconds: float = 30.0, start_step: int = 0):
        self.total = total
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.quiet = enabled is False
        self.every = every_seconds
        self.last_print = 0.0
        self.start_step = start_step
        self.started = time.perf_counter()
        self._bar = None
        if self.interactive and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 TextColumn("eta {task.fields[eta]}"), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start_step, info="", eta="?")
            self._bar.start()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def update(self, step: int, *, loss: float, tokens_per_second: float, extra: str = "") -> None:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = _clock(elapsed / done * (self.total - step)) if done > 0 else "?"
        info = f"loss {loss:.4f}  {tokens_per_second / 1000:.1f}k tok/s{('  ' + extra) if extra else ''}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info, eta=eta)
        elif not self.quiet and (time.perf_counter() - self.last_print >= self.every or step == self.total):
            self.last_print = time.perf_counter()
            print(f"step {step}/{self.total}  {info}  eta {eta}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
