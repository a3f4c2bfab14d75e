"""Train one config with a wall-clock deadline, as a GPU lease needs; prints progress and writes
OUT/speed.json (seconds per step, time to the first step, peak GPU memory).

    python tools/device/train_deadline.py CONFIG OUT DEADLINE_S [--device cuda]

A short run of the same config (say 30 steps) measures the speed; size ``iters`` of the real run
from it, so that the learning-rate schedule ends before the deadline. Past the deadline the run
stops at once and keeps its last checkpoint (``checkpoint_every``) as model_last.pt.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from refinemask_cli.engine.config import load_train_config
from refinemask_cli.engine.run import run_training


class Deadline(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("deadline", type=float)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    cfg = load_train_config(args.config, {})
    device = torch.device(args.device)
    t0 = time.time()
    stamps: list[float] = []

    def on_step(rec: dict) -> None:
        stamps.append(time.time())
        if rec["iter"] % 25 == 0 or rec["iter"] <= 2:
            print(args.out.name, rec["iter"], f"loss {rec['loss']:.3f}", f"{time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > args.deadline:
            raise Deadline

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
