"""Models: the one transformer every process uses."""

from dlm.models.transformer import PRESETS, ModelConfig, Transformer, preset_config

__all__ = ["PRESETS", "ModelConfig", "Transformer", "preset_config"]
