"""Segmentation decoding, image reading (gray, RGBA, 16-bit, EXIF) and the COCO training dataset."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refinemask_cli.data.coco_dataset import CocoInstances
from refinemask_cli.geometry import segmentation_kind, segmentation_to_mask
from refinemask_cli.io.coco import CocoError
from refinemask_cli.io.images import (
    ImageReadError,
    looks_readable,
    read_image,
    read_image_as_recorded,
)

from .cocofix import exif_rotated_jpeg


def test_polygon_and_rles_decode_to_the_same_mask():
    poly = [[2.0, 2.0, 12.0, 2.0, 12.0, 8.0, 2.0, 8.0]]
    m = segmentation_to_mask(poly, 10, 16)
    assert m.dtype == bool and m.shape == (10, 16) and m[5, 7] and not m[0, 0]
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert np.array_equal(segmentation_to_mask({"size": rle["size"], "counts": rle["counts"].decode()}, 10, 16), m)
    flat = m.flatten(order="F").astype(np.uint8)
    runs, last, count = [], 0, 0
    for v in flat:
        if v != last:
            runs.append(count)
            count, last = 0, v
        count += 1
    runs.append(count)
    unc = {"size": [10, 16], "counts": runs}
    assert segmentation_kind(unc) == "uncompressed_rle"
    assert np.array_equal(segmentation_to_mask(unc, 10, 16), m)


@pytest.mark.parametrize("segm,msg", [
    ([[1.0, 2.0, 3.0, 4.0]], "coordinates"),
    ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], "coordinates"),
    ({"size": [5, 5], "counts": "abc"}, "does not match"),
])
def test_bad_segmentations(segm, msg):
    with pytest.raises(ValueError, match=msg):
        segmentation_to_mask(segm, 10, 16)


def test_read_image_variants(tmp_path):
    rgb = np.zeros((6, 9, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    out = read_image(tmp_path / "c.png")
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8 and out[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "g.png"), np.full((6, 9), 77, np.uint8))
    assert read_image(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]
    rgba = np.dstack([rgb[..., ::-1], np.full((6, 9), 10, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_image(tmp_path / "a.png").shape == (6, 9, 3)
    cv2.imwrite(str(tmp_path / "d.png"), np.full((6, 9), 65535, np.uint16))
    assert read_image(tmp_path / "d.png")[0, 0].tolist() == [255, 255, 255]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "none.jpg")


def test_read_image_of_floating_point_tiffs_and_of_more_pixels_than_opencv_decodes(tmp_path):
    """A float TIFF in [0, 1] read as all black (clipped, not scaled); a one-channel float TIFF was
    'not a readable image'; a PNG over OpenCV's pixel limit raised cv2.error, a traceback from
    every command."""
    import struct
    import zlib

    ramp = np.linspace(0, 1, 6 * 9, dtype=np.float32).reshape(6, 9)
    cv2.imwrite(str(tmp_path / "f.tiff"), np.dstack([ramp] * 3))
    out = read_image(tmp_path / "f.tiff")
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    cv2.imwrite(str(tmp_path / "g.tiff"), ramp * 400)  # one channel, beyond [0, 1]: clipped to 0..255
    out = read_image(tmp_path / "g.tiff")
    assert out.shape == (6, 9, 3) and out[-1, -1].tolist() == [255, 255, 255] and out[0, 1, 0] == int(400 / 53)
    cv2.imwrite(str(tmp_path / "i.tiff"), np.ones((6, 9), np.int32))  # integers are levels, never scaled
    assert read_image(tmp_path / "i.tiff")[0, 0].tolist() == [1, 1, 1]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 3.6 Gpx claimed, 100 bytes given
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match="huge.png: more pixels than OpenCV will decode .* OPENCV_IO_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "huge.png")


def test_looks_readable_checks_the_header_and_falls_back_to_decoding(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((6, 9, 3), np.uint8))
    (tmp_path / "text.jpg").write_bytes(b"not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    assert looks_readable(tmp_path / "ok.png") and not looks_readable(tmp_path / "text.jpg")
    assert not looks_readable(tmp_path / "none.png") and not looks_readable(tmp_path)
    assert looks_readable(tmp_path / "cut.png")  # a header check: only a full decode finds a cut file
    # where OpenCV cannot open a path itself (non-ASCII names on Windows), the file is decoded instead
    monkeypatch.setattr(cv2, "haveImageReader", lambda path: False)
    assert looks_readable(tmp_path / "ok.png") and not looks_readable(tmp_path / "text.jpg")


def test_read_image_applies_exif_orientation(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = 255  # the left half white as stored: the top half once rotated 90° clockwise
    exif_rotated_jpeg(tmp_path / "r.jpg", img, orientation=6)  # rotate 90° clockwise when shown
    shown = read_image(tmp_path / "r.jpg")
    assert shown.shape == (40, 20, 3) and shown[:20].mean() > 200 and shown[20:].mean() < 50
    assert read_image(tmp_path / "r.jpg", exif=False).shape == (20, 40, 3)
    # a record of the shown size reads it shown; of the stored size (a tool that ignored the tag drew
    # its annotations on that), as stored; of neither, as shown (callers name the mismatch)
    for (h, w), shape, stored in (((40, 20), (40, 20, 3), False), ((20, 40), (20, 40, 3), True),
                                  ((20, 41), (40, 20, 3), False)):
        image, as_stored = read_image_as_recorded(tmp_path / "r.jpg", h, w)
        assert image.shape == shape and as_stored is stored
    # training reads it in the record's frame too, and refuses a size neither frame has
    doc = {"images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 20}],
           "categories": [{"id": 1, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 0,
                            "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]}]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    image, _ = CocoInstances(tmp_path / "r.json", tmp_path, flip_prob=0.0)[0]
    assert tuple(image.shape) == (3, 20, 40) and float(image[:, :, :20].mean()) > 0.8  # the mask's half is white
    doc["images"][0]["width"] = 41
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(CocoError, match=r"image 1 \(r.jpg\): file is 20x40 but the JSON says 41x20"):
        CocoInstances(tmp_path / "r.json", tmp_path, flip_prob=0.0)[0]


def test_coco_dataset_targets(tmp_path):
    img = np.full((30, 40, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 9, "bbox": [2, 3, 10, 8], "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1,
             "segmentation": [[0, 0, 40, 0, 40, 30]]},
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    ds = CocoInstances(tmp_path / "a.json", tmp_path, flip_prob=0.0)
    image, target = ds[0]
    assert tuple(image.shape) == (3, 30, 40) and float(image.max()) <= 1.0
    assert target["labels"].tolist() == [1]  # dog is the second category; the crowd one is left out
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 11.0]]
    assert target["masks"].shape == (1, 30, 40) and int(target["masks"].sum()) == 80
    flipped = CocoInstances(tmp_path / "a.json", tmp_path, flip_prob=1.0)[0][1]
    assert flipped["boxes"].tolist() == [[28.0, 3.0, 38.0, 11.0]]
    assert int(flipped["masks"][0, 5, 30]) == 1 and int(flipped["masks"][0, 5, 5]) == 0


def _random_segmentations(rng, n):
    from pycocotools import mask as mask_utils

    for t in range(n):
        h, w = int(rng.integers(8, 90)), int(rng.integers(8, 110))
        k = int(rng.integers(3, 10))
        cx, cy = rng.uniform(-15, w + 15), rng.uniform(-15, h + 15)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.3, 40, k)
        poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).round(int(rng.integers(0, 3))).ravel().tolist()
        if t % 3 == 0:
            yield [poly, (np.asarray(poly) + 4).tolist()], h, w
        elif t % 3 == 1:
            yield [poly], h, w
        else:
            rle = mask_utils.encode(np.asfortranarray((rng.random((h, w)) > 0.8).astype(np.uint8)))
            yield {"size": [h, w], "counts": rle["counts"].decode()}, h, w


def test_crop_decoding_and_crop_rle_equal_the_full_image_path():
    from refinemask_cli.geometry import encode_rle
    from refinemask_cli.geometry.masks import segmentation_to_crop
    from refinemask_cli.predictor import InstanceMask

    rng = np.random.default_rng(0)
    for segm, h, w in _random_segmentations(rng, 300):
        full = segmentation_to_mask(segm, h, w)
        ref = InstanceMask.from_full(full)
        x0, y0, crop = segmentation_to_crop(segm, h, w)
        assert (x0, y0) == (ref.x0, ref.y0) or ref.mask.size == 0
        assert crop.shape == ref.mask.shape and (crop == ref.mask).all()
        assert encode_rle(crop, (x0, y0), (h, w)) == encode_rle(full)


def test_crop_decoding_of_a_small_object_on_a_huge_image():
    from refinemask_cli.geometry.masks import segmentation_to_crop

    x0, y0, crop = segmentation_to_crop([[5000.0, 3000.0, 5010.0, 3000.0, 5010.0, 3010.0, 5000.0, 3010.0]], 4000, 6000)
    assert (x0, y0) == (5000, 3000) and crop.shape == (10, 10) and crop.all()


@pytest.mark.parametrize("doc", [
    {"images": [{"id": i, "file_name": f"é{i}.jpg"} for i in range(7)], "annotations": [{"id": i} for i in range(23)],
     "categories": [], "info": {"x": [1, 2]}},
    [{"score": 0.5, "id": i} for i in range(11)], [], {}, {"annotations": []}, 3,
])
def test_chunked_json_writing_equals_one_string(doc, tmp_path):
    from refinemask_cli.io.coco import dumps, iter_dumps, write_json_atomic

    assert "".join(iter_dumps(doc, chunk=5)) == dumps(doc)
    write_json_atomic(doc, tmp_path / "d.json")
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == dumps(doc)


@pytest.mark.parametrize("segm, message", [
    ([[0, 0, 1e12, 0, 1e12, 1e12, 0, 1e12]], "outside the 50x40 image"),
    ([[0, 0, -1e15, 0, -1e15, -1e15, 0, -1e15]], "outside the 50x40 image"),
    ({"size": [40, 50], "counts": "zzzzzzzz"}, "sum to 170, expected 2000"),
    ({"size": [40, 50], "counts": "\u00ff\u00ff"}, "negative run lengths"),
    ({"size": [40, 50], "counts": "P"}, "not a valid compressed RLE"),  # found by the fuzzer: truncated
    ({"size": [40, 50], "counts": [10, "a"]}, "non-negative integers"),
    ({"size": [40, 50], "counts": [10, -5, 1995]}, "non-negative integers"),
    ({"size": [40, 50], "counts": 5}, "must be a string"),
])
def test_hostile_segmentations_stop_before_native_code(segm, message):
    """Values that crashed pycocotools (segfault, memory exhaustion, reads past its buffer) are
    refused by the one check every decoding goes through, with the reason."""
    from refinemask_cli.geometry.masks import segmentation_problem, segmentation_to_crop
    from refinemask_cli.io.coco import check_segmentation

    assert message in segmentation_problem(segm, 40, 50)
    assert check_segmentation(segm, 40, 50) == segmentation_problem(segm, 40, 50)
    for decode in (segmentation_to_mask, segmentation_to_crop):
        with pytest.raises(ValueError, match=message.split(" ")[0]):
            decode(segm, 40, 50)


def test_polygons_somewhat_outside_the_image_are_still_fine():
    from refinemask_cli.geometry.masks import segmentation_problem

    assert segmentation_problem([[-900, -900, 1040, 0, 50, 1030]], 40, 50) is None
    assert segmentation_to_mask([[-900, -900, 1040, 0, 50, 1030]], 40, 50).any()


def test_image_path_takes_backslashes_as_separators_only_where_the_name_as_written_is_no_file(tmp_path):
    from refinemask_cli.io.images import image_path

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    assert image_path(tmp_path, "sub\\a.png") == tmp_path / "sub" / "a.png"
    (tmp_path / "sub\\a.png").write_bytes(b"y")  # on POSIX a backslash may be part of a file's name
    assert image_path(tmp_path, "sub\\a.png") == tmp_path / "sub\\a.png"
    assert image_path(tmp_path, "sub\\b.png") == tmp_path / "sub\\b.png"  # neither: the name as written
    assert image_path(tmp_path, "sub/a.png") == tmp_path / "sub" / "a.png"
