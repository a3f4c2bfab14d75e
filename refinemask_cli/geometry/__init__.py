"""Pure numpy geometry: COCO segmentations ↔ masks. Conventions: masks are bool ``(H, W)``."""
from .masks import segmentation_kind, segmentation_to_mask

__all__ = ["segmentation_kind", "segmentation_to_mask"]
from .polygons import Outline, encode_rle, mask_bbox, mask_to_outline  # noqa: E402

__all__ += ["Outline", "encode_rle", "mask_bbox", "mask_to_outline"]
from .cleanup import Cleaned, remove_small_regions  # noqa: E402

__all__ += ["Cleaned", "remove_small_regions"]
from .guided import guided_filter

__all__ += ["guided_filter"]
