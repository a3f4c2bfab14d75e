"""A train recipe rewritten for data staged on the GPU machine (run there).

Each dataset ``.../<name>/instances.json`` of RECIPE is read from DATA/<name> instead; a dataset
with no staged copy is left out (its weight goes with it). Staged copies were made without their
held-back fifth (stage_data.py --drop-holdout), so ``exclude_holdout`` is dropped. Extra staged
folders (DATA/<name>_<part>, e.g. davis345_b) join their set, sharing its weight by image count.

    python tools/device/device_config.py weights/train_predict_gpu.toml /root/data OUT.toml \
        [--iters N] [--init PATH] [--set lr=0.01 ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# the stdlib tomllib, or tomli on Python 3.10
from refinemask_cli.engine.config import tomllib


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--iters", type=int)
    ap.add_argument("--init")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE (a TOML value) of the top level")
    args = ap.parse_args()
    cfg = tomllib.loads(args.recipe.read_text())
    if args.iters:
        cfg["iters"] = args.iters
    if args.init:
        cfg["init"] = args.init
    for item in args.set:
        key, value = item.split("=", 1)
        cfg[key] = tomllib.loads(f"v = {value}")["v"]
    datasets = []
    for spec in cfg.pop("datasets"):
        name = Path(spec["json"]).parent.name
        parts = sorted(p for p in args.data.glob(f"{name}*") if (p / "instances.json").is_file()
                       and (p.name == name or p.name.startswith(name + "_")))
        counts = [len(json.loads((p / "instances.json").read_text())["images"]) for p in parts]
        for p, n in zip(parts, counts):
            datasets.append({"json": str(p / "instances.json"), "images": str(p / "images"),
                             "weight": spec.get("weight", 1.0) * n / sum(counts)})
    if not datasets:
        raise SystemExit(f"no staged dataset of {args.recipe} under {args.data}")
    model = cfg.pop("model", {})
    lines = [f"{k} = {toml_value(v)}" for k, v in cfg.items()]
    if model:
        lines += ["", "[model]"] + [f"{k} = {toml_value(v)}" for k, v in model.items()]
    for d in datasets:
        lines += ["", "[[datasets]]"] + [f"{k} = {toml_value(v)}" for k, v in d.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{args.out}: " + ", ".join(f"{Path(d['images']).parent.name} {d['weight']:.3f}" for d in datasets))


if __name__ == "__main__":
    main()
