"""Stage training sets for the GPU machine, whose calls carry at most 64 MiB of working tree.

Writes OUT/<name>/{instances.json, images/}: a dataset's images re-encoded as JPEG at --quality (same
pixel size, so annotations are unchanged), optionally without coco-extra-style held-back fifth and
with every k-th image only. Run on this machine, from the repository root, e.g.:

    python tools/device/stage_data.py ../shared/data/coco-extra .stage/b/coco-extra --drop-holdout
    python tools/device/stage_data.py ../shared/data/davis345 .stage/a/davis345 --quality 70 --every 4
    python tools/device/stage_data.py ../shared/data/coco-mval-dev .stage/4/coco-mval-dev --drop-holdout \
        --drop-held-back-of ../shared/data/coco-extra/instances.json --max-side 704

``--drop-held-back-of`` does here what a recipe's ``exclude_held_back_of`` does (images that another
set holds back, by file name); ``--max-side`` shrinks larger images (annotations scaled with them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from refinemask_cli.data.splits import held_back_names, holdout_ids, subset


def scale_annotations(doc: dict, im: dict, height: int, width: int) -> None:
    """Image ``im`` resized to ``height`` × ``width``: its record and its annotations' boxes, areas
    and masks (polygons scaled, RLE decoded, resized and encoded again)."""
    import numpy as np

    from refinemask_cli.geometry import encode_rle, segmentation_to_mask

    sx, sy = width / im["width"], height / im["height"]
    for a in doc["annotations"]:
        if a["image_id"] != im["id"]:
            continue
        x, y, w, h = a["bbox"]
        a["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        seg = a.get("segmentation")
        if isinstance(seg, list):
            a["segmentation"] = [[v * (sx if k % 2 == 0 else sy) for k, v in enumerate(poly)] for poly in seg]
            a["area"] = a.get("area", 0.0) * sx * sy
        elif isinstance(seg, dict):
            full = segmentation_to_mask(seg, im["height"], im["width"])
            small = cv2.resize(full.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
            a["segmentation"] = encode_rle(small)
            a["area"] = float(small.sum())
    im["height"], im["width"] = height, width


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="dataset folder: instances.json beside images/")
    ap.add_argument("out", type=Path)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--drop-holdout", action="store_true",
                    help="leave out the held-back fifth (data/splits.py); train on the result WITHOUT "
                         "exclude_holdout, which would drop another fifth")
    ap.add_argument("--drop-held-back-of", action="append", default=[], type=Path, metavar="JSON",
                    help="leave out the images another set holds back (by file name); repeatable")
    ap.add_argument("--max-side", type=int, default=0, help="shrink images whose long side is larger")
    ap.add_argument("--every", type=int, default=1, help="keep every k-th image (by file name)")
    ap.add_argument("--offset", type=int, default=0, help="first kept image of --every")
    args = ap.parse_args()
    doc = json.loads((args.src / "instances.json").read_text())
    ids = {im["id"] for im in doc["images"]}
    if args.drop_holdout:
        ids -= holdout_ids(ids)
    held_elsewhere = set().union(*(held_back_names(json.loads(p.read_text())) for p in args.drop_held_back_of))
    names = sorted(im["file_name"] for im in doc["images"]
                   if im["id"] in ids and Path(im["file_name"]).name not in held_elsewhere)
    keep = set(names[args.offset :: args.every])
    doc = subset(doc, {im["id"] for im in doc["images"] if im["file_name"] in keep})
    for im in doc["images"]:
        img = cv2.imread(str(args.src / "images" / im["file_name"]))
        if img is None:
            raise SystemExit(f"{args.src / 'images' / im['file_name']}: cannot read")
        scale = args.max_side / max(img.shape[:2]) if args.max_side else 1.0
        if scale < 1:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
            scale_annotations(doc, im, img.shape[0], img.shape[1])
        out = args.out / "images" / im["file_name"]
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    (args.out / "instances.json").write_text(json.dumps(doc))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(doc['images'])} images, {len(doc['annotations'])} annotations, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
