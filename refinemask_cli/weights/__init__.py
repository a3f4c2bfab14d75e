"""Weights: the project's checkpoint format and converters from other projects."""
from .checkpoint import WeightsError, load_model, read_checkpoint, save_checkpoint

__all__ = ["WeightsError", "load_model", "read_checkpoint", "save_checkpoint"]
