"""Property-based fuzzing of everything that reads a user's COCO document, run by ``test_fuzz.py``
in a subprocess so that a crash in native code (pycocotools, OpenCV) fails the test instead of the
whole run. Not collected on its own (the name does not start with ``test_``).

Documents are valid, nearly valid and hostile: wrong types, NaN/inf, huge and negative numbers,
empty and giant lists, wrong RLE sizes, corrupt RLE strings, unicode and ``..`` in file names,
duplicate ids. The properties: ``check_dataset`` never raises; where it finds no error, every
segmentation decodes to a mask inside its image, refine's own validation agrees and every exporter
keeps the ids; where it finds one, refine's validation refuses with one line naming it; the weights
loader refuses garbage files with a reason.

    FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz_documents.py -q -p no:cacheprovider
"""
import math
import os

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
ids = st.one_of(st.integers(1, 4), st.sampled_from(["1", 1.0, None, True, -1, 2**70]))


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
