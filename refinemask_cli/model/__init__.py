"""Pure model code: torch and torchvision only, no file IO, no printing."""
from .config import ModelConfig
from .detector import RefineMaskRCNN
from .factory import build_model, with_settings

__all__ = ["ModelConfig", "RefineMaskRCNN", "build_model", "with_settings"]
