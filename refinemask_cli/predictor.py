"""``Predictor``: numpy images in, typed detections at original image size out. No file IO.

Images are RGB ``uint8`` arrays ``(H, W, 3)``. Masks come back cropped to their box
(``InstanceMask``), so an image with hundreds of instances never holds an ``N × H × W`` array; pasting
happens chunk by chunk with mmdet/detectron2-style ``grid_sample`` (sample points at pixel centres).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .geometry import guided_filter
from .model import RefineMaskRCNN
from .model.inference import inference_copy
from .model.zoom import ZoomSpec

PRIOR_SIZE = 112


@dataclass(frozen=True)
class InstanceMask:
    """A binary mask stored as the crop ``mask`` whose top-left pixel is ``(y0, x0)`` in the image;
    ``confidence``: how little the mask depends on where its probabilities are cut (``stability``),
    where it was made from probabilities."""

    x0: int
    y0: int
    mask: np.ndarray  # bool (h, w)
    confidence: float | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        h, w = self.mask.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.mask[: height - self.y0, : width - self.x0]
        return out

    def with_mask(self, mask: np.ndarray) -> InstanceMask:
        """The same object (place, confidence) with another mask of the same crop."""
        return InstanceMask(self.x0, self.y0, mask, self.confidence)

    @classmethod
    def from_full(cls, mask: np.ndarray) -> InstanceMask:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        return cls(int(x0), int(y0), np.ascontiguousarray(mask[y0:y1, x0:x1].astype(bool)))


@dataclass
class Detections:
    """Per-image results; ``labels`` index the model's classes; boxes are xyxy pixels."""

    image_size: tuple[int, int]  # (height, width)
    boxes: np.ndarray  # float32 (N, 4)
    labels: np.ndarray  # int64 (N,)
    scores: np.ndarray  # float32 (N,)
    masks: list[InstanceMask] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.boxes)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "fp16", "bf16", "bf16-masks")
MODES = ("auto", "whole", "zoom")


@dataclass(frozen=True)
class RefineSettings:
    """How ``refine`` runs the network. ``mode``: ``zoom`` refines each object in its own crop,
    ``whole`` the whole image at the model's input size, ``auto`` zoom for weights trained for it
    (``zoom_size`` in their config) and whole otherwise. ``zoom_size``: the crop side (default: the
    size the weights were trained at, else their input size). ``flip``: average with the mirrored
    input. ``passes``: feed each result back as the coarse mask this many times minus one.
    ``zoom_max_size``: crops of objects larger than the zoom size grow with them up to this side.
    ``snap_edges``: pull each mask's edge towards the image's edges where the network's grid is
    coarser than the image (see ``snap_to_edges``). ``second_zoom_size``: in zoom mode, refine each
    object again in crops of this side and average the two (0: once). ``mask_threshold``: the
    probability from which a pixel is object (None: the weights' own for each object's prompt)."""

    mode: str = "auto"
    zoom_size: int | None = None
    flip: bool = True  # measured: +0.009 mIoU from boxes on two held-back sets, at half the speed
    passes: int = 1
    zoom_max_size: int = 0  # > zoom size: large objects' crops grow up to this side (0: never)
    # guided filter on each pasted probability map, the image as guide (measured: README "Measured")
    snap_edges: bool = True
    # measured with the 320-px default at 384: higher on 10 of 12 held-back rows (up to +0.007 mIoU),
    # poly8 a little lower on two sets, a third to a half of the speed (README "Measured"): an option
    second_zoom_size: int = 0
    # a pixel is object where its probability is at least this; None: the weights' own
    # (mask_threshold, and mask_prompt_threshold for objects given a coarse mask)
    mask_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask threshold must be between 0 and 1, got {self.mask_threshold}")
        if self.second_zoom_size and self.second_zoom_size < 32:
            raise ValueError(f"second zoom size must be 0 or >= 32 pixels, got {self.second_zoom_size}")
        if self.mode == "whole" and self.zoom_only():
            raise ValueError(self.zoom_only_error("not --mode whole"))
        if self.zoom_max_size and self.zoom_max_size < 32:
            raise ValueError(f"zoom max size must be 0 or >= 32 pixels, got {self.zoom_max_size}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.zoom_size is not None and self.zoom_size < 32:
            raise ValueError(f"zoom size must be >= 32 pixels, got {self.zoom_size}")
        if not 1 <= self.passes <= 4:
            raise ValueError(f"passes must be 1 to 4, got {self.passes}")

    def zoom_only(self) -> list[str]:
        """The options set that only zoom mode uses, by their CLI names."""
        return [name for name, value in (("--zoom-size", self.zoom_size), ("--zoom-max-size", self.zoom_max_size),
                                         ("--second-zoom-size", self.second_zoom_size)) if value]

    def zoom_only_error(self, why: str) -> str:
        asked = self.zoom_only()
        one = len(asked) == 1
        return f"{', '.join(asked)} {'is' if one else 'are'} for zoom mode, {why}, or leave {'it' if one else 'them'} out"


@dataclass(frozen=True)
class PredictSettings:
    """What ``predict`` keeps: detections scoring at least ``score_threshold``, at most
    ``max_detections`` per image (best first). Weights may carry their own defaults, chosen on held-back
    data (``meta.predict_score_threshold`` / ``meta.predict_max_detections``)."""

    score_threshold: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_detections < 1:
            raise ValueError(f"max detections must be >= 1, got {self.max_detections}")

    @classmethod
    def for_weights(cls, meta: dict, **overrides) -> PredictSettings:
        """The weights' own defaults (where they have them), then the non-None ``overrides``."""
        values = {}
        if isinstance(meta.get("predict_score_threshold"), (int, float)):
            values["score_threshold"] = float(meta["predict_score_threshold"])
        if isinstance(meta.get("predict_max_detections"), int):
            values["max_detections"] = meta["predict_max_detections"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp32. Measured on an H100 (2026-11-25, coco128 boxes): fp16 autocast pays 3–8 s of
    kernel selection for every new padded image shape, so `refine` ran 23 images/s in fp16 against 32
    in fp32, and `predict` was no faster. On a CPU with bfloat16 instructions (AVX512-BF16, AMX),
    ``bf16-masks`` runs only the mask branch (the semantic and instance heads: most of the work of
    `refine` and of `predict`'s masks) in bfloat16 and the backbone, RPN and box head in fp32: 1.15-1.25x
    the speed of fp32 with the same held-back quality on this project's CPU (2026-11-27, README
    "Precision"); ``bf16`` (all of it) 1.5-1.7x, but it detects worse. Neither is the default:
    bfloat16 results depend on the number of CPU threads, so runs split over processes (torchrun)
    would no longer give the bytes of one process, as fp32 does."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs CUDA; on CPU use fp32, bf16-masks or bf16")
    return precision


def check_image(image: np.ndarray, index: int = 0) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image {index}: expected uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: expected shape (H, W, 3), got {image.shape}")


# half the band of cuts ``stability`` compares: the mask cut at t + 0.2 against the mask cut at t - 0.2
STABILITY_DELTA = 0.2


def stability(probs, cut: float, delta: float = STABILITY_DELTA) -> float:
    """Pixels at probability >= ``cut + delta`` over pixels >= ``cut - delta`` (1: a crisp mask, whose
    outline does not move with the cut; low: an unsure one). The "stability score" of SAM's automatic
    masks, here a per-object confidence. Measured with the shipped refine default on the held-back
    fifths (2026-11-27; exact boxes, boxes 15 % too large, hasty polygons): Spearman correlation with
    the refined mask's IoU to the truth 0.54-0.80, and 0.53-0.85 within thirds of object size (size
    alone: 0.02-0.21); the 20 % least stable masks hold 52-62 % of the 20 % worst ones. Takes a numpy
    array or a tensor."""
    if isinstance(probs, torch.Tensor):  # both counts in one transfer (one sync on a GPU)
        hi, lo = torch.stack([(probs >= cut + delta).sum(), (probs >= cut - delta).sum()]).tolist()
    else:
        hi, lo = int((probs >= cut + delta).sum()), int((probs >= cut - delta).sum())
    return round(hi / lo, 4) if lo else 0.0


def paste_box_probs(probs: torch.Tensor, box: torch.Tensor, height: int, width: int):
    """Paste one ``(S, S)`` probability map spanning ``box`` into the image grid, only over the box.

    Only pixels whose centres lie inside the box are sampled (outside it the map says nothing).

    Returns ``(x0, y0, probabilities)``: a float tensor over pixels ``[y0, y1) × [x0, x1)``.
    A pixel is sampled at its centre ``(x + 0.5, y + 0.5)``; the map's cells tile the box uniformly.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    # the pixels whose centres lie in the box: j + 0.5 in [x1, x2)
    ix0 = max(int(math.ceil(x1 - 0.5)), 0)
    iy0 = max(int(math.ceil(y1 - 0.5)), 0)
    ix1 = min(int(math.ceil(x2 - 0.5)), width)
    iy1 = min(int(math.ceil(y2 - 0.5)), height)
    if ix1 <= ix0 or iy1 <= iy0:
        return 0, 0, torch.zeros((0, 0), dtype=torch.float32, device=probs.device)
    bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    xs = (torch.arange(ix0, ix1, device=probs.device, dtype=torch.float32) + 0.5 - x1) / bw * 2 - 1
    ys = (torch.arange(iy0, iy1, device=probs.device, dtype=torch.float32) + 0.5 - y1) / bh * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    sampled = F.grid_sample(probs[None, None].float(), grid, mode="bilinear", align_corners=False)[0, 0]
    return ix0, iy0, sampled


# the guided filter of snap_to_edges: a window of 2 * SNAP_RADIUS + 1 cells of the network's mask grid
# (so it spans the same part of any object), guide variance 1e-3 (brightness in [0, 1]); chosen on
# davis345 and duts-tr-2k, checked on the held-back COCO fifths (README, "Measured"); only over boxes
# wider or taller than the grid
SNAP_RADIUS = 2.0
SNAP_EPS = 1e-3


def snap_to_edges(probs: np.ndarray, guide: np.ndarray, cells: int) -> np.ndarray:
    """``probs``: a pasted probability map over a box (float ``(h, w)``), drawn on a grid of ``cells``
    across the box's long side; ``guide``: the image's brightness over the same pixels ([0, 1]).
    Returns the map guided-filtered (its edges pulled towards the image's by up to a few pixels),
    clipped to [0, 1]; a box spanning fewer pixels than ``cells`` (the grid is finer than the image
    there, and filtering small objects measured worse) comes back as it was."""
    if max(probs.shape, default=0) < cells:
        return probs
    radius = max(1, round(SNAP_RADIUS * max(probs.shape) / cells))
    return np.clip(guided_filter(guide, probs, radius, SNAP_EPS), 0.0, 1.0)


def brightness(image: np.ndarray) -> np.ndarray:
    """An RGB ``uint8`` image's grey level as float32 in [0, 1] (the guide of ``snap_to_edges``)."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def masks_to_priors(masks: Sequence[InstanceMask | np.ndarray | None], boxes: np.ndarray,
                    size: int = PRIOR_SIZE) -> torch.Tensor:
    """Coarse masks (cropped or full-image) → ``(N, size, size)`` priors in each box's coordinates.

    A ``None`` entry (box only) becomes 0.5 everywhere: unknown.
    """
    out = torch.full((len(masks), size, size), 0.5, dtype=torch.float32)
    for i, m in enumerate(masks):
        if m is None:
            continue
        crop = m if isinstance(m, InstanceMask) else InstanceMask(0, 0, np.asarray(m, dtype=bool))
        if crop.mask.size == 0:
            out[i] = 0
            continue
        b = torch.as_tensor(boxes[i], dtype=torch.float32)
        rel = b - torch.tensor([crop.x0, crop.y0, crop.x0, crop.y0], dtype=torch.float32)
        roi = torch.cat([torch.zeros(1), rel])[None]
        src = torch.from_numpy(crop.mask.astype(np.float32))[None, None]
        out[i] = roi_align(src, roi, (size, size), 1.0, 0, True)[0, 0]
    return out


class Predictor:
    """Owns the device, eval mode, inference mode and autocast; batches images and chunks RoIs.

    ``predict(images)``: full detection. ``refine(image, boxes, labels, coarse_masks)``: masks for
    given boxes (labels are 0-based model classes; ignored by class-agnostic models).

    The predictor runs an inference copy of ``model`` (batch norms folded into the convolutions,
    channels-last weights; see ``model.inference``); ``model`` itself is left as it was.
    """

    def __init__(self, model: RefineMaskRCNN, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None, paste_chunk: int = 32, canvas: int = 0):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = inference_copy(model).to(self.device)
        self.model.roi_heads.mask_dtype = torch.bfloat16 if self.precision == "bf16-masks" else None
        self.model.set_canvas(canvas)  # whole-image batches padded to multiples of it (0: of 32)
        self.canvas = canvas
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        # images per forward pass: on CPU one (batching pads images to a common size and measured
        # slower), on CUDA four, to keep the GPU busy between small images
        self.batch_size = batch_size or (4 if self.device.type == "cuda" else 1)
        self.paste_chunk = max(1, paste_chunk)
        # zoom mode: object crops per forward pass
        self.crop_batch = 16 if self.device.type == "cuda" else 8
        self.threshold = model.cfg.mask_threshold
        # refine: objects given a coarse mask are cut at their own threshold where the weights have one
        self.mask_prompt_threshold = model.cfg.mask_prompt_threshold or model.cfg.mask_threshold

    @property
    def runtime(self) -> str:
        """What besides weights and inputs decides the exact output: device kind, precision, batch."""
        return f"{self.device.type}/{self.precision}/batch{self.batch_size}" + (f"/canvas{self.canvas}" if self.canvas else "")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.cfg.class_names

    def _autocast(self):
        if self.precision in ("fp32", "bf16-masks"):  # bf16-masks: the model autocasts its mask branch
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        # channel-first in memory, not a view of HWC: RoIAlign would copy a view whole at every call
        return t.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)

    def _paste(self, boxes: torch.Tensor, logits: torch.Tensor, height: int, width: int,
               guide: np.ndarray | None = None, thresholds: Sequence[float] | None = None) -> Iterator[InstanceMask]:
        """Each map pasted over its box and thresholded (at ``thresholds[i]``, else the weights'
        mask threshold); with ``guide`` (the image's brightness, float ``(H, W)``) snapped to the
        image's edges first."""
        for start in range(0, boxes.shape[0], self.paste_chunk):
            probs = logits[start : start + self.paste_chunk, 0].float().sigmoid()
            for i, (b, p) in enumerate(zip(boxes[start : start + self.paste_chunk], probs), start):
                cut = self.threshold if thresholds is None else thresholds[i]
                x0, y0, sampled = paste_box_probs(p, b, height, width)
                if guide is None:
                    mask = (sampled >= cut).cpu().numpy()
                    confidence = stability(sampled, cut)
                else:
                    region = sampled.cpu().numpy()
                    h, w = region.shape
                    region = snap_to_edges(region, guide[y0 : y0 + h, x0 : x0 + w], p.shape[-1])
                    mask, confidence = region >= cut, stability(region, cut)
                yield InstanceMask(x0, y0, mask, confidence)

    def _detections(self, out: dict, size: tuple[int, int], scores: torch.Tensor | None = None,
                    guide: np.ndarray | None = None, thresholds: Sequence[float] | None = None) -> Detections:
        boxes = out["boxes"].float()
        h, w = size
        return Detections(
            image_size=size,
            boxes=boxes.cpu().numpy().astype(np.float32),
            labels=out["labels"].cpu().numpy().astype(np.int64),
            scores=(out["scores"] if scores is None else scores).float().cpu().numpy(),
            masks=list(self._paste(boxes, out["mask_logits"], h, w, guide, thresholds)),
        )

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], score_threshold: float = 0.0,
                max_detections: int | None = None) -> list[Detections]:
        """Detections per image scoring at least ``score_threshold``, the best ``max_detections``
        (default: the model's ``detections_per_img``), best first."""
        for i, img in enumerate(images):
            check_image(img, i)
        heads = self.model.roi_heads
        # the mask head runs only on what is kept: detections under the threshold are dropped before
        # NMS (greedy by score, so the kept ones are the same) and only the best max_detections get
        # masks. With mask scoring or part demotion the ranking needs the masks (a rescored score is
        # never higher, so the threshold may still go first): the cut to max_detections waits for the
        # rescored order. Box voting still votes with the lower-scoring candidates (the model keeps its
        # own floor).
        own = (heads.score_thresh, heads.detections_per_img)
        heads.score_thresh = max(own[0], score_threshold)
        if not (heads.mask_scoring or heads.part_overlap):
            heads.detections_per_img = max_detections or own[1]
        elif max_detections is not None:
            heads.detections_per_img = max(max_detections, own[1])
        results = []
        try:
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                with self._autocast():
                    outs = self.model([self._to_tensor(img) for img in batch])
                for img, out in zip(batch, outs):
                    order = torch.argsort(out["scores"], descending=True, stable=True)
                    order = order[out["scores"][order] >= score_threshold][:max_detections]
                    out = {k: v[order] for k, v in out.items()}
                    results.append(self._detections(out, img.shape[:2]))
        finally:
            heads.score_thresh, heads.detections_per_img = own
        return results

    def _refine_inputs(self, image, boxes, labels, coarse_masks, index: int = 0):
        check_image(image, index)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = boxes.shape[0]
        if not np.isfinite(boxes).all():
            raise ValueError(f"image {index}: boxes must be finite numbers")
        if n and ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise ValueError(f"image {index}: boxes must be x1, y1, x2, y2 with x2 > x1 and y2 > y1")
        labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"image {index}: {labels.shape[0]} labels for {n} boxes")
        if n and (labels.min() < 0 or labels.max() >= self.model.cfg.num_classes):
            raise ValueError(f"image {index}: labels must be in [0, {self.model.cfg.num_classes})")
        prior = None
        if coarse_masks is not None:
            if len(coarse_masks) != n:
                raise ValueError(f"image {index}: {len(coarse_masks)} coarse masks for {n} boxes")
            prior = masks_to_priors(coarse_masks, boxes, self.model.cfg.stage_sizes[-1])
        return boxes, labels, prior

    @torch.inference_mode()
    def refine(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray | None = None,
        coarse_masks: Sequence[InstanceMask | np.ndarray | None] | None = None,
        regress_boxes: bool = False,
        settings: RefineSettings | None = None,
    ) -> Detections:
        """Masks for the ``boxes`` (xyxy pixels) of one image; see ``refine_many``."""
        return self.refine_many([(image, boxes, labels, coarse_masks)], regress_boxes, settings)[0]

    def zoom_spec(self, settings: RefineSettings, size: int | None = None) -> ZoomSpec | None:
        """The crop geometry ``settings`` ask for with these weights, or None for whole images;
        ``size``: that geometry at another crop side (the second zoom size)."""
        cfg = self.model.cfg
        if settings.mode == "whole" or (settings.mode == "auto" and not cfg.zoom_size):
            return None
        size = size or settings.zoom_size or cfg.zoom_size or cfg.min_size
        return ZoomSpec(size, cfg.zoom_margin, max_size=max(settings.zoom_max_size, size) if settings.zoom_max_size else 0)

    def check_settings(self, settings: RefineSettings) -> None:
        """Refuse zoom-only settings where ``--mode auto`` refines whole images with these weights
        (not trained for zoom): they would be ignored. ``--mode whole`` refuses them by itself."""
        if settings.zoom_only() and self.zoom_spec(settings) is None:
            raise ValueError(settings.zoom_only_error(
                "and these weights were not trained for zoom, so --mode auto refines whole images: "
                "add --mode zoom to zoom anyway"))

    @torch.inference_mode()
    def refine_many(self, items: Sequence[tuple], regress_boxes: bool = False,
                    settings: RefineSettings | None = None) -> list[Detections]:
        """``items``: ``(image, boxes, labels or None, coarse_masks or None)`` per image, run through
        the network in ONE forward pass (all boxes of an image in one pass, RoIs chunked inside).

        Images of different sizes are padded to a common size, which nudges the features near the
        padded edges, so results depend slightly on which images share a batch (never on order).
        """
        settings = settings or RefineSettings()
        self.check_settings(settings)
        zoom = self.zoom_spec(settings)
        second = self.zoom_spec(settings, settings.second_zoom_size) if settings.second_zoom_size else None
        checked = [self._refine_inputs(*item, index=i) for i, item in enumerate(items)]
        if not checked:
            return []
        priors = None
        if any(prior is not None for _, _, prior in checked):
            priors = [prior for _, _, prior in checked]
        with self._autocast():
            outs = self.model.refine(
                [self._to_tensor(item[0]) for item in items],
                [torch.from_numpy(b) for b, _, _ in checked],
                [torch.from_numpy(lbl) for _, lbl, _ in checked],
                priors, regress_boxes, zoom=zoom, flip=settings.flip, passes=settings.passes,
                crop_batch=self.crop_batch, second_zoom=second,
            )
        results = []
        for item, (boxes, _, _), out in zip(items, checked, outs):
            if not regress_boxes:  # paste over the boxes exactly as given, not a float round trip
                out["boxes"] = torch.from_numpy(boxes)
            guide = brightness(item[0]) if settings.snap_edges else None
            results.append(self._detections(out, item[0].shape[:2], scores=torch.ones(len(boxes)), guide=guide,
                                            thresholds=self.refine_thresholds(item[3], len(boxes), settings)))
        return results

    def refine_thresholds(self, coarse_masks: Sequence | None, n: int, settings: RefineSettings) -> list[float]:
        """The probability each of ``n`` refined objects is cut at: ``settings.mask_threshold`` where
        given, else the weights' own, ``mask_prompt_threshold`` for an object given a coarse mask."""
        if settings.mask_threshold is not None:
            return [settings.mask_threshold] * n
        if coarse_masks is None:
            return [self.threshold] * n
        return [self.threshold if m is None else self.mask_prompt_threshold for m in coarse_masks]
