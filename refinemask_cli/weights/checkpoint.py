"""The project's checkpoint format: state dict + metadata, with a checksum of the tensors.

A checkpoint is a ``torch.save``d dict holding only plain values and tensors (so it loads with
``weights_only=True``)::

    {"format": "refinemask-cli", "format_version": 1, "config": {...ModelConfig...},
     "state_dict": {...}, "sha256": "<hex of the tensors>", "meta": {...free-form plain values...}}

Float tensors may be stored as float16 to halve the file; they are cast back to float32 on load.
"""
from __future__ import annotations

import hashlib
import os
import re
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..model import ModelConfig, RefineMaskRCNN, build_model

FORMAT = "refinemask-cli"
FORMAT_VERSION = 1


class WeightsError(Exception):
    """A weights file that cannot be used; the message is one line for the user."""


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Checksum over names, dtypes, shapes and bytes of every tensor, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_dict(model: RefineMaskRCNN, meta: dict[str, Any] | None = None, half: bool = False) -> dict[str, Any]:
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().clone()
        if half and v.is_floating_point():
            v = v.half()
        sd[k] = v
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": sd,
        "sha256": tensors_sha256(sd),
        "meta": dict(meta or {}),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save through a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def detector_trained(meta: dict[str, Any]) -> bool | None:
    """Whether a checkpoint's RPN and box head were trained, from its metadata (None: unknown).

    Our training runs write ``meta["detector"]``; older files are judged by how they were made:
    converted official or torchvision detectors are trained, ImageNet-only files and mask-mode runs
    (the mask branch learnt from given boxes) are not."""
    state = meta.get("detector")
    if state in ("trained", "untrained"):
        return state == "trained"
    if meta.get("heads") == "untrained":
        return False
    if meta.get("source") in ("mmdet", "torchvision"):
        return True
    mode = meta.get("train_mode")
    if mode in ("full", "detector"):
        return True
    if mode == "mask":
        return False
    return None


def averaged_meta(paths: list[str | os.PathLike], ckpts: list[dict[str, Any]]) -> dict[str, Any]:
    """The metadata of the average of ``paths`` (read as ``ckpts``, ``average_weights``' second
    result): the first file's, without what described one run only (its step count, a file name it
    came from, an earlier soup), and, for two files or more, each named by its tensors' sha256."""
    meta = {k: v for k, v in ckpts[0].get("meta", {}).items() if k not in ("from_file", "soup", "averaged_from")}
    if len(paths) > 1:  # one run's step count would mislead; name the files by their tensors
        meta.pop("trained_iters", None)
        meta["averaged_from"] = [f"{Path(p).name} (tensors sha256 {c['sha256'][:12]})" for p, c in zip(paths, ckpts)]
    return meta


def save_checkpoint(model: RefineMaskRCNN, path: str | os.PathLike, meta: dict[str, Any] | None = None,
                    half: bool = False) -> str:
    ckpt = checkpoint_dict(model, meta, half)
    atomic_torch_save(ckpt, path)
    return ckpt["sha256"]


def torch_load_checked(p: Path, weights_only: bool = True, pickle_hint: str = "") -> Any:
    """``torch.load`` on the CPU, with a file that is not one ``torch.save`` wrote refused by name
    (empty, or neither a zip archive nor a legacy pickle) instead of the unpickler's bare message;
    other failures raise ``WeightsError`` saying why (``pickle_hint`` added where ``weights_only``
    refused objects besides tensors and plain values)."""
    with p.open("rb") as f:
        head = f.read(4)
    if not head:
        raise WeightsError(f"{p}: file is empty (an interrupted download or copy?)")
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise WeightsError(f"{p}: not a PyTorch file (torch.save writes a zip archive; this starts with {head!r})")
    try:
        return torch.load(p, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 -- truncated, corrupt, or a pickle with arbitrary objects
        hint = ""
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours parts of its messages
        if "Weights only load failed" in text:
            reason = "it holds Python objects besides tensors and plain values, not loaded from untrusted files"
            hint = pickle_hint
        elif "central directory" in text or "PytorchStreamReader" in text:
            reason = "its zip archive is cut short or damaged: an interrupted download or copy?"
        else:
            first = (text.splitlines() or [""])[0][:160]
            reason = type(e).__name__ + (f": {first}" if first else "")
        raise WeightsError(f"{p}: cannot read it ({reason}){hint}") from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file (CPU, ``weights_only=True``) without building a model."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found; pass --weights PATH to an existing .pt file")
    ckpt = torch_load_checked(p)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and ("state_dict" in ckpt or any(str(k).startswith("backbone.") for k in ckpt)):
            hint = "; convert it first with `refinemask weights convert SRC -o DST --from mmdet|torchvision`"
        raise WeightsError(f"{p}: not a refinemask checkpoint{hint}")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(f"{p}: checkpoint format {ckpt['format_version']} is newer than this tool; upgrade refinemask")
    for key in ("config", "state_dict", "sha256"):
        if key not in ckpt:
            raise WeightsError(f"{p}: checkpoint is missing its {key!r} entry")
    if tensors_sha256(ckpt["state_dict"]) != ckpt["sha256"]:
        raise WeightsError(f"{p}: tensor checksum mismatch (file damaged or edited); re-create or re-download it")
    try:
        ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{p}: bad architecture config ({e})") from None
    return ckpt


def describe_mismatch(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """A one-line description of missing/unexpected keys and shape mismatches, or None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_state_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
    problem = describe_mismatch(model, state_dict)
    if problem:
        raise WeightsError(f"{source}: does not fit the architecture ({problem})")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


# config fields that give the same tensors a different meaning: checkpoints to be averaged must agree
# on them (input size, thresholds and the like only decide how a model is run, not what it learned)
MEANING_FIELDS = ("backbone", "num_classes", "class_names", "class_agnostic", "coarse_prior", "anchor_sizes",
                  "image_mean", "image_std", "stage_sizes", "dilations")


def average_weights(paths: list[str | os.PathLike]) -> tuple[RefineMaskRCNN, list[dict[str, Any]]]:
    """The uniform average of several checkpoints of one architecture (a "model soup": runs fine-tuned
    from the same start often score better averaged than any one of them), as the first file's model;
    also returns the checkpoints read, in order (meta, sha256). Files that do not fit the first one's
    model are refused."""
    if not paths:
        raise WeightsError("no checkpoints to average")
    model, first = load_model(paths[0])
    ckpts = [first]
    total = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        ckpts.append(ckpt)
        other = ModelConfig.from_dict(ckpt["config"])
        differ = [f for f in MEANING_FIELDS if getattr(other, f) != getattr(model.cfg, f)]
        if differ:
            raise WeightsError(f"{path}: trained with another {', '.join(differ)} than {paths[0]}; "
                               "only runs of one architecture can be averaged")
        state = ckpt["state_dict"]
        problem = describe_mismatch(model, state)
        if problem:
            raise WeightsError(f"{path}: does not fit the architecture of {paths[0]} ({problem})")
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v.double()
    own = model.state_dict()
    model.load_state_dict({k: (v / len(paths)).to(own[k].dtype) if v.is_floating_point() else v
                           for k, v in total.items()})
    return model, ckpts


DEFAULT_WEIGHTS_NAME = "refinemask_mnv2_agnostic.pt"
# the shipped default for `predict`: the same family with its detector trained and the whole
# network fine-tuned on whole images (the refine default's detector is untrained, by design)
PREDICT_WEIGHTS_NAME = "refinemask_mnv2_predict.pt"
TASKS = ("refine", "predict")


# where a non-editable install (``pip install .``, a wheel) puts the shipped files: the install
# scheme's data folder (the environment's prefix, or the user base for ``--user``), see pyproject.toml
SHARE_WEIGHTS = Path("share") / "refinemask" / "weights"


def repository_weights_folder() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"


def shipped_weights_folders() -> list[Path]:
    """Where the shipped files are looked for, in order: the repository's ``weights/`` beside the
    package (a clone, an editable install), then the data folders of the install schemes."""
    folders = [repository_weights_folder()]
    for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):
        try:
            data = sysconfig.get_path("data", scheme)
        except KeyError:  # a scheme this platform does not have
            continue
        if data and (Path(data) / SHARE_WEIGHTS) not in folders:
            folders.append(Path(data) / SHARE_WEIGHTS)
    return folders


def default_weights_path(task: str = "refine") -> Path:
    """``$REFINEMASK_WEIGHTS``, else the shipped default for ``task`` in the first of
    ``shipped_weights_folders()`` that has it (``predict`` falls back to the refine default where its
    own file is absent); where none has it, the path in the repository's folder."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    env = os.environ.get("REFINEMASK_WEIGHTS")
    if env:
        return Path(env)
    names = (PREDICT_WEIGHTS_NAME, DEFAULT_WEIGHTS_NAME) if task == "predict" else (DEFAULT_WEIGHTS_NAME,)
    folders = shipped_weights_folders()
    for name in names:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    return folders[0] / DEFAULT_WEIGHTS_NAME


def resolve_weights(path: str | os.PathLike | None, task: str = "refine") -> Path:
    if path:
        return Path(path)
    p = default_weights_path(task)
    if not p.is_file():
        if os.environ.get("REFINEMASK_WEIGHTS"):
            raise WeightsError(f"REFINEMASK_WEIGHTS names {p}, which is not a file; point it at a weights "
                               "file or unset it")
        where = " or ".join(str(f) for f in shipped_weights_folders())
        raise WeightsError(f"no default weights {DEFAULT_WEIGHTS_NAME} in {where}; pass --weights PATH "
                           "(see weights/README.md)")
    return p


def load_model(path: str | os.PathLike) -> tuple[RefineMaskRCNN, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights strictly (float32, CPU)."""
    ckpt = read_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt["config"])
    model = build_model(cfg)
    load_state_strict(model, ckpt["state_dict"], str(path))
    return model, ckpt
