"""Write the shipped refine weights from trained runs: their uniform average when several are given
(a "model soup"; an earlier shipped file may be one of them), in float16, with the first file's
architecture and test-time settings and a meta that names what was averaged.

    python tools/ship_refine.py RUN.pt [RUN2.pt ...] -o weights/refinemask_mnv2_agnostic.pt \
        [--set mask_prompt_threshold=0.45] [--meta KEY=VALUE ...]

``--set`` stores inference settings in the file's config (the names of
``refinemask_cli.model.config.INFERENCE_SETTINGS``, e.g. the mask thresholds), measured with
`bench_refine_quality.py --variant` first. One file with ``--set`` re-ships its tensors unchanged
with the new settings (its meta kept).

The refine default's RPN and box head are never trained (mask-branch runs only), so the file says
``detector = untrained`` and `predict` keeps warning when pointed at it. Measure the result with
`benchmarks/bench_refine_quality.py`, and against the shipped file with `benchmarks/compare_weights.py
refine`, before it replaces the shipped file (weights/README.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _meta import parse_meta

from refinemask_cli.model import with_settings
from refinemask_cli.model.config import INFERENCE_SETTINGS, inference_changes
from refinemask_cli.weights import WeightsError, average_weights, save_checkpoint
from refinemask_cli.weights.checkpoint import averaged_meta, detector_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--meta", action="append", default=[], help="KEY=VALUE to record in the file's meta")
    ap.add_argument("--set", dest="settings", action="append", default=[],
                    help="an inference setting to store in the file's config, e.g. mask_prompt_threshold=0.45")
    args = ap.parse_args()
    extra = parse_meta(args.meta)
    changes, rest = inference_changes(",".join(args.settings))
    if rest:
        raise ValueError(f"--set {', '.join(rest)}: not an inference setting (one of {', '.join(INFERENCE_SETTINGS)})")
    model, ckpts = average_weights(args.runs)
    if changes:
        model = with_settings(model, **changes)
    for path, ckpt in zip(args.runs, ckpts):
        if detector_trained(ckpt.get("meta", {})):
            raise ValueError(f"{path}: its detector was trained (a predict file?); the refine default "
                             "is averaged from mask-branch runs only")
    # one file re-shipped (new settings, the same tensors) keeps all its meta, what it was averaged from too
    own = ckpts[0].get("meta", {}) if len(args.runs) == 1 else averaged_meta(args.runs, ckpts)
    meta = {**own, "detector": "untrained", **extra}
    sha = save_checkpoint(model.eval(), args.out, meta, half=True)
    settings = "".join(f", {k} = {v}" for k, v in changes.items())
    print(f"{args.out}: tensors sha256 {sha[:12]}, the average of {len(args.runs)} file(s){settings}")


if __name__ == "__main__":
    try:
        main()
    except (WeightsError, OSError, ValueError) as e:  # one line, exit 1, nothing written
        raise SystemExit(f"error: {e}") from None
