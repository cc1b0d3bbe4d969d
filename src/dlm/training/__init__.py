"""Training: the loop, optimiser, EMA and checkpoints (objectives live in dlm.processes)."""

from dlm.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dlm.training.config import TrainConfig
from dlm.training.loop import TrainingDiverged, TrainResult, train

__all__ = ["Checkpoint", "TrainConfig", "TrainResult", "TrainingDiverged", "load_checkpoint", "save_checkpoint",
           "train"]
