"""What the sampling benchmarks share: an AR model as judge of samples, their character entropy,
prompts drawn from the validation split (thin adapters over `dlm.evaluation`), and a figure
that is drawn off-screen and saved.

The judge scores text, not token ids: it encodes with its own tokenizer, so that it can judge
a model trained on another corpus of the same text (e.g. prompt/response pairs).
"""

from __future__ import annotations

from dlm.evaluation.bench import validation_prompts as prompts_from_validation
from dlm.evaluation.judges import ARJudge
from dlm.evaluation.metrics import mean
from dlm.evaluation.metrics import unigram_entropy as char_entropy
from dlm.training import load_checkpoint

__all__ = ["Judge", "char_entropy", "figure", "mean", "prompts_from_validation", "save_figure"]


def Judge(path: str) -> ARJudge:
    """The AR checkpoint at `path` as a judge (exits with a message when it is not AR)."""
    ckpt = load_checkpoint(path)
    if ckpt.process.name != "ar":
        raise SystemExit(f"--judge must be an AR checkpoint, got a {ckpt.process.name} model in {path}")
    return ARJudge(ckpt)


def figure(ncols: int = 1, *, figsize: tuple[float, float]):
    """A matplotlib figure with `ncols` axes side by side, drawn without a display -> (fig, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")
