"""CLI conventions through click's runner: exit codes and one-line errors."""
import json

import cv2
import numpy as np
from click.testing import CliRunner

from refinemask_cli.cli import main


def test_help_and_version():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "weights" in r.output
    assert CliRunner().invoke(main, ["--version"]).exit_code == 0


def test_weights_info_missing_file_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["weights", "info", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not found" in lines[0] and "Traceback" not in r.output


def test_weights_info_garbage_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    r = CliRunner().invoke(main, ["weights", "info", str(tmp_path / "bad.pt")])
    assert r.exit_code == 1 and "bad.pt: not a PyTorch file" in r.output


def test_debug_shows_traceback(tmp_path):
    r = CliRunner().invoke(main, ["--debug", "weights", "info", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and r.exception is not None


def test_usage_error_exit_2():
    r = CliRunner().invoke(main, ["weights", "convert", "x.pth"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["weights", "convert", "x.pth", "-o", "y.pt", "--from", "caffe"])
    assert r.exit_code == 2


def table_value(output: str, key: str) -> str:
    """The text of a two-column rich table's row ``key``, its wrapped lines joined: the terminal's
    width (a COLUMNS set where the console was made, as on the GPU machine) decides where it wraps."""
    value, found = [], False
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]
        if len(cells) != 2:
            continue
        if found and cells[0]:
            break
        if found or cells[0] == key:
            found = True
            value.append(cells[1])
    return " ".join(value)


def test_weights_info_shows_how_detections_are_made(tmp_path):
    from .cocofix import tiny_weights

    path = tiny_weights(tmp_path / "t.pt", train_steps=0, box_vote_iou=0.6, mask_threshold=0.4, mask_scoring=True,
                        part_overlap=0.7, part_score_factor=0.5)
    r = CliRunner().invoke(main, ["weights", "info", str(path)])
    assert r.exit_code == 0, r.output
    line = table_value(r.output, "detections")
    assert "boxes voted at IoU 0.6" in line and "mask confidence" in line and "probability 0.4" in line
    assert "parts (>= 0.7 inside a better mask) scored x 0.5" in line and "coarse mask" not in line
    path = tiny_weights(tmp_path / "r.pt", train_steps=0, mask_prompt_threshold=0.3)
    line = table_value(CliRunner().invoke(main, ["weights", "info", str(path)]).output, "detections")
    assert "probability 0.5 (0.3 in refine for objects given a coarse mask)" in line, line


def test_brackets_in_names_and_messages_print_as_written(tmp_path):
    """rich reads "[cat]" as markup: file names and messages must not lose their brackets."""
    doc = {"images": [{"id": 1, "width": 8, "height": 8, "file_name": "a[cat].png"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "x"}]}
    src = tmp_path / "in[cat].json"
    src.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["validate", str(src)])
    assert r.exit_code == 0 and f"{src}: 1 images, 1 annotations" in r.output, r.output
    r = CliRunner().invoke(main, ["validate", str(src), "--images", str(tmp_path)])
    assert r.exit_code == 1 and "file a[cat].png not found in" in r.output, r.output


def test_a_missing_image_found_elsewhere_below_images_is_pointed_at(tmp_path):
    """--images one folder too high, or file names without the split folder their images sit in:
    the one line says where the file is and what to pass; several or no candidates, no guess."""
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    for folder, name in (("train", "a.png"), ("train", "both.png"), ("val", "both.png"), ("val", "b.png")):
        cv2.imwrite(str(tmp_path / "data" / folder / name), np.zeros((8, 8, 3), np.uint8))
    names = ["train/a.png", "test/b.png", "both.png", "gone.png"]
    doc = {"images": [{"id": i + 1, "width": 8, "height": 8, "file_name": n} for i, n in enumerate(names)],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    src = tmp_path / "d.json"
    src.write_text(json.dumps(doc))
    root = tmp_path / "data"
    r = CliRunner().invoke(main, ["validate", str(src), "--images", str(tmp_path)])
    assert r.exit_code == 1
    assert f"image 1: file train/a.png not found in {tmp_path} (it is at {root / 'train/a.png'}: pass --images {root})" \
        in r.output, r.output
    r = CliRunner().invoke(main, ["validate", str(src), "--images", str(root)])
    assert f"image 2: file test/b.png not found in {root} (a file of that name is at {root / 'val/b.png'}; file_name " \
           "must be the image's path relative to --images)" in r.output, r.output
    assert f"image 3: file both.png not found in {root}\n" in r.output  # two candidates: no guess
    assert f"image 4: file gone.png not found in {root}\n" in r.output
    # missing images of one base name in two folders (a camera or split per folder) crashed the
    # check with a KeyError traceback; each is named, and the one whose path fits gets the hint
    doc["images"] = [{"id": i + 1, "width": 8, "height": 8, "file_name": n}
                     for i, n in enumerate(["x/train/a.png", "y/train/a.png", "cam/a.png"])]
    src.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["validate", str(src), "--images", str(root)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    for i, name in enumerate(["x/train/a.png", "y/train/a.png", "cam/a.png"], 1):
        assert f"image {i}: file {name} not found in {root}\n" in r.output, r.output
    r = CliRunner().invoke(main, ["validate", str(src), "--images", str(root / "train")])
    assert "image 1: file x/train/a.png not found" in r.output and "image 3: file cam/a.png not found" in r.output


def test_env_reports_versions_devices_and_the_default_weights(tmp_path, monkeypatch):
    """`env`: what runs, the weights `refine`/`predict` would load (the same sha256 as `weights info`),
    exit 1 only where a command would fail; --json is one object with the same facts."""
    import torch

    from refinemask_cli.jobs.env import problems
    from refinemask_cli.weights.checkpoint import read_checkpoint, resolve_weights

    from .cocofix import tiny_weights

    w = tiny_weights(tmp_path / "tiny.pt", meta={"detector": "untrained"})
    monkeypatch.setenv("REFINEMASK_WEIGHTS", str(w))
    r = CliRunner().invoke(main, ["env"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert torch.__version__.split("+")[0] in text and "--device auto" in text
    sha = read_checkpoint(resolve_weights(None, "refine"))["sha256"]
    assert sha[:12] in text and "detector untrained" in text
    assert "predict's boxes are noise" in text  # predict would load it too
    r = CliRunner().invoke(main, ["env", "--json"])
    info = json.loads(r.output)
    assert r.exit_code == 0 and info["weights"]["refine"]["sha256"] == sha
    assert info["packages"]["torch"] == torch.__version__.split("+")[0] and info["device_auto"] in ("cpu", "cuda")
    assert any(p["level"] == "warning" for p in info["problems"])
    monkeypatch.setenv("REFINEMASK_WEIGHTS", str(tmp_path / "nope.pt"))
    r = CliRunner().invoke(main, ["env"])
    assert r.exit_code == 1 and "refine weights: REFINEMASK_WEIGHTS names" in " ".join(r.output.split())
    # two OpenCV wheels of different versions share one cv2: said; one missing altogether: an error
    info["packages"].update({"opencv-python": "4.9.0", "opencv-python-headless": "4.10.0"})
    assert any("share the cv2 module" in m for lv, m in problems(info) if lv == "warning")
    info["packages"].update({"opencv-python": None, "opencv-python-headless": None})
    assert any("OpenCV is not installed" in m for lv, m in problems(info) if lv == "error")
