"""What an installation runs on (``refinemask env``): versions, devices and the default weights, with
what is wrong among them, so that a bug report or a slow run can be read at a glance."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

# distributions refinemask uses; opencv under either wheel name
PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "opencv-python", "pycocotools", "click",
            "rich", "pyyaml")
# test extras and the tools outputs are checked in (not needed to run)
OPTIONAL = ("imgviz", "ultralytics", "labelme", "shapely")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _weights(task: str) -> dict[str, Any]:
    from ..weights.checkpoint import (
        WeightsError,
        detector_trained,
        read_checkpoint,
        resolve_weights,
    )

    try:
        path = resolve_weights(None, task)
    except WeightsError as e:
        return {"path": None, "error": str(e)}
    try:
        ckpt = read_checkpoint(path)
    except (WeightsError, OSError, ValueError) as e:
        return {"path": str(path), "error": str(e)}
    meta = ckpt.get("meta", {})
    trained = detector_trained(meta)
    return {"path": str(path), "size_mb": round(Path(path).stat().st_size / 1e6, 1), "sha256": ckpt["sha256"],
            "classes": len(ckpt["config"].get("class_names") or ()) or None,
            "detector": {True: "trained", False: "untrained", None: "unknown"}[trained]}


def environment() -> dict[str, Any]:
    """Everything ``refinemask env`` reports, as JSON values."""
    import torch

    from .. import __version__

    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {
        "refinemask": {"version": __version__, "package": str(Path(__file__).resolve().parents[1])},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "packages": {d: _version(d) for d in PACKAGES},
        "optional": {d: _version(d) for d in OPTIONAL},
        "cpu": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "capability": capability},
        "cuda": {"available": cuda, "torch_cuda": torch.version.cuda, "devices": gpus},
        "device_auto": "cuda" if cuda else "cpu",
        "weights_env": os.environ.get("REFINEMASK_WEIGHTS"),
        "weights": {task: _weights(task) for task in ("refine", "predict")},
    }


def problems(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, message) for what is wrong: ``error`` where a command would fail, else ``warning``."""
    out = []
    for task, w in env["weights"].items():
        if w.get("error"):
            out.append(("error", f"{task} weights: {w['error']}"))
    if env["weights"]["predict"].get("detector") == "untrained":
        out.append(("warning", (f"predict weights {env['weights']['predict']['path']}: the detector was never "
                                "trained, so predict's boxes are noise (weights/refinemask_mnv2_predict.pt has one)")))
    pkgs = env["packages"]
    both = (pkgs["opencv-python"], pkgs["opencv-python-headless"])
    if all(both) and both[0] != both[1]:  # one cv2 module: the files of whichever was installed last
        out.append(("warning", (f"opencv-python {both[0]} and opencv-python-headless {both[1]} share the cv2 "
                                "module, so which one runs is whichever was installed last: uninstall both, "
                                "then install one")))
    if not (pkgs["opencv-python"] or pkgs["opencv-python-headless"]):
        out.append(("error", "OpenCV is not installed: pip install opencv-python-headless"))
    for dist in ("torch", "torchvision", "numpy", "pycocotools"):
        if not pkgs[dist]:
            out.append(("error", f"{dist} is not installed"))
    return out
