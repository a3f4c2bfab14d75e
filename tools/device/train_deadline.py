"""Train a recipe on the GPU machine with a wall-clock deadline, as a lease needs; prints progress
and writes OUT/speed.json (seconds per step, time to the first step, peak GPU memory).

    python tools/device/train_deadline.py RECIPE OUT DEADLINE_S [--data /root/data] [--iters N]
        [--init PATH] [--set lr=0.01 ...] [--device cuda]

With ``--data``, each dataset ``.../<name>/instances.json`` of RECIPE is read from DATA/<name>
instead: a set with no staged copy is left out (its weight goes with it), extra staged folders
DATA/<name>_<part> (e.g. davis345_b) join their set, sharing its weight by image count, and
``exclude_holdout`` and ``exclude_held_back_of`` are dropped (stage_data.py --drop-holdout and
--drop-held-back-of already left those images out); ``every_object`` is kept.

A short run of the same recipe (say ``--iters 30``) measures the speed; size ``--iters`` of the real
run from it, so that the learning-rate schedule ends before the deadline. Past the deadline the run
stops at once and keeps its last checkpoint (``checkpoint_every``) as model_last.pt.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# the stdlib tomllib, or tomli on Python 3.10
from refinemask_cli.engine.config import load_train_config, read_recipe, tomllib
from refinemask_cli.engine.run import run_training


class Deadline(Exception):
    pass


def staged_datasets(recipe: Path, data: Path) -> list[dict]:
    """The recipe's datasets, read from their staged copies under ``data``."""
    out = []
    for spec in read_recipe(recipe).get("datasets", []):
        name = Path(spec["json"]).parent.name
        parts = sorted(p for p in data.glob(f"{name}*") if (p / "instances.json").is_file()
                       and (p.name == name or p.name.startswith(name + "_")))
        counts = [len(json.loads((p / "instances.json").read_text())["images"]) for p in parts]
        out += [{"json": str(p / "instances.json"), "images": str(p / "images"),
                 "weight": spec.get("weight", 1.0) * n / sum(counts), "every_object": spec.get("every_object", True)}
                for p, n in zip(parts, counts)]
    if not out:
        raise SystemExit(f"no staged dataset of {recipe} under {data}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("deadline", type=float)
    ap.add_argument("--data", type=Path, help="where the recipe's datasets are staged")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--init")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE (a TOML value) of the top level")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    overrides = {"iters": args.iters, "init": args.init,
                 "datasets": staged_datasets(args.recipe, args.data) if args.data else None}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = tomllib.loads(f"v = {value}")["v"]
    cfg = load_train_config(args.recipe, overrides)
    device = torch.device(args.device)
    t0 = time.time()
    stamps: list[float] = []

    def on_step(rec: dict) -> None:
        stamps.append(time.time())
        if rec["iter"] % 25 == 0 or rec["iter"] <= 2:
            print(args.out.name, rec["iter"], f"loss {rec['loss']:.3f}", f"{time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > args.deadline:
            raise Deadline

    print(args.out.name, ", ".join(f"{Path(d.images).parent.name} {d.weight:.3f}" for d in cfg.datasets), flush=True)
    status = "done"
    try:
        run_training(cfg, args.out, device, on_step=on_step)
    except Deadline:
        status = "deadline"
    skip = 5 if len(stamps) > 10 else 0  # the first steps include warm-up
    gaps = sorted(b - a for a, b in zip(stamps[skip:], stamps[skip + 1 :]))
    res = {"status": status, "steps": len(stamps), "s_per_step_median": gaps[len(gaps) // 2] if gaps else None,
           "first_step_at_s": stamps[0] - t0 if stamps else None, "wall_s": time.time() - t0,
           "max_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0}
    (args.out / "speed.json").write_text(json.dumps(res))
    print(args.out.name, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
