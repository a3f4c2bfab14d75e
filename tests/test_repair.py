"""`validate --fix`: what is repaired (and named), what is dropped only when asked, what is never
written; the repaired file loads in pycocotools and refines."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO

from refinemask_cli.cli import main
from refinemask_cli.io.coco import check_dataset
from refinemask_cli.io.repair import repair_dataset

from .cocofix import tiny_weights

SQUARE = [30, 20, 90, 20, 90, 80, 30, 80]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ann(i, segm=None, bbox=(30, 20, 60, 60), **kw):
    a = {"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": list(bbox), "area": 3600.0, "note": i}
    if segm is not None:
        a["segmentation"] = segm
    return {**a, **kw}


def dataset(root, anns, **image):
    img = np.full((100, 120, 3), 128, np.uint8)
    cv2.rectangle(img, (30, 20), (90, 80), (250, 40, 40), -1)
    cv2.imwrite(str(root / "a.png"), img)
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 100, **image}],
           "categories": [{"id": 1, "name": "thing"}], "annotations": anns, "info": {"keep": "me"}}
    path = root / "in.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_repairs_are_named_and_leave_the_input_alone():
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 100}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            ann(1, [SQUARE, [5, 5, 6, 6]]),  # a 4-number ring beside a real one
            ann(2, [[5, 5, 6, 6, 7]]),  # nothing left: box-only
            ann(3, [SQUARE], bbox=(30, 20, 0, 60)),  # zero width: from the polygon
            ann(4, [SQUARE], bbox="x"),  # not a box
            {k: v for k, v in ann(5, [SQUARE]).items() if k != "bbox"},  # none at all
            ann(1, [SQUARE]),  # another annotation under id 1: renumbered
            ann(1, [SQUARE, [5, 5, 6, 6]]),  # an exact copy of the first: dropped
            {k: v for k, v in ann(0, [SQUARE]).items() if k != "id"},  # no id
        ]}
    before = json.dumps(doc)
    rep = repair_dataset(doc)
    assert json.dumps(doc) == before  # a copy was repaired
    assert not [p for p in rep.remaining if p.level == "error"] and not check_dataset(rep.doc)
    out = {a["id"]: a for a in rep.doc["annotations"]}
    assert sorted(out) == [1, 2, 3, 4, 5, 6, 7]
    assert out[1]["segmentation"] == [SQUARE] and out[2]["segmentation"] == [] and out[2]["bbox"] == [30, 20, 60, 60]
    for i in (3, 4, 5):
        assert out[i]["bbox"] == [30.0, 20.0, 60.0, 60.0]
    assert out[6]["note"] == 1 and out[7]["note"] == 0  # renumbered from the next free id, in order
    assert all(a["note"] == a["id"] for a in rep.doc["annotations"][:5])  # the others keep ids and keys
    text = "\n".join(str(p) for p in rep.fixes)
    for needle in ("annotation 1: dropped polygon 1 (4 numbers)", "annotation 2: dropped polygon 0 (5 numbers)",
                   "box-only", "annotation 3: bbox [30, 20, 0, 60]", "annotation 5: no bbox",
                   "renumbered 6", "exact copy", "annotation #7: no 'id': given id 7"):
        assert needle in text, needle
    assert len(rep.fixes) == 8 and rep.dropped == []


def test_unrepairable_annotations_are_kept_unless_dropping_is_asked():
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 100}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [ann(1, [SQUARE]), ann(2, [[30, 20, 1e9, 20, 90, 80]]), ann(3, [SQUARE], category_id=9),
                           ann(4, [SQUARE], iscrowd=2),
                           # no segmentation at all, and no usable box to keep: nothing to make one from
                           ann(5, "poly", bbox=(0, 0, 0, 0)),
                           # ids that cannot be ids (a list; true, which Python takes for 1)
                           ann(6, [SQUARE], image_id=[1]), ann(7, [SQUARE], category_id=True)]}
    rep = repair_dataset(doc)
    assert sorted(p.where for p in rep.remaining if p.level == "error") == [
        "annotation 2", "annotation 3", "annotation 4", "annotation 5", "annotation 5", "annotation 6",
        "annotation 7"]
    assert len(rep.doc["annotations"]) == 7 and not rep.fixes
    rep = repair_dataset(doc, drop_invalid=True)
    assert [a["id"] for a in rep.doc["annotations"]] == [1] and not rep.remaining
    assert [p.where for p in rep.dropped] == [f"annotation {i}" for i in range(2, 8)]
    assert "category_id 9" in str(rep.dropped[1])
    assert "image_id [1] is not in 'images'" in str(rep.dropped[4])


def test_rle_box_is_its_extent():
    from pycocotools import mask as mask_utils

    m = np.zeros((100, 120), np.uint8)
    m[10:30, 40:70] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 100}],
           "categories": [{"id": 1, "name": "thing"}], "annotations": [ann(1, rle, bbox=(0, 0, -1, 5))]}
    rep = repair_dataset(doc)
    assert rep.doc["annotations"][0]["bbox"] == [40.0, 10.0, 30.0, 20.0]


def test_validate_fix_through_the_cli(tmp_path):
    src, _ = dataset(tmp_path, [ann(1, [SQUARE, [5, 5, 6, 6]]), ann(2, [[5, 5, 6, 6]]),
                                ann(3, [SQUARE], bbox=(30, 20, 0, 60)), ann(4, [[30, 20, 1e9, 20, 90, 80]])],
                     width=None)
    out = tmp_path / "fixed.json"
    assert run("validate", src, "-o", out).exit_code == 2  # -o goes with --fix
    assert run("validate", src, "--fix").exit_code == 2  # --fix needs -o
    assert run("validate", src, "--fix", "-o", src).exit_code == 2  # never over the input
    r = run("validate", src, "--fix", "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert "--images reads missing image sizes" in r.output and "fixed   annotation 1: dropped polygon 1" in r.output
    r = run("validate", src, "--images", tmp_path, "--fix", "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert "fixed   image 1: width/height None/100: set to its file's 120x100" in r.output
    assert "error   annotation 4" in r.output and "--drop-invalid drops the annotations among them" in r.output
    r = run("validate", src, "--images", tmp_path, "--fix", "-o", out, "--drop-invalid")
    assert r.exit_code == 0, r.output
    assert "dropped annotation 4" in r.output and "3 fixes" not in r.output and "1 annotations dropped" in r.output
    fixed = json.loads(out.read_text())
    assert fixed["info"] == {"keep": "me"} and [a["id"] for a in fixed["annotations"]] == [1, 2, 3]
    assert run("validate", out, "--images", tmp_path).exit_code == 0
    coco = COCO(str(out))  # loads where users load it, every mask decodes
    assert [int(coco.annToMask(a).sum()) for a in coco.loadAnns(coco.getAnnIds()) if a["segmentation"]] == [3600, 3600]
    r = run("validate", src, "--images", tmp_path, "--fix", "-o", out, "--drop-invalid")
    assert r.exit_code == 1 and "exists" in r.output  # no silent replace
    w = tiny_weights(tmp_path / "w.pt")
    r = run("refine", out, "--images", tmp_path, "-o", tmp_path / "refined.json", "--weights", w, "--device", "cpu")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("bad", ['{"images": 3}', "[]"])
def test_fix_of_a_document_that_is_not_a_dataset_is_one_line(tmp_path, bad):
    (tmp_path / "bad.json").write_text(bad)
    r = run("validate", tmp_path / "bad.json", "--fix", "-o", tmp_path / "o.json")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o.json").exists()
