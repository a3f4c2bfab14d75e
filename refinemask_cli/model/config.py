"""The one validated model configuration; defaults live here and nowhere else."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("resnet50", "resnet101", "mobilenet_v2")


def reject_unknown_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise naming every key of ``d`` that is not a field of the dataclass ``cls``."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)}")


_SCALAR_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def is_number(value: Any) -> bool:
    """An int or float, not a bool (TOML and JSON give both for a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wrong_types(cfg: Any) -> list[str]:
    """The fields of the dataclass ``cfg`` whose value is not of the field's scalar type ("iters must
    be an integer, got 'ten'"), for a config read from TOML or a checkpoint; an int is a number. List
    and table fields are checked where they are used."""
    out = []
    for f in dataclasses.fields(cfg):
        kind, _, optional = str(f.type).partition(" | ")
        value = getattr(cfg, f.name)
        if kind not in _SCALAR_TYPES or (value is None and optional == "None"):
            continue
        ok = {"int": isinstance(value, int) and not isinstance(value, bool), "float": is_number(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
        if not ok:
            out.append(f"{f.name} must be {_SCALAR_TYPES[kind]}, got {value!r}")
    return out


AGNOSTIC_MODES = ("none", "last", "all")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference settings of a RefineMask detector.

    ``num_classes`` counts foreground classes (K); the box head has K+1 outputs with background at 0.
    ``class_agnostic``: which mask stages have one output ("none": all K, the COCO config; "last":
    the final 112×112 logits only, the LVIS config; "all": every stage).
    """

    backbone: str = "mobilenet_v2"
    num_classes: int = 80
    class_names: tuple[str, ...] = ()
    fpn_channels: int = 256
    trainable_backbone_layers: int = 3
    class_agnostic: str = "none"
    stage_sizes: tuple[int, ...] = (14, 28, 56, 112)
    stage_loss_weights: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    semantic_loss_weight: float = 1.0
    boundary_width: int = 2
    dilations: tuple[int, ...] = (1, 3, 5)
    coarse_prior: bool = False
    prior_probability: float = 0.5
    # image transform
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # RPN
    # the RPN's square anchor side on each FPN level P2..P6 (three aspect ratios each), in model-input
    # pixels; torchvision's and the paper's 32..512. Smaller sides favour small objects at small inputs.
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    # box head
    box_loss_weight: float = 2.0
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    # box voting: each box kept by NMS moves to the score-weighted mean of the candidates (of its
    # class) overlapping it by at least this IoU, itself included; 0 = off (the paper's model)
    box_vote_iou: float = 0.0
    detections_per_img: int = 100
    mask_threshold: float = 0.5
    # refine: the threshold for objects given with a coarse mask (a polygon or RLE) instead of a box
    # alone; 0 = mask_threshold. The network is less sure of the edges it is shown than of those it
    # finds from a box, so a lower cut fits them better (the shipped refine default: weights/README.md)
    mask_prompt_threshold: float = 0.0
    # rank detections by score × the mean foreground probability of their mask (SOLOv2's "maskness"):
    # boxes on part of an object or across several get unsure masks and drop. Off in the paper's
    # model; on in the shipped predict weights (measured in weights/README.md)
    mask_scoring: bool = False
    # demote parts: a detection with at least this fraction of its mask inside the larger mask of a
    # higher-scoring detection (same class) gets its score times part_score_factor: the legs of a
    # found person, half of a found bus. 0 = off (the paper's model)
    part_overlap: float = 0.0
    part_score_factor: float = 0.5
    # zoom-in refinement: the working size (crop side) the mask branch was trained at; 0 = trained on
    # whole images only (zoom at inference then uses min_size)
    zoom_size: int = 0
    zoom_margin: float = 0.3
    roi_chunk_size: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wrong = wrong_types(self)  # first, so the range checks below compare numbers with numbers
        if wrong:
            raise ValueError("invalid model config: " + "; ".join(wrong))
        errors = []
        if self.backbone not in BACKBONES:
            errors.append(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.num_classes < 1:
            errors.append(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            errors.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.class_agnostic not in AGNOSTIC_MODES:
            errors.append(f"class_agnostic must be one of {AGNOSTIC_MODES}, got {self.class_agnostic!r}")
        if len(self.stage_sizes) != 4 or any(b != 2 * a for a, b in zip(self.stage_sizes, self.stage_sizes[1:])):
            errors.append(f"stage_sizes must be 4 sizes doubling each stage, got {self.stage_sizes}")
        if len(self.stage_loss_weights) != len(self.stage_sizes):
            errors.append("stage_loss_weights needs one weight per stage")
        if self.fpn_channels % 8 or self.fpn_channels < 32:
            errors.append(f"fpn_channels must be a multiple of 8 and >= 32, got {self.fpn_channels}")
        if not 0.0 < self.mask_threshold < 1.0:
            errors.append(f"mask_threshold must be between 0 and 1, got {self.mask_threshold}")
        if not 0.0 <= self.mask_prompt_threshold < 1.0:
            errors.append(f"mask_prompt_threshold must be 0 (mask_threshold) or between 0 and 1, "
                          f"got {self.mask_prompt_threshold}")
        if not 0.0 <= self.box_vote_iou <= 1.0:
            errors.append(f"box_vote_iou must be in [0, 1] (0: no voting), got {self.box_vote_iou}")
        if not 0.0 <= self.part_overlap <= 1.0:
            errors.append(f"part_overlap must be in [0, 1] (0: off), got {self.part_overlap}")
        if not 0.0 <= self.part_score_factor <= 1.0:
            errors.append(f"part_score_factor must be in [0, 1], got {self.part_score_factor}")
        if not 0.0 <= self.prior_probability <= 1.0:
            errors.append("prior_probability must be in [0, 1]")
        if self.zoom_size and self.zoom_size < 32:
            errors.append(f"zoom_size must be 0 (none) or >= 32, got {self.zoom_size}")
        if not 0.0 <= self.zoom_margin <= 4.0:
            errors.append(f"zoom_margin must be in [0, 4], got {self.zoom_margin}")
        if len(self.anchor_sizes) != 5 or any(a < 4 for a in self.anchor_sizes) or any(
                b <= a for a, b in zip(self.anchor_sizes, self.anchor_sizes[1:])):
            errors.append(f"anchor_sizes must be 5 increasing sides >= 4 (levels P2..P6), got {self.anchor_sizes}")
        if errors:
            raise ValueError("invalid model config: " + "; ".join(errors))

    @property
    def stage_num_classes(self) -> tuple[int, ...]:
        k = self.num_classes
        n = len(self.stage_sizes)
        if self.class_agnostic == "all":
            return (1,) * n
        if self.class_agnostic == "last":
            return (k,) * (n - 1) + (1,)
        return (k,) * n

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        reject_unknown_keys(cls, d, "model config")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# the inference settings a benchmark row (`--variant`) or a shipped predict file may change, by their
# short names: (ModelConfig field, parser of the value)
INFERENCE_SETTINGS = {
    "min_size": ("min_size", int),
    "max_size": ("max_size", int),
    "max_dets": ("detections_per_img", int),
    "mask_scoring": ("mask_scoring", lambda v: bool(int(v))),
    "box_nms": ("box_nms_thresh", float),
    "mask_threshold": ("mask_threshold", float),
    "mask_prompt_threshold": ("mask_prompt_threshold", float),
    "score_thresh": ("box_score_thresh", float),
    "vote": ("box_vote_iou", float),
    "part": ("part_overlap", float),
    "part_factor": ("part_score_factor", float),
    "rpn_pre": ("rpn_pre_nms_top_n_test", int),
    "rpn_post": ("rpn_post_nms_top_n_test", int),
}


def inference_changes(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``"min_size=448,vote=0.75,masks=zoom"`` → (the ModelConfig changes of its inference settings,
    ``{"min_size": 448, "box_vote_iou": 0.75}``; the other pairs as given, ``{"masks": "zoom"}``).
    Raises ValueError for a pair without ``=`` or a value that does not parse."""
    changes: dict[str, Any] = {}
    rest: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not key=value")
        if key not in INFERENCE_SETTINGS:
            rest[key] = value
            continue
        field_name, parse = INFERENCE_SETTINGS[key]
        try:
            changes[field_name] = parse(value)
        except ValueError:
            expected = {int: "an integer", float: "a number"}.get(parse, "0 or 1")
            raise ValueError(f"{key}={value!r}: expected {expected}") from None
    return changes, rest
