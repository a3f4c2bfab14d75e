"""The paired bootstrap that compares two weights on the same held-back images (benchmarks/compare_weights.py)."""
import numpy as np
import pytest

from refinemask_cli.engine.bootstrap import (
    draws,
    mean_differences,
    resampled,
    statistic_differences,
)
from refinemask_cli.engine.evaluate import evaluate_detections
from refinemask_cli.geometry import encode_rle


def test_draws_are_fixed_by_the_seed_and_only_hold_the_given_ids():
    a, b = draws([3, 7, 9], 50, seed=1), draws([3, 7, 9], 50, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(len(x) == 3 and set(x) <= {3, 7, 9} for x in a)
    assert any(len(set(x)) < 3 for x in a)  # with replacement
    with pytest.raises(ValueError):
        draws([], 5)


def test_a_uniform_gain_is_higher_in_every_draw_and_its_interval_is_the_gain():
    image_of = [1, 1, 2, 3, 3, 3]
    base = np.array([[0.5, 0.2], [0.6, 0.3], [0.7, 0.4], [0.8, 0.5], [0.9, 0.6], [0.4, 0.1]])
    iou, biou = mean_differences(image_of, base, base + [0.1, 0.02], resamples=200)
    assert iou.higher == 200 and iou.resamples == 200
    assert iou.diff == pytest.approx(0.1) and iou.low == pytest.approx(0.1) and iou.high == pytest.approx(0.1)
    assert biou.diff == pytest.approx(0.02)
    assert iou.base == pytest.approx(base[:, 0].mean())
    same = mean_differences(image_of, base[:, 0], base[:, 0], resamples=50)
    assert len(same) == 1 and same[0].higher == 0 and same[0].low == same[0].high == 0.0


def test_a_gain_on_one_image_only_is_uncertain():
    """New is better on image 1 and worse on image 2: the interval spans zero, and the draws that
    favour it are about half."""
    image_of = [1, 2, 3, 4]
    base = np.array([0.5, 0.5, 0.5, 0.5])
    new = np.array([0.9, 0.2, 0.5, 0.5])
    (d,) = mean_differences(image_of, base, new, resamples=1000, seed=3)
    assert d.diff == pytest.approx(0.025)
    assert d.low < 0 < d.high
    assert 300 < d.higher < 700


def test_scores_of_different_objects_are_refused():
    with pytest.raises(ValueError, match="different objects"):
        mean_differences([1, 2], np.zeros(2), np.zeros(3), resamples=5)


def _gt_and_results():
    def square(x0, y0, x1, y1):
        m = np.zeros((40, 40), np.uint8)
        m[y0:y1, x0:x1] = 1
        return m

    gt = {"images": [{"id": i, "width": 40, "height": 40, "file_name": f"{i}.jpg"} for i in (10, 20)],
          "categories": [{"id": 1, "name": "object"}], "annotations": []}
    good, bad = [], []
    for k, (img, box) in enumerate([(10, (2, 2, 20, 20)), (20, (5, 5, 30, 30)), (20, (30, 30, 39, 39))], 1):
        m = square(*box)
        gt["annotations"].append({"id": k, "image_id": img, "category_id": 1, "iscrowd": 0, "area": float(m.sum()),
                                  "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                  "segmentation": encode_rle(m)})
        good.append({"image_id": img, "category_id": 1, "score": 0.9, "segmentation": encode_rle(m)})
        bad.append({"image_id": img, "category_id": 1, "score": 0.9,
                    "segmentation": encode_rle(np.roll(m, 8, axis=1))})  # shifted: IoU < 0.5 for the small ones
    return gt, good, bad


def test_resampled_repeats_images_as_new_ones():
    gt, good, _ = _gt_and_results()
    g, r = resampled(gt, [20, 20, 10], good)
    assert [im["id"] for im in g["images"]] == [1, 2, 3]
    assert [a["image_id"] for a in g["annotations"]] == [1, 1, 2, 2, 3]
    assert len({a["id"] for a in g["annotations"]}) == 5
    assert sorted(x["image_id"] for x in r) == [1, 1, 2, 2, 3]
    assert gt["images"][0]["id"] == 10 and good[0]["image_id"] == 10  # the inputs are not changed


def test_mask_ap_of_perfect_against_shifted_masks_is_higher_in_every_draw():
    gt, good, bad = _gt_and_results()

    def ap(g, results):
        r = evaluate_detections(g, results, kinds=("segm",))
        assert "boundary_AP" not in r
        return r["segm_AP"], r["segm_AP50"]

    d_ap, d_ap50 = statistic_differences(gt, bad, good, ap, resamples=20)
    assert d_ap.new == pytest.approx(1.0) and d_ap.base < 0.5
    assert d_ap.higher == 20 and d_ap.low > 0
    assert d_ap50.new == pytest.approx(1.0)


def test_scoring_detections_leaves_the_results_as_they_were():
    """loadRes writes ids, areas and (numpy) boxes into the records it is given: scoring the same list
    twice, as each resample does, must see the caller's records unchanged."""
    gt, good, _ = _gt_and_results()
    before = [dict(r) for r in good]
    first = evaluate_detections(gt, good, kinds=("segm", "bbox"))
    assert good == before
    assert evaluate_detections(gt, good, kinds=("segm", "bbox")) == first
