"""A training run: model, data, optimisation, checkpoints and exact resume, on one or many processes.

Distributed when launched by ``torchrun`` (``WORLD_SIZE`` > 1): DistributedDataParallel, each rank
takes its slots of every global batch, rank 0 logs and writes checkpoints. The run folder holds
``config.json``, ``metrics.jsonl``, ``last.pt`` (training state: model, optimizer, scaler, step,
RNG), ``model_last.pt`` (a refinemask checkpoint at every checkpoint) and ``model_final.pt``.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..data.coco_dataset import CocoInstances, collate
from ..data.mixture import MixedInstances, StepBatchSampler
from ..data.splits import held_back_names, holdout_ids
from ..io.coco import CocoError, read_coco
from ..io.sources import dataset_categories
from ..model import ModelConfig, RefineMaskRCNN, build_model
from ..model.zoom import ZoomSpec
from ..weights.checkpoint import (
    atomic_torch_save,
    detector_trained,
    load_state_strict,
    read_checkpoint,
    save_checkpoint,
    torch_load_checked,
)
from ..weights.convert import load_mobilenet_v2_imagenet
from .config import DETECTOR_MODULES, DatasetSpec, TrainConfig
from .train import TrainSettings, lr_at

STATE_VERSION = 1


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=world)
    return info


def build_dataset(spec: DatasetSpec, class_names: tuple[str, ...], agnostic: bool,
                  on_note: Callable[[str], None] | None = None) -> CocoInstances:
    """One training set (``class_names`` empty: its own categories, by id); what reading it
    normalised or left out goes to ``on_note``, naming the file."""
    ds = CocoInstances(spec.json, spec.images, flip_prob=0.0, class_names=class_names or None,
                       class_agnostic=agnostic, every_object=spec.every_object)
    if spec.exclude_holdout or spec.exclude_held_back_of:
        held = holdout_ids(ds.images) if spec.exclude_holdout else set()
        names = set().union(*(held_back_names(read_coco(other)) for other in spec.exclude_held_back_of))
        ds.restrict({i for i, im in ds.images.items()
                     if i not in held and Path(im["file_name"]).name not in names})
    if not len(ds):  # said before the run folder is made, naming the set
        left_out = " once the held-back images are left out" if ds.images else ""
        raise CocoError(f"{spec.json}: no images to train on{left_out}")
    ds.check_files(spec.json)
    for note in ds.notes if on_note else ():
        on_note(f"{spec.json}: {note}")
    return ds


def build_datasets(cfg: TrainConfig, class_names: tuple[str, ...], agnostic: bool,
                   on_note: Callable[[str], None] | None = None,
                   first: CocoInstances | None = None) -> list[CocoInstances]:
    """The training sets; ``first``: the first one already read with its own categories (what
    ``resolve_model_config`` took the class names from), kept where those are the names asked for."""
    reuse = first is not None and not agnostic and tuple(first.category_names) == tuple(class_names)
    head = [first] if reuse else []
    return head + [build_dataset(spec, class_names, agnostic, on_note) for spec in cfg.datasets[len(head):]]


def resolve_model_config(cfg: TrainConfig, init_config: dict | None = None,
                         first_names: Callable[[], tuple[str, ...]] | None = None) -> ModelConfig:
    """The model config from ``cfg.model``, with classes from the first dataset where not given
    (``first_names``: how to read them; by default its categories alone). Fine-tuning a checkpoint
    (``init_config``: its config) without a ``[model]`` table keeps the checkpoint's architecture and
    classes (a class-agnostic one trains on any categories as "object")."""
    fields = dict(cfg.model)
    if not fields and init_config is not None:
        fields = dict(init_config)
    if fields.get("class_agnostic") == "all" and "class_names" not in fields and fields.get("num_classes", 1) == 1:
        fields["num_classes"], fields["class_names"] = 1, ("object",)
    if "class_names" not in fields:
        first = cfg.datasets[0]
        names = first_names() if first_names is not None else tuple(
            c["name"] for c in sorted(dataset_categories(first.json, first.images), key=lambda c: c["id"]))
        fields["class_names"] = names
        fields["num_classes"] = len(names)
    fields["class_names"] = tuple(fields["class_names"])
    fields.setdefault("num_classes", len(fields["class_names"]))
    min_sizes, max_size = train_sizes(cfg, init_config)
    fields["min_size"] = min_sizes[-1]
    fields["max_size"] = max_size
    return ModelConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()})


def init_is_checkpoint(cfg: TrainConfig) -> bool:
    return cfg.init not in ("none", "imagenet-mobilenet_v2")


def train_sizes(cfg: TrainConfig, init_config: dict | None = None) -> tuple[tuple[int, ...], int]:
    """``(min_sizes, max_size)``: the config's, else the init checkpoint's input size, else 800/1333."""
    own = init_config or {}
    min_sizes = cfg.min_sizes or (int(own.get("min_size", 800)),)
    max_size = cfg.max_size or int(own.get("max_size", 1333))
    return tuple(min_sizes), int(max_size)


def initialise(model: RefineMaskRCNN, init: str, init_ckpt: dict | None = None) -> tuple[str, bool]:
    """Load the ``init`` weights (``init_ckpt``: the checkpoint, already read); returns their name
    and whether their detector was trained."""
    if init == "none":
        return "random", False
    if init == "imagenet-mobilenet_v2":
        load_mobilenet_v2_imagenet(model)
        return init, False
    ckpt = init_ckpt if init_ckpt is not None else read_checkpoint(init)
    load_state_strict(model, ckpt["state_dict"], init)
    return Path(init).name, bool(detector_trained(ckpt.get("meta", {})))


def rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    on_note: Callable[[str], None] | None = None,
) -> RefineMaskRCNN:
    """Train per ``cfg`` into ``out_dir``; ``stop_after`` ends the process's work early (tests);
    ``on_note``: what reading the training sets normalised or left out, one line each."""
    dist_info = setup_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    # the init checkpoint is read once: its config (fine-tuning keeps it) and its weights
    init_ckpt = read_checkpoint(cfg.init) if init_is_checkpoint(cfg) else None
    init_config = init_ckpt["config"] if init_ckpt is not None else None
    # the training sets are read before the model is built and the run folder made: a bad file is
    # reported first (not after loading the init weights) and leaves no half-made run. Where the
    # classes come from the first set, that set is read once, for its names and as a training set
    note = on_note if dist_info.is_main else None
    first: list[CocoInstances] = []

    def first_names() -> tuple[str, ...]:
        first.append(build_dataset(cfg.datasets[0], (), False, note))
        return tuple(first[0].category_names)

    model_cfg = resolve_model_config(cfg, init_config, first_names)
    datasets = build_datasets(cfg, model_cfg.class_names if model_cfg.class_agnostic != "all" else (),
                              model_cfg.class_agnostic == "all", note, first[0] if first else None)
    model = build_model(model_cfg)
    init_name, init_detector = initialise(model, cfg.init, init_ckpt)
    # a mask-mode run leaves the RPN and box head as they came
    detector_state = "trained" if cfg.mode != "mask" or init_detector else "untrained"
    model.transform.min_size = train_sizes(cfg, init_config)[0]
    model.set_canvas(cfg.canvas)
    model.roi_heads.mask_rois_per_image = cfg.mask_rois_per_image
    if cfg.mode == "detector":
        for name, p in model.named_parameters():
            if not name.startswith(DETECTOR_MODULES):
                p.requires_grad_(False)
    model.to(device).train()
    lr = cfg.scaled_lr(dist_info.world_size)
    settings = TrainSettings(iters=cfg.iters, lr=lr, warmup_iters=cfg.warmup_iters, steps=cfg.steps,
                             grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay, mode=cfg.mode)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state_path = out_dir / "last.pt"
    start = 0
    if resume:
        if not state_path.is_file():
            raise ValueError(f"{state_path} not found: nothing to resume (the run stopped before its first "
                             "checkpoint); run the same command without --resume to start it over")
        state = torch_load_checked(state_path)  # a damaged file: one line naming it, not a traceback
        if state.get("config") != cfg.to_dict():
            raise ValueError(f"{out_dir}: the run was started with other settings; resume with the same config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        set_rng_state(state["rng"])
    elif dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "model": model_cfg.to_dict()}, indent=2))
        (out_dir / "metrics.jsonl").write_text("")
    mixed = MixedInstances(datasets, cfg.flip, cfg.copy_paste, cfg.box_jitter if cfg.mode == "mask" else 0.0,
                           crop=cfg.crop, crop_scale=cfg.crop_scale, color=cfg.color_jitter)
    sampler = StepBatchSampler([len(d) for d in datasets], [s.weight for s in cfg.datasets], cfg.batch_size,
                               cfg.seed, start, cfg.iters, dist_info.rank, dist_info.world_size)
    # a private generator: creating the loader's iterator must not draw from the global RNG, which
    # the model's samplers use and which a resumed run restores
    loader = DataLoader(mixed, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                        persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed))
    net = model
    if dist_info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.mode == "mask")

    def save_state(step: int) -> None:
        if not dist_info.is_main:
            return
        atomic_torch_save({"version": STATE_VERSION, "config": cfg.to_dict(), "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                           "rng": rng_state()}, state_path)

    # mask mode of a zoom model: every object refined in its own crop, as at inference
    zoom = ZoomSpec(model_cfg.zoom_size, model_cfg.zoom_margin) if model_cfg.zoom_size and cfg.mode == "mask" else None
    step = start
    for images, targets in loader:
        if stop_after is not None and step >= stop_after:
            break
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        current_lr = lr_at(step, settings)
        for g in optimizer.param_groups:
            g["lr"] = current_lr
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            losses = net(images, targets, mask_only=cfg.mode == "mask", zoom=zoom, zoom_crops=cfg.zoom_crops,
                         zoom_margin_jitter=cfg.zoom_margin_jitter, detector_only=cfg.mode == "detector")
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {total.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if dist_info.is_main:
            record = {"iter": step, "lr": current_lr, "loss": total.item(), "grad_norm": float(grad_norm)}
            record.update({k: v.item() for k, v in losses.items()})
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if on_step:
                on_step(record)
        if step % cfg.checkpoint_every == 0 or step == cfg.iters:
            save_state(step)
            if dist_info.is_main:  # a usable model at every checkpoint, not only at the end
                save_checkpoint(model, out_dir / "model_last.pt", {"trained_iters": step, "init": init_name,
                                                                    "train_mode": cfg.mode, "detector": detector_state})
                model.train()
    if dist_info.is_main and step == cfg.iters:
        save_checkpoint(model.eval(), out_dir / "model_final.pt",
                        {"trained_iters": step, "init": init_name, "train_mode": cfg.mode, "detector": detector_state})
    return model
