"""Is NEW better than BASE on the held-back fifths, or within what the choice of images gives?

Both weights run on the same held-back images of ../shared/data (`data/splits.py`), with their own
default settings; then a paired bootstrap over images (`refinemask_cli.engine.bootstrap`): the
difference on all images, how many of N resamples had it above zero, and its 90 % interval.

    python benchmarks/compare_weights.py refine BASE.pt NEW.pt [NEW2.pt ...] [--sets coco-mval-dev coco-extra]
        [--loose 0.15] [--resamples 1000] [--device auto] [--limit N]
    python benchmarks/compare_weights.py refine BASE.json NEW.json [...] [--sets ...] [--loose 0.15]
    python benchmarks/compare_weights.py predict BASE.pt NEW.pt [...] [--set coco-extra] [--resamples 200]

refine: mIoU and mBIoU of every non-crowd object, refined from its box, from poly8 and (``--loose``)
from its box grown by that fraction per side, as `bench_refine_quality.py` scores them. predict:
class-agnostic mask AP and AP50 as `bench_predict_quality.py` scores them (every detection kept; a
resample is scored as one dataset, repeated images as new ones). The weights' files are only read.
For refine, a `bench_refine_quality.py --json` file of the weights may stand in for them (any mix of
.pt and .json): its per-object scores of the default rows are compared without refining again, and
it must hold the sets and the ``--loose`` row asked for, on the same held-back images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_predict_quality as bpq
import bench_refine_quality as brq
import numpy as np

from refinemask_cli.engine.bootstrap import mean_differences, statistic_differences
from refinemask_cli.engine.evaluate import evaluate_detections
from refinemask_cli.jobs import refine as job
from refinemask_cli.predictor import Predictor
from refinemask_cli.weights import WeightsError, load_model


class ScoresError(Exception):
    pass


def refine_rows(model, sets: list[str], loose: float, device: str, limit: int) -> list[dict]:
    """The model's refine defaults on each set, as `bench_refine_quality.py --json` rows."""
    predictor = Predictor(model, device=device)
    rows = []
    for name in sets:
        data, gt = brq.load_set(name, limit)
        boxes, poly8 = brq.coarse_docs(data, gt)
        for pname, doc, prompt in brq.prompts(boxes, poly8, loose):
            refined, _, _ = job.refine_dataset(doc, data / "images", predictor, job.RefineOptions(prompt=prompt))
            rows.append(brq.score_row(name, gt, f"refine from {pname} [defaults]", refined))
    return rows


def read_rows(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
        return [r for r in rows if isinstance(r, dict) and {"set", "method"} <= r.keys()]
    except (OSError, ValueError, TypeError) as e:
        raise ScoresError(f"{path}: not a bench_refine_quality.py --json file ({e})") from None


def refine_scores(rows: list[dict], sets: list[str], loose: float, source: Path) -> dict:
    """{(set, prompt): (image ids, per-object [IoU, BIoU] rows, annotation ids)} of the default rows,
    in the order of the annotation ids."""
    by_key = {(r["set"], r["method"]): r for r in rows}
    out = {}
    for name in sets:
        for pname in brq.prompt_names(loose):
            row = by_key.get((name, f"refine from {pname} [defaults]"))
            if row is None:
                raise ScoresError(f"{source}: no row 'refine from {pname} [defaults]' of {name}; run "
                                  f"bench_refine_quality.py --sets {' '.join(sets)} --loose {loose} --json again")
            if "objects" not in row:
                raise ScoresError(f"{source}: written before per-object scores; run bench_refine_quality.py --json again")
            objects = sorted(row["objects"], key=lambda o: o[1])
            out[(name, pname)] = ([o[0] for o in objects], np.array([[o[2], o[3]] for o in objects], float),
                                  [o[1] for o in objects])
    return out


def mask_ap(gt: dict, results: list[dict]) -> tuple[float, float]:
    r = evaluate_detections(gt, results, kinds=("segm",))
    return r["segm_AP"], r["segm_AP50"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["refine", "predict"])
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path, nargs="+")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--sets", nargs="+", default=["coco-mval-dev", "coco-extra"], help="refine: the sets")
    ap.add_argument("--set", dest="set_name", default="coco-extra", choices=["coco-extra", "coco128", "davis345"],
                    help="predict: the set")
    ap.add_argument("--loose", type=float, default=0.15, help="refine: boxes grown by this fraction (0: not)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-back images of each set")
    ap.add_argument("--resamples", type=int, default=None, help="default: 1000 (refine), 200 (predict)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = [args.base, *args.new]
    is_json = [args.task == "refine" and p.suffix == ".json" for p in paths]
    try:
        models = [None if j else load_model(p)[0] for p, j in zip(paths, is_json)]
        saved = {p: refine_scores(read_rows(p), args.sets, args.loose, p) for p, j in zip(paths, is_json) if j}
    except (WeightsError, ScoresError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not all(is_json) and not brq.DATA.is_dir():
        print(f"{brq.DATA}: not found (this benchmark needs ../shared/data)", file=sys.stderr)
        return 1
    if args.task == "refine":
        n = args.resamples or 1000
        runs = [saved[p] if m is None else refine_scores(refine_rows(m, args.sets, args.loose, args.device, args.limit),
                                                          args.sets, args.loose, p)
                for p, m in zip(paths, models)]
        for path, scores in zip(args.new, runs[1:]):
            print(f"\n{path.name} against {args.base.name}: mIoU / mBIoU, paired bootstrap over images ({n} resamples)")
            for key, (image_of, base, ids) in runs[0].items():
                if scores[key][2] != ids:
                    print(f"error: {path.name} and {args.base.name} scored other objects of {key[0]} "
                          f"({len(scores[key][2])} against {len(ids)}): the same --sets and --limit for both",
                          file=sys.stderr)
                    return 1
                d_iou, d_biou = mean_differences(image_of, base, scores[key][1], n, args.seed)
                print(f"{key[0]:>14} {key[1]:<11} mIoU {d_iou}   mBIoU {d_biou}")
    else:
        n = args.resamples or 200
        gt = bpq.agnostic_holdout(bpq.DATA / args.set_name, args.limit or None)
        dets = [bpq.detect(m, gt, bpq.DATA / args.set_name / "images", {}, args.device, "auto")[0] for m in models]
        for path, results in zip(args.new, dets[1:]):
            d_ap, d_ap50 = statistic_differences(gt, dets[0], results, mask_ap, n, args.seed)
            print(f"\n{path.name} against {args.base.name} on {args.set_name}'s held-back fifth "
                  f"({len(gt['images'])} images), paired bootstrap over images ({n} resamples)")
            print(f"mask AP   {d_ap}\nmask AP50 {d_ap50}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
