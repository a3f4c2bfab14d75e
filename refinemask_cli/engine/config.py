"""Training configuration: one validated dataclass, read from a TOML file and CLI overrides.

Example ``train.toml``::

    iters = 2000
    batch_size = 4
    mode = "mask"              # "full": detector + masks; "mask": mask branch from given boxes;
                               # "detector": RPN + box head only, the rest kept as initialised
    init = "imagenet-mobilenet_v2"
    min_sizes = [320, 352, 384]

    [model]                    # any ModelConfig field
    backbone = "mobilenet_v2"
    class_agnostic = "all"
    coarse_prior = true

    [[datasets]]               # one or more; sampled by weight
    json = "data/train.json"
    images = "data/images"
    weight = 1.0
    every_object = true        # false: only some objects labelled (never taught as background)

A recipe can start from another one: ``extends = "train.toml"`` (relative to the file that says it)
takes that file's settings, then this file's on top: top-level keys replace the base's, ``[model]``
keys replace the base's key by key, and ``[[datasets]]``, when given, replace the base's list whole.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.config import ModelConfig, is_number, reject_unknown_keys, wrong_types

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASE_LR = 0.02  # per 16 images (spec §3.1); scaled linearly with the batch
BASE_BATCH = 16
# full: detector and mask branch; mask: the mask branch from the given boxes (for partly labelled
# data); detector: RPN and box head only, backbone and mask branch frozen (so a model's refinement
# stays exactly as it was while it learns to find objects)
TRAIN_MODES = ("full", "mask", "detector")
DETECTOR_MODULES = ("rpn.", "roi_heads.box_head.", "roi_heads.box_predictor.")


@dataclass(frozen=True)
class DatasetSpec:
    json: str  # a COCO file, a LabelMe folder or a YOLO-seg dataset (data.yaml or its folder)
    images: str | None = None  # a COCO file's images folder (LabelMe and YOLO inputs carry their own)
    weight: float = 1.0
    exclude_holdout: bool = False  # drop the fixed held-back fifth of image ids (validation data)
    # false: only some objects of each image are labelled (coco-mval-dev: one per entry; DUTS: the
    # salient one). The RPN and box head learn from its labelled objects but never take the rest of
    # an image as background, and the semantic head does not learn from it (the unlabelled objects
    # would be taught as background)
    every_object: bool = True
    # other sets (COCO JSON paths) whose held-back fifths must not be trained on through this one:
    # its images with the file name of one of theirs are dropped (COCO subsets share images)
    exclude_held_back_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    datasets: tuple[DatasetSpec, ...] = ()
    val_json: str | None = None
    val_images: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    init: str = "imagenet-mobilenet_v2"  # a checkpoint path, "imagenet-mobilenet_v2" or "none"
    mode: str = "full"
    iters: int = 1000
    batch_size: int = 2
    lr: float | None = None  # None: BASE_LR * batch_size * world_size / 16
    warmup_iters: int = 200
    steps: tuple[float, ...] = (0.67, 0.92)
    grad_clip: float = 35.0
    weight_decay: float = 1e-4
    amp: bool = False
    seed: int = 0
    # training input sizes (short side drawn from min_sizes, long side capped); None: the init
    # checkpoint's own input size when fine-tuning one, else 800 / 1333
    min_sizes: tuple[int, ...] | None = None
    max_size: int | None = None
    flip: float = 0.5
    copy_paste: float = 0.0  # probability of pasting another image's instances into a sample
    # probability of training on a random window of a sample instead (sides crop_scale of the image's,
    # shown at the full input size: objects zoomed in; cut objects keep their visible part)
    crop: float = 0.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    color_jitter: float = 0.0  # brightness, contrast and saturation each scaled by 1 ± this (0: off)
    box_jitter: float = 0.1  # mask mode: relative jitter of the GT boxes used as RoIs
    # mask mode with [model] zoom_size > 0: objects per image refined in their own crops, and the
    # relative jitter of the crop margin
    zoom_crops: int = 2
    zoom_margin_jitter: float = 0.25
    # full mode: at most this many positive RoIs per image train the mask branch (0: all of them)
    mask_rois_per_image: int = 0
    # pad every image batch to multiples of this many pixels (0: of 32); at least max_size: one fixed
    # canvas, so AMP on CUDA compiles its kernels once instead of for every new batch shape
    canvas: int = 0
    checkpoint_every: int = 500
    num_workers: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        # first, so the range checks below compare numbers with numbers
        wrong = wrong_types(self) + [f"[[datasets]] {ds.json!r}: {w}" for ds in self.datasets for w in wrong_types(ds)]
        if wrong:
            raise ValueError("invalid training config: " + "; ".join(wrong))
        errors = []
        if not self.datasets:
            errors.append("at least one training dataset is needed (--train-json/--images or [[datasets]])")
        for ds in self.datasets:
            if isinstance(ds.exclude_held_back_of, str) or not all(isinstance(p, str) for p in ds.exclude_held_back_of):
                errors.append(f"{ds.json}: exclude_held_back_of is a list of COCO JSON paths")
        if self.mode not in TRAIN_MODES:
            errors.append(f"mode must be one of {', '.join(TRAIN_MODES)}, got {self.mode!r}")
        if not isinstance(self.model, dict):
            errors.append(f"model is a [model] table of model settings, got {self.model!r}")
        else:
            try:
                reject_unknown_keys(ModelConfig, self.model, "[model]")
            except ValueError as e:
                errors.append(str(e))
        for ds in self.datasets:
            if not ds.weight > 0:
                errors.append(f"{ds.json}: weight must be > 0 (how often the set is drawn, relative to the others)")
        if not self.grad_clip > 0:  # clip_grad_norm_ at 0 zeroes every gradient, below 0 reverses it
            errors.append("grad_clip must be > 0 (the largest gradient norm kept)")
        for name in ("warmup_iters", "num_workers", "seed"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0")
        if self.weight_decay < 0:
            errors.append("weight_decay must be >= 0")
        if self.mask_rois_per_image < 0:
            errors.append("mask_rois_per_image must be >= 0 (0: all)")
        if self.canvas and (self.canvas < 32 or self.canvas % 32):
            errors.append("canvas must be 0 or a multiple of 32 pixels")
        if not 0 <= self.zoom_margin_jitter < 1:
            errors.append("zoom_margin_jitter must be in [0, 1)")
        for name in ("iters", "batch_size", "checkpoint_every", "log_every", "zoom_crops"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            errors.append("lr must be > 0")
        malformed = set()  # list settings that are not lists of numbers: checked no further
        for name in ("steps", "min_sizes", "crop_scale"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, tuple) and all(is_number(v) for v in value)):
                errors.append(f"{name} is a list of numbers, got {value!r}")
                malformed.add(name)
        if "steps" not in malformed and not all(0 < f < 1 for f in self.steps):
            errors.append("steps are fractions of iters in (0, 1)")
        if "crop_scale" not in malformed and not (
                len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            errors.append("crop_scale is [smallest, largest] side of the window, 0 < smallest <= largest <= 1")
        if not 0 <= self.color_jitter < 1:
            errors.append("color_jitter must be in [0, 1)")
        for name in ("flip", "copy_paste", "crop"):
            if not 0 <= getattr(self, name) <= 1:
                errors.append(f"{name} is a probability in [0, 1]")
        if self.min_sizes is not None and "min_sizes" not in malformed and (
                not self.min_sizes or any(s < 32 for s in self.min_sizes)):
            errors.append("min_sizes must be sizes >= 32")
        if self.max_size is not None and self.max_size < 32:
            errors.append("max_size must be >= 32")
        if self.val_images is not None and self.val_json is None:
            errors.append("val_images goes with val_json")
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    def scaled_lr(self, world_size: int = 1) -> float:
        return self.lr if self.lr is not None else BASE_LR * self.batch_size * world_size / BASE_BATCH

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        reject_unknown_keys(cls, d, "training config")
        d = dict(d)
        if "datasets" in d:
            try:
                d["datasets"] = tuple(DatasetSpec(**{**ds, "exclude_held_back_of": _as_tuple(ds.get("exclude_held_back_of", ()))})
                                      for ds in d["datasets"])
            except TypeError as e:
                raise ValueError(f"bad [[datasets]] entry: {e}") from None
        for key in ("steps", "min_sizes", "crop_scale"):
            if key in d:
                d[key] = _as_tuple(d[key])
        return cls(**d)


def _as_tuple(value):
    """A list (of paths, sizes, fractions) as a tuple; anything else as it came (the config check names it)."""
    return tuple(value) if isinstance(value, list) else value


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's settings as a dict, with its ``extends`` chain resolved (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        via = f" (extended by {_seen[-1]})" if _seen else ""
        raise ValueError(f"{p}: config file not found{via}")
    if p.resolve() in _seen:
        chain = " -> ".join(str(q) for q in (*_seen, p.resolve()))
        raise ValueError(f"{p}: recipes extend each other in a loop ({chain})")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) skipped
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not UTF-8 text; a recipe is a TOML file (save it as UTF-8)") from None
    base_name = d.pop("extends", None)
    if base_name is None:
        return d
    if not isinstance(base_name, str):
        raise TypeError(f"{p}: extends is the path of another recipe, got {base_name!r}")
    base = read_recipe(p.parent / base_name, (*_seen, p.resolve()))
    return merge_recipe(base, d)


def merge_recipe(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s settings over ``base``'s: keys replace keys, except ``model``, merged key by key."""
    out = {**base, **top}
    if "model" in base and "model" in top:
        out["model"] = {**base["model"], **top["model"]}
    return out


def load_train_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """File settings (``extends`` resolved), then the CLI's non-None overrides on top."""
    base = read_recipe(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig.from_dict(merge_recipe(base, given))
