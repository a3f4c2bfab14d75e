"""Synthetic COCO datasets and a tiny checkpoint for the pipeline tests."""
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from refinemask_cli.model import build_model
from refinemask_cli.weights import save_checkpoint

from .helpers import ellipse_scene, tiny_config


def tiny_weights(path: Path, train_steps: int = 30, meta: dict | None = None, **kw) -> Path:
    """A tiny class-agnostic checkpoint, briefly trained on ellipse scenes so its masks are not empty."""
    import torch

    from .helpers import image_tensor, to_target

    torch.manual_seed(0)
    cfg = dict(num_classes=1, class_names=("object",), class_agnostic="all", coarse_prior=True)
    cfg.update(kw)
    model = build_model(tiny_config(**cfg))
    scenes = [ellipse_scene(64 + 8 * i, 80, seed=i) for i in range(2)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(train_steps):
        img, mask, box = scenes[step % 2]
        loss = sum(model.mask_losses([image_tensor(img)], [to_target(mask, box)]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(model.eval(), path, meta)
    return path


def make_dataset(root: Path, n_images: int = 2) -> Path:
    """Images with an ellipse each; annotations: box-only, polygon, RLE, crowd; unknown keys kept."""
    images, anns = [], []
    aid = 100
    for i in range(n_images):
        img, mask, box = ellipse_scene(64 + 8 * i, 80, seed=i)
        name = f"img_{i}.png"
        cv2.imwrite(str(root / name), img[:, :, ::-1])
        h, w = mask.shape
        images.append({"id": 10 + i, "file_name": name, "width": w, "height": h, "extra_image_key": i})
        x0, y0, x1, y1 = box.tolist()
        bbox = [x0, y0, x1 - x0, y1 - y0]
        anns.append({"id": aid, "image_id": 10 + i, "category_id": 7, "bbox": bbox, "iscrowd": 0,
                     "area": float(mask.sum()), "note": "box only"})
        poly = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        anns.append({"id": aid + 1, "image_id": 10 + i, "category_id": 7, "bbox": bbox, "iscrowd": 0,
                     "area": float(mask.sum()), "segmentation": poly})
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        anns.append({"id": aid + 2, "image_id": 10 + i, "category_id": 3, "bbox": bbox, "iscrowd": 0,
                     "area": float(mask.sum()), "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
        anns.append({"id": aid + 3, "image_id": 10 + i, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1,
                     "area": 100.0, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
        aid += 10
    doc = {"info": {"description": "synthetic"}, "licenses": [], "images": images, "annotations": anns,
           "categories": [{"id": 3, "name": "ball", "supercategory": "x"}, {"id": 7, "name": "egg"}],
           "my_key": {"kept": True}}
    path = root / "coarse.json"
    path.write_text(json.dumps(doc))
    return path


def exif_rotated_jpeg(path: Path, img_bgr: np.ndarray, orientation: int = 6) -> None:
    """A JPEG of ``img_bgr`` as stored, with an EXIF Orientation tag (6: shown rotated 90° clockwise)."""
    _, buf = cv2.imencode(".jpg", img_bgr)
    data = buf.tobytes()
    # minimal APP1 Exif segment (big-endian TIFF) with one Orientation tag
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + \
        orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    path.write_bytes(data[:2] + app1 + data[2:])
