"""Stage training sets for the GPU machine, whose calls carry at most 64 MiB of working tree.

Writes OUT/<name>/{instances.json, images/}: a dataset's images re-encoded as JPEG at --quality (same
pixel size, so annotations are unchanged), optionally without coco-extra-style held-back fifth and
with every k-th image only. Run on this machine, from the repository root, e.g.:

    python tools/device/stage_data.py ../shared/data/coco-extra .stage/b/coco-extra --drop-holdout
    python tools/device/stage_data.py ../shared/data/davis345 .stage/a/davis345 --quality 70 --every 4
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from refinemask_cli.data.splits import holdout_ids, subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="dataset folder: instances.json beside images/")
    ap.add_argument("out", type=Path)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--drop-holdout", action="store_true",
                    help="leave out the held-back fifth (data/splits.py); train on the result WITHOUT "
                         "exclude_holdout, which would drop another fifth")
    ap.add_argument("--every", type=int, default=1, help="keep every k-th image (by file name)")
    ap.add_argument("--offset", type=int, default=0, help="first kept image of --every")
    args = ap.parse_args()
    doc = json.loads((args.src / "instances.json").read_text())
    ids = {im["id"] for im in doc["images"]}
    if args.drop_holdout:
        ids -= holdout_ids(ids)
    names = sorted(im["file_name"] for im in doc["images"] if im["id"] in ids)
    keep = set(names[args.offset :: args.every])
    doc = subset(doc, {im["id"] for im in doc["images"] if im["file_name"] in keep})
    for im in doc["images"]:
        img = cv2.imread(str(args.src / "images" / im["file_name"]))
        if img is None:
            raise SystemExit(f"{args.src / 'images' / im['file_name']}: cannot read")
        out = args.out / "images" / im["file_name"]
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    (args.out / "instances.json").write_text(json.dumps(doc))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(doc['images'])} images, {len(doc['annotations'])} annotations, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
