"""Property-based fuzzing of everything that reads a user's COCO document, run by ``test_fuzz.py``
in a subprocess so that a crash in native code (pycocotools, OpenCV) fails the test instead of the
whole run. Not collected on its own (the name does not start with ``test_``).

Documents are valid, nearly valid and hostile: wrong types, NaN/inf, huge and negative numbers,
empty and giant lists, wrong RLE sizes, corrupt RLE strings, unicode and ``..`` in file names,
duplicate ids; and LabelMe folders, YOLO-seg datasets and detectors' results lists built the same
way. The properties: ``check_dataset`` never raises; where it finds no error, every
segmentation decodes to a mask inside its image, refine's own validation agrees and every exporter
keeps the ids; where it finds one, refine's validation refuses with one line naming it; repair never
raises and leaves exactly what the checks still find; LabelMe and YOLO inputs are read into documents
the checks pass or refused in one line; a results list is scored (and read by refine) exactly when
its check passes, and ``evaluate`` of any predictions file scores it or names the file in one line;
validate, export, refine and train through the CLI finish or refuse in one line naming the input;
the weights loader refuses garbage files with a reason.

    FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz_documents.py -q -p no:cacheprovider
"""
import base64
import json
import math
import os

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from refinemask_cli.geometry.masks import segmentation_to_crop, segmentation_to_mask
from refinemask_cli.io.coco import CocoError, check_dataset, first_error
from refinemask_cli.jobs import refine as job
from refinemask_cli.weights.checkpoint import WeightsError, read_checkpoint

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
H, W = 24, 30

numbers = st.one_of(
    st.integers(-5, W + 5), st.floats(-5, W + 5, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e12, -1e15, 2**63, -(2**63), 0, -0.0, 1e-300]),
    st.booleans(), st.text(max_size=3), st.none(),
)
polygon = st.lists(numbers, min_size=0, max_size=14)


def valid_rle(seed: int, h=H, w=W) -> dict:
    m = (np.random.default_rng(seed).random((h, w)) > 0.7).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode()}


segmentation = st.one_of(
    st.lists(polygon, min_size=0, max_size=3),
    st.integers(0, 1000).map(valid_rle),
    st.builds(lambda s, size: {**valid_rle(s), "size": size}, st.integers(0, 99),
              st.sampled_from([[H, W], [W, H], [H + 1, W], [H], "24x30", [H, W, 1], [-H, -W]])),
    st.builds(lambda text: {"size": [H, W], "counts": text}, st.text(max_size=20)),
    st.builds(lambda counts: {"size": [H, W], "counts": counts},
              st.lists(st.one_of(st.integers(-50, 400), st.just(H * W), st.floats(allow_nan=True)), max_size=8)),
    st.sampled_from([None, [], {}, "poly", 3, {"counts": "x"}, [[]], [["a", "b", "c", "d", "e", "f"]]]),
)
bbox = st.one_of(st.lists(numbers, min_size=0, max_size=5), st.none(), st.text(max_size=4))
ids = st.one_of(st.integers(1, 4), st.sampled_from(["1", 1.0, None, True, -1, 2**70, [1], {"id": 1}]))


@st.composite
def documents(draw):
    n_images = draw(st.integers(0, 3))
    images = []
    for i in range(n_images):
        images.append({"id": draw(st.one_of(st.just(i + 1), ids)),
                       "file_name": draw(st.sampled_from(["a.png", "../a.png", "/etc/a.png", "é/ü.png", "", "a.png\x00"])),
                       "width": draw(st.one_of(st.just(W), st.sampled_from([0, -1, 30.0, "30", None, 10**9]))),
                       "height": draw(st.one_of(st.just(H), st.sampled_from([0, -1, 24.0, "24", None])))})
    anns = []
    for k in range(draw(st.integers(0, 5))):
        ann = {"id": draw(st.one_of(st.just(100 + k), ids)), "image_id": draw(ids), "category_id": draw(ids)}
        for key, strategy in (("bbox", bbox), ("segmentation", segmentation),
                              ("iscrowd", st.sampled_from([0, 1, 2, "0", None, True]))):
            if draw(st.booleans()):
                ann[key] = draw(strategy)
        anns.append(ann)
    cats = [{"id": c, "name": f"c{c}"} for c in draw(st.lists(ids, max_size=3))]
    return {"images": images, "annotations": anns, "categories": cats}


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents())
def test_documents_are_checked_or_refused(doc):
    problems = check_dataset(doc)  # never raises
    error = first_error(problems)
    if error is None:
        per_image = job.validate_for_refine(doc, None, job.RefineOptions())  # agrees: no error
        images = {im["id"]: im for im in doc["images"]}
        for anns in per_image.values():
            for ann in anns:
                im = images[ann["image_id"]]
                if job.segmentation_kind_safe(ann.get("segmentation")) in ("none", "invalid"):
                    continue
                x0, y0, crop = segmentation_to_crop(ann["segmentation"], im["height"], im["width"])
                assert 0 <= x0 and 0 <= y0 and x0 + crop.shape[1] <= im["width"] and y0 + crop.shape[0] <= im["height"]
                assert crop.sum() == segmentation_to_mask(ann["segmentation"], im["height"], im["width"]).sum()
    else:
        try:
            job.validate_for_refine(doc, None, job.RefineOptions())
        except CocoError as e:
            assert "\n" not in str(e) and str(error) in str(e)
        else:
            raise AssertionError(f"refine accepted a document validate rejects: {error}")


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents())
def test_export_of_a_checked_document_never_crashes(doc):
    """Every exporter on documents the checks pass: the same ids out, or one clear error."""
    from refinemask_cli.jobs import formats

    if first_error(check_dataset(doc)) is not None:
        return
    try:
        results, _ = formats.to_coco_results(doc)
        polys, _ = formats.to_polygon_coco(doc)
        labels, names, _ = formats.to_yolo_seg(doc)
        pages, _ = formats.to_labelme(doc, {im["id"]: "x.png" for im in doc["images"]})
    except (CocoError, ValueError) as e:
        assert "\n" not in str(e)
        return
    assert [a["id"] for a in polys["annotations"]] == [a["id"] for a in doc["annotations"]]
    assert set(labels) <= {im["id"] for im in doc["images"]} and set(pages) <= {im["id"] for im in doc["images"]}
    assert len(results) <= len(doc["annotations"])


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(segmentation, st.integers(1, 40), st.integers(1, 40))
def test_segmentations_decode_or_say_why(segm, h, w):
    from refinemask_cli.io.coco import check_segmentation

    try:
        reason = check_segmentation(segm, h, w)
    except Exception as e:  # pragma: no cover - the property
        raise AssertionError(f"the check itself raised {e!r}") from None
    if reason is None and job.segmentation_kind_safe(segm) not in ("none", "invalid"):
        m = segmentation_to_mask(segm, h, w)
        assert m.shape == (h, w)
    elif reason is not None:
        try:
            segmentation_to_mask(segm, h, w)
        except ValueError:
            pass
        else:
            raise AssertionError(f"decoded a segmentation the check refuses: {reason}")


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents(), st.booleans())
def test_repair_never_raises_and_says_what_is_left(doc, drop_invalid):
    from refinemask_cli.io.repair import repair_dataset

    before = json.dumps(doc, sort_keys=True, default=str)
    rep = repair_dataset(doc, drop_invalid=drop_invalid)
    assert json.dumps(doc, sort_keys=True, default=str) == before  # the input is never changed
    assert [str(p) for p in rep.remaining] == [str(p) for p in check_dataset(rep.doc)]
    if drop_invalid:  # every annotation still in error was dropped, and named
        assert not [p for p in rep.remaining if p.level == "error" and p.where.startswith("annotation ")]


# -- results lists (a detector's output, read against the dataset its ids refer to) -------------
GT = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                 {"id": 2, "file_name": "b.png", "width": W, "height": H}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 2, 10, 10], "area": 100,
                       "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
                      {"id": 2, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 30, 24], "area": 200,
                       "segmentation": valid_rle(3)}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
result = st.fixed_dictionaries({}, optional={"image_id": ids, "category_id": ids, "score": numbers, "bbox": bbox,
                                             "segmentation": segmentation, "id": ids})
results_lists = st.one_of(st.lists(st.one_of(result, st.sampled_from([None, 3, "x", []])), max_size=4),
                          st.sampled_from([{}, None, "x"]))


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(results_lists, st.booleans())
def test_results_lists_are_scored_or_refused(results, class_agnostic):
    """refine (results_as_dataset) and evaluate (evaluate_detections) read what check_results
    passes and refuse the rest with its one line."""
    from refinemask_cli.engine.evaluate import evaluate_detections
    from refinemask_cli.io.coco import check_results
    from refinemask_cli.jobs.formats import results_as_dataset

    error = first_error(check_results(results, GT, any_category=class_agnostic))  # never raises
    try:
        scores = evaluate_detections(GT, results, class_agnostic=class_agnostic)
    except CocoError as e:
        assert error is not None and "\n" not in str(e)
    else:
        assert error is None
        assert all(-1.0 <= v <= 1.0 for k, v in scores.items() if k != "detections")
    try:
        doc = results_as_dataset(results, GT)
    except CocoError as e:
        assert "\n" not in str(e)
    else:
        assert first_error(check_dataset(doc)) is None and len(doc["annotations"]) == len(results)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(documents(), results_lists, st.lists(result, max_size=3).map(lambda anns: {**GT, "annotations": anns})),
       st.sampled_from([(), ("--by-id",), ("--class-agnostic",), ("--by-id", "--ignore", "segmentation"),
                        ("--by-id", "--ignore", "bbox")]))
def test_evaluate_scores_or_names_the_file(tmp_path_factory, pred, flags):
    """``refinemask evaluate`` of any predictions file against a dataset: scores (exit 0), or one
    line naming one of the two files (exit 1), never a Python error."""
    from click.testing import CliRunner

    from refinemask_cli.cli import main

    folder = tmp_path_factory.mktemp("ev")
    (folder / "gt.json").write_text(json.dumps(GT))
    (folder / "p.json").write_text(json.dumps(pred))
    r = CliRunner().invoke(main, ["evaluate", str(folder / "gt.json"), str(folder / "p.json"), *flags])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code == 1:
        errors = [line for line in r.output.strip().splitlines() if not line.startswith("warning")]
        assert len(errors) == 1 and ("p.json" in errors[0] or "gt.json" in errors[0]), r.output
    else:
        assert r.exit_code == 0, r.output


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(documents(), results_lists), st.sampled_from(["validate", "fix", "export", "refine", "train"]),
       st.sampled_from(["coco", "coco-results", "labelme", "yolo-seg"]), st.booleans())
def test_commands_run_or_refuse_in_one_line_naming_the_input(tmp_path_factory, doc, command, fmt, like):
    """Each command that reads a COCO file, through the CLI, on fuzzed documents (and results lists,
    with or without --like): done, or refused with one error line naming the file or the entry
    (validate lists every problem, so only its exit is checked), never a Python error."""
    from click.testing import CliRunner

    from refinemask_cli.cli import main

    from .cocofix import tiny_weights

    d = tmp_path_factory.mktemp("cmd")
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(d / name), np.full((H, W, 3), 90, np.uint8))
    (d / "gt.json").write_text(json.dumps(GT))
    (d / "in.json").write_text(json.dumps(doc))
    (d / "c.toml").write_text("num_workers = 0\ncheckpoint_every = 1000\n")
    weights = str(_tiny_weights(tiny_weights))
    likes = ["--like", str(d / "gt.json")] if like else []
    folder = fmt in ("labelme", "yolo-seg")
    inp, images = str(d / "in.json"), ["--images", str(d)]
    args = {"validate": ["validate", inp, *images, *likes],
            "fix": ["validate", inp, *images, "--fix", "-o", str(d / "out.json"), *(["--drop-invalid"] if like else [])],
            "export": ["export", inp, "--to", fmt, *images, "-o", str(d / ("out" if folder else "out.json")), *likes],
            "refine": ["refine", inp, *images, "-o", str(d / ("out" if folder and not like else "out.json")),
                       "--device", "cpu", "--no-flip", "--weights", weights, *likes,
                       *(["--format", fmt] if folder and not like else [])],
            "train": ["train", "--train-json", inp, *images, "--out", str(d / "run"), "--iters", "1", "--batch-size", "1",
                      "--device", "cpu", "--init", weights, "--config", str(d / "c.toml"),
                      *(["--partly-labelled"] if like else [])]}[command]
    r = CliRunner().invoke(main, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 1, 2), r.output
    if r.exit_code == 1 and command not in ("validate", "fix"):
        errors = [line for line in r.output.strip().splitlines() if line.startswith("error")]
        assert len(errors) == 1, r.output
        assert any(k in errors[0] for k in ("in.json", "gt.json", "image ", "annotation", "result", "category")), errors


_WEIGHTS: list = []


def _tiny_weights(make):
    """One untrained tiny checkpoint for every example (made on first use)."""
    if not _WEIGHTS:
        import tempfile
        from pathlib import Path

        _WEIGHTS.append(make(Path(tempfile.mkdtemp()) / "w.pt", train_steps=0))
    return _WEIGHTS[0]


# -- LabelMe folders and YOLO-seg datasets, read into COCO ------------------------------------
def _png(mask: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", mask.astype(np.uint8) * 255)[1].tobytes()).decode()


MASK_PNG = _png(np.random.default_rng(0).random((5, 7)) > 0.5)
pairs = st.lists(st.tuples(st.integers(-40, 70), st.integers(-40, 70)).map(list), max_size=6)
points = st.one_of(pairs, pairs, st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)).map(list), max_size=5),
                   st.lists(st.one_of(st.lists(numbers, max_size=3), numbers), max_size=6),
                   st.sampled_from([None, "x", {}, 5]))
labelme_shape = st.fixed_dictionaries({}, optional={
    "label": st.one_of(st.text(max_size=3), st.sampled_from([None, 1, ["a"]])),
    "points": points,
    "shape_type": st.sampled_from(["polygon", "rectangle", "mask", "circle", "line", "point", None, 3, "", ["x"]]),
    "group_id": st.sampled_from([None, 1, 2, "a", 1.5, True, [1], {"a": 1}]),
    "mask": st.sampled_from([MASK_PNG, "", None, 7, "notb64!", base64.b64encode(b"xx").decode()]),
    "score": st.sampled_from([0.5, None, "x", math.nan, 2]),
})
labelme_file = st.fixed_dictionaries(
    {"shapes": st.one_of(st.lists(labelme_shape, max_size=4), st.sampled_from([None, {}, "x"]))},
    optional={"imagePath": st.sampled_from(["a.png", "../a.png", "", None, 3, "b.png", "sub\\a.png"]),
              "imageHeight": st.sampled_from([H, 0, -1, "24", None, 24.0, 10**6]),
              "imageWidth": st.sampled_from([W, 0, -1, "30", None, 30.0]),
              "imageData": st.sampled_from([None, "", "xx", MASK_PNG, 5])})
yolo_token = st.one_of(st.floats(-0.2, 1.2), st.integers(-1, 3),
                       st.sampled_from(["nan", "inf", "x", "1e400", "-0", "0.5"]))
yolo_line = st.one_of(st.lists(yolo_token, max_size=10).map(lambda v: " ".join(map(str, v))),
                      st.lists(st.floats(0, 1), min_size=4, max_size=10).map(lambda v: "0 " + " ".join(map(str, v))),
                      st.sampled_from(["", " ", "\t0 0.5 0.5 0.2 0.2", "1.0 0.5 0.5 0.2 0.2", "0 0.5 0.5 0 0"]))
yolo_yaml = st.fixed_dictionaries({}, optional={
    "names": st.one_of(st.lists(st.one_of(st.text(max_size=3), st.none(), st.integers()), max_size=3),
                       st.dictionaries(st.one_of(st.integers(-1, 3), st.sampled_from(["0", "1", "a"])),
                                       st.text(max_size=2), max_size=3),
                       st.sampled_from([None, "abc", 3])),
    "nc": st.sampled_from([2, "2", None, -1, 0]),
    "train": st.sampled_from(["images/train", "images", ["images/train", "images/val"], "nope", "list.txt", None, 3, ""]),
    "val": st.sampled_from(["images/val", None, "images/train"]),
    "path": st.sampled_from([None, ".", "..", "sub", "", 5]),
})


def _read_or_refused(folder):
    """The document read from ``folder`` (checked: no errors), or None where it was refused in one line."""
    from refinemask_cli.io.sources import load_annotations

    try:
        doc, _, _ = load_annotations(folder, [])
    except CocoError as e:
        assert "\n" not in str(e)
        return None
    problem = first_error(check_dataset(doc))
    assert problem is None, f"read a document the checks refuse: {problem}"
    return doc


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(labelme_file, min_size=1, max_size=2))
def test_labelme_folders_are_read_or_refused(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("lm")
    (folder / "sub").mkdir()
    for image in (folder / "a.png", folder / "sub" / "a.png"):
        cv2.imwrite(str(image), np.zeros((H, W, 3), np.uint8))
    for k, raw in enumerate(files):
        (folder / f"f{k}.json").write_text(json.dumps(raw))
    doc = _read_or_refused(folder)
    if doc is not None:
        assert len(doc["images"]) == len(files)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(yolo_yaml, st.lists(st.lists(yolo_line, max_size=4).map("\n".join), min_size=1, max_size=2), st.booleans())
def test_yolo_datasets_are_read_or_refused(tmp_path_factory, data, label_texts, not_utf8):
    import yaml

    from refinemask_cli.io.sources import dataset_categories

    root = tmp_path_factory.mktemp("yolo")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for k, text in enumerate(label_texts):
        cv2.imwrite(str(root / "images" / "train" / f"{k}.png"), np.zeros((H, W, 3), np.uint8))
        label = root / "labels" / "train" / f"{k}.txt"
        label.write_bytes(b"\xff\xfe\x00\x81") if not_utf8 and k == 0 else label.write_text(text)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    _read_or_refused(root)
    try:
        dataset_categories(root)
    except CocoError as e:
        assert "\n" not in str(e)


@settings(max_examples=max(20, EXAMPLES // 10), derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2000))
def test_weights_loader_refuses_garbage_with_a_reason(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("w") / "w.pt"
    path.write_bytes(blob)
    try:
        read_checkpoint(path)
    except WeightsError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("garbage loaded as a checkpoint")
