"""Mask → polygon/RLE: round trips through pycocotools, parts, holes, simplification, borders."""
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from refinemask_cli.geometry import (
    encode_rle,
    mask_bbox,
    mask_to_outline,
    segmentation_to_mask,
)


def decode(polys, h, w):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)


def test_rectangle_is_exact_with_four_corners():
    m = np.zeros((10, 12), bool)
    m[2:6, 3:9] = True
    out = mask_to_outline(m)
    assert out.holes == 0 and len(out.polygons) == 1 and len(out.polygons[0]) == 8
    xs, ys = out.polygons[0][0::2], out.polygons[0][1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (3.25, 8.75, 2.25, 5.75)  # a quarter pixel inside the edges
    assert np.array_equal(decode(out.polygons, 10, 12), m)


def test_round_trip_random_blobs_is_near_exact():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = np.zeros((90, 120), np.uint8)
        for _ in range(3):
            cv2.ellipse(m, (int(rng.integers(10, 110)), int(rng.integers(10, 80))),
                        (int(rng.integers(4, 30)), int(rng.integers(4, 25))), float(rng.integers(0, 180)), 0, 360, 1, -1)
        m = m.astype(bool)
        out = mask_to_outline(m)
        back = decode(out.polygons, *m.shape)
        assert (back != m).sum() <= 3
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in out.polygons)


def test_parts_and_holes():
    m = np.zeros((20, 30), bool)
    m[2:8, 2:8] = True
    m[10:18, 15:28] = True
    m[12:16, 18:22] = False  # a hole in the second part
    out = mask_to_outline(m)
    assert len(out.polygons) == 2 and out.holes == 1
    # the polygons fill the hole; callers must use RLE for such masks
    assert decode(out.polygons, 20, 30)[13, 19]
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(segmentation_to_mask(rle, 20, 30), m)


def test_border_object_closes_and_offset_applies():
    m = np.ones((5, 5), bool)
    out = mask_to_outline(m, offset=(10, 20))
    xs, ys = out.polygons[0][0::2], out.polygons[0][1::2]
    assert min(xs) == 10.25 and max(ys) == 24.75
    assert mask_to_outline(np.zeros((4, 4), bool)).polygons == []


def test_simplify_reduces_vertices():
    m = np.zeros((100, 100), np.uint8)
    cv2.circle(m, (50, 50), 40, 1, -1)
    full = mask_to_outline(m.astype(bool))
    simple = mask_to_outline(m.astype(bool), simplify=1.0)
    assert len(simple.polygons[0]) < len(full.polygons[0]) / 2
    back = decode(simple.polygons, 100, 100)
    iou = (back & m.astype(bool)).sum() / (back | m.astype(bool)).sum()
    assert iou > 0.97


def test_mask_bbox():
    m = np.zeros((10, 10), bool)
    m[3:5, 2:9] = True
    assert mask_bbox(m) == [2.0, 3.0, 7.0, 2.0]
    assert mask_bbox(m, offset=(5, 1)) == [7.0, 4.0, 7.0, 2.0]
