"""Model inputs built from files: datasets and augmentation for training."""
