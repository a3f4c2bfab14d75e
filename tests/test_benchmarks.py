"""The quality benchmark in a CI-sized run: two held-back images of each set, every row printed.
Needs ../shared/data (skipped without it, as on a user's machine) and the shipped weights."""
import json
import subprocess
import sys

import pytest

from refinemask_cli.weights.checkpoint import default_weights_path

from .conftest import ROOT, shared_path


def test_bench_refine_quality_small(tmp_path):
    shared_path("data", "coco-mval-dev", "coarse", "boxes.json")
    shared_path("data", "coco-extra", "instances.json")
    if not default_weights_path().is_file():
        pytest.skip("no default weights shipped")
    out = tmp_path / "scores.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_refine_quality.py"),
                        "--weights", str(default_weights_path()), "--device", "cpu", "--limit", "2",
                        "--sets", "coco-mval-dev", "coco-extra", "--variant", "mode=whole",
                        "--variant", "mode=zoom,flip=1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for row in ("coarse input: poly8", "OpenCV GrabCut from the box", "refine from boxes [mode=whole]",
                "refine from poly8 [mode=zoom,flip=1]"):
        assert row in r.stdout
    scores = json.loads(out.read_text())
    assert {s["set"] for s in scores} == {"coco-mval-dev", "coco-extra"}
    assert all(0.0 <= s["mIoU"] <= 1.0 and s["count"] > 0 for s in scores)


def test_bench_predict_quality_small(tmp_path):
    shared_path("data", "coco-extra", "instances.json")
    weights = default_weights_path("predict")
    if not weights.is_file():
        pytest.skip("no predict weights shipped")
    out = tmp_path / "scores.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_predict_quality.py"), "--device", "cpu",
                        "--limit", "2", "--variant", "mask_scoring=0", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "default" in r.stdout and "mask_scoring=0" in r.stdout and "boxAP50" in r.stdout
    rows = json.loads(out.read_text())
    for row in rows.values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("segm_AP", "segm_AP50", "boundary_AP", "bbox_AP50"))
        assert 0.05 <= row["best"]["threshold"] < 1 and len(row["curve"]) == 19
