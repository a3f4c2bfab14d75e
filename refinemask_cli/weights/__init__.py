from .checkpoint import WeightsError, load_model, read_checkpoint, save_checkpoint
