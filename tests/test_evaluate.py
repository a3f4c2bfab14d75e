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


def test_evaluate_by_id_leaves_out_the_ignored_pixels_and_names_copies_it_cannot_score(tmp_path):
    """--ignore KEY: the GT's segmentation under KEY is left out of both masks (here the half the
    copy missed, so IoU 0.5 becomes 1). A copy with no readable mask, or an --ignore region that is
    none, is one line naming its file and annotation (before: a Python error, or a KeyError
    traceback for PRED entries without an id under --by-id, which now match nothing)."""
    import json

    from click.testing import CliRunner

    from refinemask_cli.cli import main

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    p = np.zeros((40, 40), bool)
    p[0:20, 0:10] = True
    unsure = np.zeros((40, 40), bool)
    unsure[:, 10:] = True
    gt = _doc([a], [7])
    gt["annotations"][0]["uncertain"] = rle(unsure)
    pred = _doc([p], [7])
    paths = {name: tmp_path / f"{name}.json" for name in ("gt", "pred")}

    def evaluate(*extra):
        paths["gt"].write_text(json.dumps(gt))
        paths["pred"].write_text(json.dumps(pred))
        return CliRunner().invoke(main, ["evaluate", str(paths["gt"]), str(paths["pred"]), "--json", *extra])

    r = evaluate()
    assert r.exit_code == 0 and json.loads(r.output)["mIoU"] == pytest.approx(0.5)
    r = evaluate("--ignore", "uncertain")
    assert r.exit_code == 0 and json.loads(r.output)["mIoU"] == pytest.approx(1.0), r.output
    pred["annotations"].append({"segmentation": "x"})  # no id: matches no object
    r = evaluate("--by-id")
    assert r.exit_code == 0 and json.loads(r.output)["mIoU"] == pytest.approx(0.5), r.output
    pred["annotations"][0]["segmentation"] = {"size": [40, 40], "counts": "not rle"}
    r = evaluate("--by-id")
    assert r.exit_code == 1 and f"{paths['pred']}: annotation 7: its copy in PRED:" in r.output, r.output
    pred["annotations"][0] = {k: v for k, v in pred["annotations"][0].items() if k not in ("segmentation", "bbox")}
    r = evaluate("--by-id")
    assert r.exit_code == 1 and "annotation 7: its copy in PRED has neither segmentation nor bbox" in r.output
    pred["annotations"][0]["bbox"] = [0, 0, 10, 20]  # box-only: the box is the mask
    r = evaluate("--by-id")
    assert r.exit_code == 0 and json.loads(r.output)["mIoU"] == pytest.approx(0.5), r.output
    gt["annotations"][0]["uncertain"] = [[1, 2, "x"]]
    r = evaluate("--by-id", "--ignore", "uncertain")
    assert r.exit_code == 1 and f"{paths['gt']}: annotation 7: its 'uncertain' (--ignore):" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("pred,said", [
    ("x", "neither a results list nor a dataset"), (None, "neither a results list nor a dataset"),
    ({"annotations": [{"id": [7], "image_id": 1}]}, "annotation #0: id [7] is not an id"),
    ({"annotations": [{"id": 7, "image_id": {"id": 1}, "category_id": 1, "bbox": [0, 0, 5, 5]}]},
     "annotation #0: image_id {'id': 1} is not an id"),
    ({"images": [{"id": [1], "file_name": "x.png"}], "annotations": []}, "image #0: id [1] is not an id"),
])
def test_predictions_that_are_no_dataset_are_named_in_one_line(tmp_path, pred, said):
    """Before: "string indices must be integers", "unhashable type: 'list'": one line, naming no file."""
    import json

    from click.testing import CliRunner

    from refinemask_cli.cli import main

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    (tmp_path / "gt.json").write_text(json.dumps(_doc([a], [7])))
    (tmp_path / "p.json").write_text(json.dumps(pred))
    for extra in ([], ["--by-id"], ["--class-agnostic"]):
        r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "p.json"), *extra])
        assert r.exit_code == 1 and f"{tmp_path / 'p.json'}: {said}" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_check_results_names_each_detection_that_cannot_be_scored():
    from refinemask_cli.io.coco import check_results, first_error

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    gt = _doc([a], [7])
    ok = {"id": 3, "image_id": 1, "category_id": 1, "segmentation": rle(a), "score": 0.9}
    assert check_results([ok, {**ok, "id": 4, "bbox": [0, 0, 20, 20]}], gt) == []
    cases = [
        ({**ok, "image_id": 5}, "annotation 3: image_id 5 is not an image of the ground truth (predict --like"),
        ({**ok, "category_id": 9}, "annotation 3: category_id 9 is not a category of the ground truth (--class-agnostic"),
        ({**ok, "score": "high"}, "annotation 3: score 'high' must be a finite number"),
        ({**ok, "score": float("nan")}, "annotation 3: score nan must be a finite number"),
        ({k: v for k, v in ok.items() if k != "score"}, "annotation 3: score None"),
        ({**ok, "bbox": [1, 2]}, "annotation 3: bbox [1, 2] must be 4 finite numbers"),
        ({k: v for k, v in ok.items() if k != "segmentation"}, "annotation 3: has neither segmentation nor bbox"),
        ({**ok, "segmentation": {"size": [10, 10], "counts": "abc"}}, "annotation 3: RLE size 10x10 does not match"),
        ({**ok, "segmentation": [[1, 2, 3]]}, "annotation 3: polygon 0 has 3 coordinates"),
        ({k: v for k, v in ok.items() if k != "id"} | {"image_id": 5}, "result #0: image_id 5"),
        (7, "result #0: entry is not a JSON object"),
    ]
    for bad, message in cases:
        problem = first_error(check_results([bad], gt))
        assert problem is not None and str(problem).startswith(message), (bad, str(problem))
    assert check_results([{**ok, "category_id": 9}], gt, any_category=True) == []  # class-agnostic scoring
    # a box-only detection is scored as its box (pycocotools' loadRes does so), also beside masks
    box_only = {"id": 5, "image_id": 1, "category_id": 1, "score": 0.8, "bbox": [0, 0, 20, 20]}
    assert check_results([box_only], gt) == []
    assert evaluate_detections(gt, [box_only])["segm_AP"] == pytest.approx(1.0)
    wide = {**box_only, "bbox": [0, 0, 40, 20]}  # mask IoU 0.5 with the object
    res = evaluate_detections(gt, [{**ok, "score": 0.5}, wide])  # mixed: loadRes would KeyError
    assert res["segm_AP50"] == pytest.approx(1.0) and res["detections"] == 2
    assert str(first_error(check_results({"annotations": []}, gt))) == "results must be a list of detections"
    # the engine refuses them the same way (pycocotools' loadRes would only assert)
    from refinemask_cli.io.coco import CocoError

    with pytest.raises(CocoError, match="image_id 5 is not an image of the ground truth"):
        evaluate_detections(gt, [{**ok, "image_id": 5}])


def test_match_images_by_name():
    from refinemask_cli.engine.evaluate import match_images_by_name

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    gt = _doc([a], [7])
    gt["images"] = [{"id": 10, "width": 40, "height": 40, "file_name": "val/x.png"},
                    {"id": 11, "width": 40, "height": 40, "file_name": "val/y.png"}]
    pred = {"images": [{"id": 1, "file_name": "y.png"}, {"id": 2, "file_name": "val/x.png"}],
            "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 2}, {"id": 3, "image_id": 1}]}
    out, matched = match_images_by_name(gt, pred)
    assert matched and [a["image_id"] for a in out["annotations"]] == [11, 10, 11]
    assert [a["image_id"] for a in pred["annotations"]] == [1, 2, 1]  # the input is not changed
    same = {"images": [], "annotations": [{"id": 1, "image_id": 10}]}
    assert match_images_by_name(gt, same) == (same, False)  # ids already the ground truth's
    for images in ([{"id": 1, "file_name": "z.png"}, {"id": 2, "file_name": "x.png"}],  # a name not there
                   [{"id": 2, "file_name": "x.png"}]):  # image 1 not listed
        unmatched = {**pred, "images": images}
        assert match_images_by_name(gt, unmatched) == (unmatched, False)
    gt["images"].append({"id": 12, "width": 40, "height": 40, "file_name": "test/y.png"})  # y.png twice
    out, matched = match_images_by_name(gt, {**pred, "images": [{"id": 1, "file_name": "test/y.png"},
                                                                  {"id": 2, "file_name": "val/x.png"}]})
    assert matched and [a["image_id"] for a in out["annotations"]] == [12, 10, 12]  # the full name decides
    assert not match_images_by_name(gt, pred)[1]  # "y.png" alone is ambiguous now
    odd = {"images": 5, "annotations": [{"id": 1, "image_id": 1}]}  # not a list: nothing to match by
    assert match_images_by_name(gt, odd) == (odd, False)


def test_evaluate_cli_bad_detections_and_other_image_ids(tmp_path):
    import json

    from click.testing import CliRunner

    from refinemask_cli.cli import main

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    gt = _doc([a], [7])
    gt["images"][0]["id"] = 42
    gt["annotations"][0]["image_id"] = 42
    gt["categories"] = [{"id": 1, "name": "person"}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))

    def evaluate(pred, *extra):
        (tmp_path / "pred.json").write_text(json.dumps(pred))
        return CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), *extra])

    det = {"image_id": 42, "category_id": 1, "segmentation": rle(a), "score": 0.9}
    # a results list numbered as another file (predict without --like): one line, exit 1, not an assertion
    r = evaluate([{**det, "image_id": 1}])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "pred.json: result #0: image_id 1 is not an image of the ground truth (predict --like" in r.output
    for bad in ([{**det, "score": None}], {"annotations": {}}, {"annotations": [3]}):
        r = evaluate(bad)
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "pred.json: " in r.output, r.output
    # predict's own COCO output of the same image, numbered from 1, one class "object": matched by file
    # name with a note, and a note that its category is not the ground truth's
    pred = {"images": [{"id": 1, "width": 40, "height": 40, "file_name": "x.png"}],
            "annotations": [{**det, "id": 1, "image_id": 1}], "categories": [{"id": 1, "name": "object"}]}
    r = evaluate(pred, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["segm_AP"] == pytest.approx(1.0)
    assert "images matched by file name" in r.stderr and "pass --class-agnostic" in r.stderr
    r = evaluate(pred, "--json", "--class-agnostic")
    assert json.loads(r.stdout)["segm_AP"] == pytest.approx(1.0) and "--class-agnostic" not in r.stderr
    r = evaluate({**pred, "images": [{"id": 1, "width": 40, "height": 40, "file_name": "other.png"}]})
    assert r.exit_code == 1 and "annotation 1: image_id 1 is not an image of the ground truth" in r.output


def test_detections_numbered_like_the_ground_truth_are_not_taken_for_a_refined_copy(tmp_path):
    """predict --like numbers its detections from 1, as small datasets number their objects: ids
    alone chose the by-id mode, and scored each detection against another image's object."""
    import json

    from click.testing import CliRunner

    from refinemask_cli.cli import main
    from refinemask_cli.engine.evaluate import is_refined_copy

    a = np.zeros((40, 40), bool)
    a[0:20, 0:20] = True
    gt = _doc([a, a], [1, 2])
    gt["images"].append({"id": 2, "width": 40, "height": 40, "file_name": "y.png"})
    gt["annotations"][1]["image_id"] = 2
    det = {"category_id": 1, "segmentation": rle(a), "score": 0.9, "iscrowd": 0}
    pred = {**gt, "annotations": [{**det, "id": 1, "image_id": 2}, {**det, "id": 2, "image_id": 1},
                                  {**det, "id": 3, "image_id": 1, "score": 0.5}]}
    assert not is_refined_copy(gt, pred)
    assert is_refined_copy(gt, {**gt, "annotations": [{**x, "segmentation": rle(a)} for x in gt["annotations"]]})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["mode"] == "detections" and res["segm_AP"] == pytest.approx(1.0)  # both found, one duplicate
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), "--json",
                                  "--by-id"])
    assert json.loads(r.stdout)["mode"] == "by-id"  # still there when asked for
