"""Weights: the project's checkpoint format and converters from other projects."""
from .checkpoint import (
    WeightsError,
    average_weights,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

__all__ = ["WeightsError", "average_weights", "load_model", "read_checkpoint", "save_checkpoint"]
