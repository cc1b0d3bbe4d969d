"""The demo's puzzle: one held-out 6x6 Sudoku solved by the reasoning bench's masked diffusion model
(confidence order: easiest cells first, drawn live) next to the AR model's left-to-right attempt.
It reuses the models `dlm bench --suite reasoning` trained (its cache); without them it says how to
get them and costs the demo nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from dlm.errors import DlmError
from dlm.evaluation.reasoning import AR_DECODERS, MASKED_DECODERS, decode, task_length
from dlm.training.checkpoint import Checkpoint, load_checkpoint

TASK = "sudoku6"


def find_models(cache: Path) -> dict[str, Checkpoint] | None:
    """The newest pair of finished masked and AR sudoku6 runs of the same budget in a bench cache."""
    folder = cache / TASK
    if not folder.is_dir():
        return None
    runs = sorted((p for p in folder.iterdir() if (p / "latest").exists()), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    for run in runs:
        if not run.name.startswith("masked-"):
            continue
        other = folder / ("ar-" + run.name.removeprefix("masked-"))
        if (other / "latest").exists():
            try:
                return {"masked": load_checkpoint(run), "ar": load_checkpoint(other)}
            except DlmError:
                continue
    return None


def grid_lines(cells: str, n: int = 6) -> list[str]:
    cells = (cells + "?" * n * n)[:n * n]
    return [" ".join(cells[r * n:(r + 1) * n]) for r in range(n)]


def show_puzzle(console, cache: Path, *, live: bool) -> dict | None:
    from dlm.cli.terminal import LiveView
    from dlm.data.tasks import load_task, task_splits

    models = find_models(cache)
    if models is None:
        console.print(f"(no reasoning models in {cache}: `dlm bench --suite reasoning` trains them, and then this "
                      f"demo shows a Sudoku solved by masked diffusion next to AR)")
        return None
    masked, ar = models["masked"], models["ar"]
    task = load_task(masked.config["train"]["data"])
    inst = task_splits(task)["test"][0]
    tok = masked.tokenizer
    n_prompt = len(tok.encode(inst.prompt))
    console.rule("a held-out 6x6 Sudoku: masked diffusion fills the easiest cells first; AR writes left to right")
    if live:
        from dlm.sampling import Canvas, SAMPLERS

        length = task_length(masked, n_prompt)
        device = next(masked.model.parameters()).device
        canvas = Canvas.for_generation([tok.encode(inst.prompt)], length, fill_id=tok.mask_id, pad_id=tok.pad_id,
                                       device=device)
        with LiveView(tok, canvas, delay=0.08, title="masked diffusion, confidence order") as view:
            SAMPLERS["confidence"](masked.model, masked.process, canvas, steps=length, callback=view,
                                   generator=torch.Generator(device=device).manual_seed(0),
                                   **dict(MASKED_DECODERS[0].knobs))
    answers = {"masked": decode(masked, [inst.prompt], task_length(masked, n_prompt), MASKED_DECODERS[0])[0],
               "ar": decode(ar, [inst.prompt], task_length(ar, n_prompt), AR_DECODERS[0])[0]}
    solved = {name: task.is_solved(inst.prompt, text) for name, text in answers.items()}
    columns = [("puzzle", grid_lines(inst.prompt[:-1])),
               *((f"{name} {'solved' if solved[name] else 'wrong'}", grid_lines(answers[name])) for name in answers)]
    console.print("   ".join(f"{title:<13s}" for title, _ in columns), highlight=False)
    for row in range(6):
        console.print("   ".join(f"{lines[row]:<13s}" for _, lines in columns), markup=False, highlight=False)
    return {"puzzle": inst.prompt, **{f"{name}_answer": text for name, text in answers.items()},
            **{f"{name}_solved": ok for name, ok in solved.items()}}
