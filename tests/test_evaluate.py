"""Metrics against hand-computed values."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refinemask_cli.engine.evaluate import (
    _quiet_coco,
    band_accuracies,
    boundary_iou,
    boundary_width,
    evaluate_by_id,
    evaluate_detections,
    mask_boundary,
)


def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_boundary_width_is_two_percent_of_diagonal():
    assert boundary_width(480, 640) == 16
    assert boundary_width(3, 4) == 1  # never below 1


def test_boundary_band_by_hand():
    m = np.zeros((10, 10), bool)
    m[2:8, 2:8] = True
    b1 = mask_boundary(m, 1)
    assert b1.sum() == 36 - 16  # 6x6 square minus its 4x4 core
    full = np.ones((5, 5), bool)
    assert mask_boundary(full, 1).sum() == 25 - 9  # the image border counts as boundary


def test_boundary_iou_by_hand():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.zeros((20, 20), bool)
    b[5:15, 6:16] = True  # shifted right by one
    # d=1 bands: 36 pixels each; they share the top/bottom rows' overlap and nothing else shifts in
    ba, bb = mask_boundary(a, 1), mask_boundary(b, 1)
    expected = (ba & bb).sum() / (ba | bb).sum()
    assert boundary_iou(a, b, 1) == pytest.approx(expected)
    assert (ba & bb).sum() == 2 * 9 + 0 and (ba | bb).sum() == 36 + 36 - 18
    assert boundary_iou(a, a, 1) == 1.0


def test_band_accuracies():
    g = np.zeros((30, 30), bool)
    g[10:20, 10:20] = True
    assert band_accuracies(g, g, 2) == (1.0, 1.0)
    p = g.copy()
    p[10, 10:20] = False  # an error on the contour only
    acc_b, acc_i = band_accuracies(g, p, 2)
    assert acc_b < 1.0 and acc_i == 1.0


def _doc(masks, ids):
    h, w = masks[0].shape
    anns = [{"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(m.sum()),
             "bbox": list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))),
             "segmentation": rle(m)} for i, m in zip(ids, masks)]
    return {"images": [{"id": 1, "width": w, "height": h, "file_name": "x.png"}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}


def test_by_id_equal_is_one_and_missing_is_zero():
    a = np.zeros((40, 50), bool)
    a[5:20, 5:30] = True
    b = np.zeros((40, 50), bool)
    b[22:35, 10:40] = True
    gt = _doc([a, b], [1, 2])
    res = evaluate_by_id(gt, gt)
    assert res["mIoU"] == 1.0 and res["mBIoU"] == 1.0 and res["missing"] == 0
    half = _doc([a], [1])
    res = evaluate_by_id(gt, half)
    assert res["missing"] == 1 and res["mIoU"] == pytest.approx(0.5) and res["mBIoU"] == pytest.approx(0.5)
    assert set(res["per_size"]) == {"small"}  # 375 and 390 px < 32^2


def test_by_id_known_iou():
    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    p = np.zeros((40, 40), bool)
    p[0:20, 0:10] = True
    res = evaluate_by_id(_doc([a], [7]), _doc([p], [7]))
    assert res["mIoU"] == pytest.approx(0.5)


def test_detections_ap_perfect_and_empty():
    a = np.zeros((60, 60), bool)
    a[5:40, 5:50] = True
    gt = _doc([a], [1])
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle(a), "score": 0.9, "bbox": [5, 5, 45, 35]}]
    res = evaluate_detections(gt, results)
    assert res["segm_AP"] == pytest.approx(1.0) and res["boundary_AP"] == pytest.approx(1.0)
    shifted = np.zeros((60, 60), bool)
    shifted[7:42, 5:50] = True  # mask IoU ~0.89, boundary IoU lower
    assert res["bbox_AP"] == pytest.approx(1.0)
    res = evaluate_detections(gt, [{**results[0], "segmentation": rle(shifted)}])
    assert res["boundary_AP"] < res["segm_AP"] <= 1.0
    # a box only half on the object: found nothing, whatever the mask
    res = evaluate_detections(gt, [{**results[0], "bbox": [5, 5, 22, 35]}])
    assert res["bbox_AP"] == 0.0 and res["segm_AP"] == pytest.approx(1.0)
    # without a bbox the mask's extent is the box
    no_box = {k: v for k, v in results[0].items() if k != "bbox"}
    assert evaluate_detections(gt, [no_box])["bbox_AP"] == pytest.approx(1.0)
    assert evaluate_detections(gt, [])["bbox_AP"] == 0.0


def test_ground_truth_without_info_gets_one_for_load_res():
    # pycocotools 2.0.10's loadRes copies the ground truth's "info" (KeyError where a file has none, as
    # evaluate raised on the GPU machine's pycocotools); the file's own "info" is kept where it has one
    a = np.zeros((20, 20), bool)
    a[2:9, 3:12] = True
    gt = _doc([a], [1])
    assert "info" not in gt
    assert _quiet_coco(gt).dataset["info"] == {} and "info" not in gt
    assert _quiet_coco({**gt, "info": {"year": 2017}}).dataset["info"] == {"year": 2017}


def test_evaluate_cli_by_id_json(tmp_path):
    import json

    from click.testing import CliRunner

    from refinemask_cli.cli import main

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    p = np.zeros((40, 40), bool)
    p[0:20, 0:10] = True
    (tmp_path / "gt.json").write_text(json.dumps(_doc([a], [7])))
    (tmp_path / "pred.json").write_text(json.dumps(_doc([p], [7])))
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["mode"] == "by-id" and res["mIoU"] == pytest.approx(0.5) and res["missing"] == 0
    for key in ("mBIoU", "boundary_acc", "interior_acc"):
        assert key in res
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle(a), "score": 1.0, "bbox": [0, 0, 20, 20]}]
    (tmp_path / "res.json").write_text(json.dumps(results))
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "res.json"), "--json"])
    res = json.loads(r.output)
    assert res["mode"] == "detections" and res["segm_AP"] == pytest.approx(1.0) and res["boundary_AP"] == pytest.approx(1.0)
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "nope.json")])
    assert r.exit_code == 1 and "not found" in r.output
