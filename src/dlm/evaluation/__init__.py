"""Evaluation: likelihood bounds now; judges, diversity and speed comparisons later."""

from dlm.evaluation.likelihood import evaluate_checkpoint

__all__ = ["evaluate_checkpoint"]
