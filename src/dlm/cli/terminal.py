"""The terminal view of a canvas being denoised: masked positions dimmed, fresh tokens lit."""

from __future__ import annotations

import sys
import time

from dlm.data.tokenizer import Tokenizer
from dlm.sampling.canvas import Canvas
from dlm.sampling.result import StepInfo

MASK_GLYPH = "░"


def render(tokenizer: Tokenizer, canvas: Canvas, tokens, *, row: int = 0, changed=None, mask_id: int | None = None,
           confidence=None):
    """A rich Text of one row: fixed text plain, masked positions as ░, new tokens coloured
    from red (low confidence) to green (high); padding is not shown."""
    from rich.text import Text

    mask_id = tokenizer.mask_id if mask_id is None else mask_id
    text = Text()
    ids = tokens[row].tolist()
    editable = canvas.editable[row].tolist()
    live = canvas.attention_mask[row].tolist()
    fresh = changed[row].tolist() if changed is not None else [False] * len(ids)
    conf = confidence[row].tolist() if confidence is not None else None
    for i, token in enumerate(ids):
        if not live[i]:
            continue
        if editable[i] and token == mask_id:
            text.append(MASK_GLYPH, style="dim")
        elif fresh[i]:
            c = conf[i] if conf is not None and conf[i] == conf[i] and conf[i] > float("-inf") else 1.0
            green = int(80 + 175 * max(0.0, min(1.0, c)))
            text.append(tokenizer.token_text(token), style=f"bold rgb({255 - green + 80},{green},80)")
        elif editable[i]:
            text.append(tokenizer.token_text(token), style="cyan")
        else:
            text.append(tokenizer.token_text(token))
    return text


class LiveView:
    """A sampler callback that redraws row `row` of the canvas after every step (on a terminal)."""

    def __init__(self, tokenizer: Tokenizer, canvas: Canvas, *, row: int = 0, delay: float = 0.0, title: str = ""):
        from rich.console import Console
        from rich.live import Live

        self.tokenizer, self.canvas, self.row, self.delay, self.title = tokenizer, canvas, row, delay, title
        self.console = Console(file=sys.stdout)
        self._live = Live(self._frame(canvas.tokens, None, None, ""), console=self.console,
                          refresh_per_second=30, transient=False)

    def _frame(self, tokens, changed, confidence, status: str):
        from rich.panel import Panel

        body = render(self.tokenizer, self.canvas, tokens, row=self.row, changed=changed, confidence=confidence)
        return Panel(body, title=self.title, subtitle=status, subtitle_align="right", expand=False)

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def __call__(self, info: StepInfo) -> None:
        status = f"step {info.step}/{info.steps} · {info.nfe} forward passes · t={info.t:.2f}"
        self._live.update(self._frame(info.tokens, info.changed, info.confidence, status))
        if self.delay:
            time.sleep(self.delay)
