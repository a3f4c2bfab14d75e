"""A run's model (model_final.pt, else model_last.pt) as a float16 refinemask checkpoint: half the
bytes for the trip back from the GPU machine (its $OUT takes files of at most 16 MiB: `split -b 15M`).

    python tools/device/to_fp16.py RUN_DIR OUT.pt
"""
import sys
from pathlib import Path

from refinemask_cli.weights import load_model, save_checkpoint

run = Path(sys.argv[1])
src = run / "model_final.pt" if (run / "model_final.pt").exists() else run / "model_last.pt"
model, ckpt = load_model(src)
sha = save_checkpoint(model.eval(), Path(sys.argv[2]), {**ckpt.get("meta", {}), "from_file": src.name}, half=True)
print(f"{src} -> {sys.argv[2]} (tensors sha256 {sha[:12]})")
