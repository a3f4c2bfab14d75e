"""Files for the annotation-loop walkthrough (examples/README.md, "The loop"), made from
../shared/data/coco-extra without copying any of it into the repository:

- ``OUT/boxes.json``: the first N training images of coco-extra (its held-back fifth excluded) with
  every object as a bare box, no segmentation: the "coarse annotations of a few images";
- ``OUT/truth.json``: the same N images with their true masks (to score the refinement);
- ``OUT/holdout.json``: coco-extra's held-back fifth (every 5th image id) with its true masks: the
  images to predict and the truth to evaluate against;
- with ``--val N``: ``OUT/val.json``, the held-back fifth's first N images by id (validation for
  ``train --val-json``), and ``OUT/rest.json``, its other images (to predict and evaluate).

    python examples/loop_data.py --out loop/ [--images 40] [--val 10]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refinemask_cli.data.splits import holdout_ids, subset

DATA = Path(__file__).resolve().parents[2] / "shared/data/coco-extra"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=40, help="Training images to take (boxes only).")
    ap.add_argument("--val", type=int, default=0, help="Also split the held-back images: N for validation.")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    if not (args.data / "instances.json").is_file():
        print(f"{args.data}: coco-extra not found (this walkthrough needs ../shared/data)", file=sys.stderr)
        return 1
    doc = json.loads((args.data / "instances.json").read_text())
    held = holdout_ids(im["id"] for im in doc["images"])
    train_ids = [im["id"] for im in sorted(doc["images"], key=lambda im: im["id"]) if im["id"] not in held]
    boxes = subset(doc, set(train_ids[: args.images]))
    boxes["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"} for a in boxes["annotations"]
                            if not a.get("iscrowd", 0)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "boxes.json").write_text(json.dumps(boxes))
    truth = subset(doc, set(train_ids[: args.images]))
    truth["annotations"] = [a for a in truth["annotations"] if not a.get("iscrowd", 0)]
    (args.out / "truth.json").write_text(json.dumps(truth))
    (args.out / "holdout.json").write_text(json.dumps(subset(doc, held)))
    if args.val:
        first = set(sorted(held)[: args.val])
        (args.out / "val.json").write_text(json.dumps(subset(doc, first)))
        (args.out / "rest.json").write_text(json.dumps(subset(doc, held - first)))
    print(f"{args.out}/boxes.json: {len(boxes['images'])} images, {len(boxes['annotations'])} boxes; "
          f"{args.out}/holdout.json: {len(held)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
