"""Write the shipped predict weights from trained runs: their uniform average when several are given
(a "model soup" of runs fine-tuned from one start), the input size chosen on the held-back fifth,
mask scoring on, float16, and the predict defaults (score threshold, max detections) read from a
`benchmarks/bench_predict_quality.py --json` result of the same weights, and the inference settings
of the bench row chosen (input size, mask threshold, box voting, ...).

    python tools/ship_predict.py RUN.pt [RUN2.pt ...] --bench BENCH.json \
        --variant min_size=448,max_size=704,mask_threshold=0.4,vote=0.75 \
        -o weights/refinemask_mnv2_predict.pt [--meta KEY=VALUE ...]

The threshold is the bench's best-F1 one; max detections 1.5 × the most it kept in one image,
rounded up to tens, at least 20. Before it replaces the shipped file: `benchmarks/compare_weights.py
predict weights/refinemask_mnv2_predict.pt OUT.pt` (is the gain more than the choice of images gives).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _meta import parse_meta

from refinemask_cli.engine.evaluate import predict_defaults
from refinemask_cli.model import with_settings
from refinemask_cli.model.config import INFERENCE_SETTINGS, inference_changes
from refinemask_cli.weights import WeightsError, average_weights, save_checkpoint
from refinemask_cli.weights.checkpoint import averaged_meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--bench", type=Path, required=True, help="bench_predict_quality.py --json output")
    ap.add_argument("--variant", required=True, help="the bench row to ship, e.g. min_size=448,max_size=704")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--meta", action="append", default=[], help="KEY=VALUE to record in the file's meta")
    args = ap.parse_args()
    rows = json.loads(args.bench.read_text())
    if args.variant not in rows:
        raise ValueError(f"{args.bench}: no row {args.variant!r} (it has {', '.join(map(repr, rows))})")
    res = rows[args.variant]
    changes, rest = inference_changes(args.variant)
    if rest:
        raise ValueError(f"--variant {args.variant!r}: {', '.join(rest)} cannot be stored in weights "
                         f"(only {', '.join(INFERENCE_SETTINGS)})")
    model, ckpts = average_weights(args.runs)
    shipped = with_settings(model, **{"mask_scoring": True, **changes})
    best = res["best"]
    meta = {**averaged_meta(args.runs, ckpts), **parse_meta(args.meta)}
    defaults = predict_defaults([best])
    if defaults is None:
        raise ValueError(f"{args.bench}: row {args.variant!r} matched no object at any threshold")
    meta.update({
        "detector": "trained", **defaults[0],
        "predict_defaults_from": "best mask F1 at IoU 0.5 on coco-extra's held-back fifth",
        "holdout_mask_AP": round(res["segm_AP"], 4), "holdout_mask_AP50": round(res["segm_AP50"], 4),
        "holdout_boundary_AP": round(res["boundary_AP"], 4), "holdout_box_AP50": round(res["bbox_AP50"], 4)})
    sha = save_checkpoint(shipped.eval(), args.out, meta, half=True)
    print(f"{args.out}: tensors sha256 {sha[:12]}, input {shipped.cfg.min_size} / {shipped.cfg.max_size}, "
          f"threshold {meta['predict_score_threshold']}, max {meta['predict_max_detections']} per image")


if __name__ == "__main__":
    try:
        main()
    except (WeightsError, OSError, ValueError) as e:  # one line, exit 1, nothing written
        raise SystemExit(f"error: {e}") from None
