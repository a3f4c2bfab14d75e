"""Pure numpy geometry: COCO segmentations ↔ masks. Conventions: masks are bool ``(H, W)``."""
from .masks import segmentation_kind, segmentation_to_mask

__all__ = ["segmentation_kind", "segmentation_to_mask"]
