"""Memory at scale: refine stays flat over a long run, and a huge image with hundreds of objects fits.

Part 1 (``--big``): one 6000×4000 image with 300 polygon annotations, refined with the given
weights (default: the shipped ones); prints time and peak RSS.

Part 2: a synthetic COCO file of ``--images`` × ``--per-image`` annotations (default 10k × 10 =
100k; half boxes, half polygons) over small generated images, refined end to end with the real
job (read → masks → polygons → JSON written). Prints RSS at 10%, 50% and 100% of the images, the
growth per annotation between 10% and 100%, and the size of the written output for comparison:
flat memory means the growth is the refined output being collected, not the run itself.
The network for part 2 is a small untrained MobileNetV2-FPN (timing is not the point here).

    python benchmarks/bench_scale.py [--weights W.pt] [--device auto|cpu|cuda] [--images 10000]
        [--per-image 10] [--skip-big] [--skip-run]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from refinemask_cli.io.coco import write_json_atomic
from refinemask_cli.jobs import refine as job
from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.predictor import Predictor
from refinemask_cli.weights import load_model
from refinemask_cli.weights.checkpoint import default_weights_path


def deep_size(obj) -> int:
    """Bytes held by a JSON-like object tree (dicts, lists, str, numbers); shared leaves counted once."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def blob_polygon(rng, cx, cy, r, points=24) -> list[float]:
    ang = np.sort(rng.uniform(0, 2 * np.pi, points))
    rad = r * rng.uniform(0.7, 1.0, points)
    return np.round(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1), 2).ravel().tolist()


def synthetic_doc(rng, n_images: int, per_image: int, w: int, h: int, file_name) -> dict:
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": file_name(i), "width": w, "height": h})
        for k in range(per_image):
            r = float(rng.uniform(0.04, 0.12) * min(w, h))
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                   "bbox": [round(cx - r, 2), round(cy - r, 2), round(2 * r, 2), round(2 * r, 2)]}
            if k % 2:
                ann["segmentation"] = [blob_polygon(rng, cx, cy, r)]
            anns.append(ann)
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}


def write_image(path: Path, rng, w: int, h: int) -> None:
    small = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def big_image(predictor: Predictor, work: Path, n: int = 300) -> None:
    rng = np.random.default_rng(0)
    w, h = 6000, 4000
    write_image(work / "big.jpg", rng, w, h)
    doc = synthetic_doc(rng, 1, n, w, h, lambda i: "big.jpg")
    before = peak_mb()
    t = time.perf_counter()
    out, _, stats = job.refine_dataset(doc, work, predictor, job.RefineOptions())
    write_json_atomic(out, work / "big_refined.json", overwrite=True)
    print(f"6000x4000 image, {stats.annotations} annotations: {time.perf_counter() - t:.1f} s, "
          f"peak RSS {peak_mb():.0f} MB (before: {before:.0f} MB)")


def long_run(predictor: Predictor, work: Path, n_images: int, per_image: int) -> None:
    rng = np.random.default_rng(1)
    w, h = 128, 96
    folder = work / "imgs"
    folder.mkdir()
    for i in range(n_images):
        write_image(folder / f"{i:06d}.jpg", rng, w, h)
    doc = synthetic_doc(rng, n_images, per_image, w, h, lambda i: f"{i:06d}.jpg")
    src = work / "coarse.json"
    src.write_text(json.dumps(doc))
    del doc
    from refinemask_cli.io.coco import read_coco

    doc = read_coco(src)
    marks = {max(1, n_images // 10): "10%", max(1, n_images // 2): "50%", n_images: "100%"}
    seen = {"n": 0}
    samples = {}
    t0 = time.perf_counter()

    def on_image(k, _):
        seen["n"] += k
        if seen["n"] in marks:
            samples[marks[seen["n"]]] = (rss_mb(), time.perf_counter() - t0)

    out, rows, stats = job.refine_dataset(doc, folder, predictor, job.RefineOptions(), on_image=on_image)
    # what the run must keep: the refined annotations (new dicts, new fields) and the report rows,
    # i.e. what they hold beyond the input they share leaves with
    sample = slice(0, min(2000, len(rows)))
    kept = deep_size([doc["annotations"][sample], out["annotations"][sample], rows[sample]])
    kept -= deep_size(doc["annotations"][sample])
    kept_per_ann = kept / max(len(rows[sample]), 1)
    dst = work / "refined.json"
    write_json_atomic(out, dst, overwrite=True)
    after_write = rss_mb()
    n_ann = stats.annotations
    print(f"{n_images} images, {n_ann} annotations ({src.stat().st_size / 2**20:.0f} MB in), "
          f"{time.perf_counter() - t0:.0f} s")
    print("| progress | RSS MB | seconds |")
    print("|---|---|---|")
    for label in ("10%", "50%", "100%"):
        print(f"| {label} | {samples[label][0]:.0f} | {samples[label][1]:.0f} |")
    growth = (samples["100%"][0] - samples["10%"][0]) * 2**20 / max(0.9 * n_ann, 1)
    print(f"after writing: RSS {after_write:.0f} MB, peak {peak_mb():.0f} MB; output {dst.stat().st_size / 2**20:.0f} MB "
          f"on disk; growth 10%->100%: {growth:.0f} bytes per annotation "
          f"(output JSON: {dst.stat().st_size / max(n_ann, 1):.0f} bytes per annotation; the refined fields and "
          f"report rows as Python objects: {kept_per_ann:.0f} bytes per annotation)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="weights for the big image (default: the shipped ones)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--per-image", type=int, default=10)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-run", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        if not args.skip_big:
            model, _ = load_model(args.weights or default_weights_path())
            big_image(Predictor(model, device=args.device), work)
        if not args.skip_run:
            tiny = build_model(ModelConfig(backbone="mobilenet_v2", fpn_channels=32, num_classes=1,
                                           class_names=("object",), class_agnostic="all", min_size=96, max_size=128))
            long_run(Predictor(tiny, device=args.device), work, args.images, args.per_image)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
