"""`refinemask refine` through click's runner: round trip, nothing lost, bad input, resume."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO

from refinemask_cli.cli import main
from refinemask_cli.io.coco import read_coco
from refinemask_cli.jobs import refine as job
from refinemask_cli.predictor import Predictor
from refinemask_cli.weights import load_model

from .cocofix import make_dataset, tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture()
def data(tmp_path):
    return make_dataset(tmp_path), tmp_path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_round_trip_keeps_everything(weights, data):
    src, root = data
    out, report = root / "refined.json", root / "report.csv"
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--device", "cpu",
            "--report", report, "--vis-dir", root / "vis")
    assert r.exit_code == 0, r.output
    assert "refinemask refine" in r.output
    before, after = json.loads(src.read_text()), json.loads(out.read_text())
    assert list(after) == list(before)
    for key in ("info", "licenses", "images", "categories", "my_key"):
        assert after[key] == before[key]
    assert [a["id"] for a in after["annotations"]] == [a["id"] for a in before["annotations"]]
    for a, b in zip(after["annotations"], before["annotations"]):
        assert (a["image_id"], a["category_id"], a["iscrowd"]) == (b["image_id"], b["category_id"], b["iscrowd"])
        changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert changed <= {"segmentation", "area", "bbox"}
        if b["iscrowd"]:
            assert a == b
        else:
            assert "segmentation" in a and list(a)[: len(b)] == list(b)
    gt = COCO(str(out))
    assert len(gt.getAnnIds()) == len(before["annotations"])
    res = gt.loadRes([{**a, "score": 1.0} for a in after["annotations"] if not a["iscrowd"]])
    assert len(res.getAnnIds()) == 6
    rows = report.read_text().splitlines()
    assert rows[0].startswith("annotation_id,image_id,category_id,prompt,iou_input_output")
    assert len(rows) == 1 + 6
    assert {r.split(",")[3] for r in rows[1:]} == {"box", "mask"}
    assert len(list((root / "vis").glob("*.png"))) == 2


def test_prompt_box_and_rle_output(weights, data):
    src, root = data
    out = root / "o.json"
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--prompt", "box",
            "--output-format", "rle", "--report", root / "r.csv")
    assert r.exit_code == 0, r.output
    anns = [a for a in json.loads(out.read_text())["annotations"] if not a["iscrowd"]]
    assert all(isinstance(a["segmentation"], dict) for a in anns if "segmentation" in a)
    assert "mask" not in (root / "r.csv").read_text().split("\n", 1)[1]


def test_min_agreement_keeps_input_and_flags(weights, data):
    src, root = data
    out = root / "o.json"
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--min-agreement", "1.0",
            "--report", root / "r.csv")
    assert r.exit_code == 0, r.output
    before = {a["id"]: a for a in json.loads(src.read_text())["annotations"]}
    after = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    rows = [line.split(",") for line in (root / "r.csv").read_text().splitlines()[1:]]
    flagged = [int(r[0]) for r in rows if "low-agreement:kept-input" in r[-1]]
    assert flagged, "an IoU of 1.0 is required, so some mask must be kept"
    for ann_id in flagged:
        assert after[ann_id] == before[ann_id]
    for r in rows:  # anything not flagged agreed perfectly with its coarse mask (or was a box prompt)
        if int(r[0]) not in flagged and r[3] == "mask":
            assert float(r[4]) == 1.0


def test_refuses_to_overwrite(weights, data):
    src, root = data
    out = root / "o.json"
    out.write_text("precious")
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights)
    assert r.exit_code == 1 and "--overwrite" in r.output and out.read_text() == "precious"


def _mutate(src, fn):
    doc = json.loads(src.read_text())
    fn(doc)
    src.write_text(json.dumps(doc))


BAD_DOCS = {
    "duplicate annotation id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "duplicate id"),
    "duplicate image id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "duplicate id"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
    "missing image ref": (lambda d: d["annotations"][0].update(image_id=12345), "image_id 12345"),
    "zero box": (lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10]), "zero or negative"),
    "negative box": (lambda d: d["annotations"][0].update(bbox=[5, 5, -3, 10]), "zero or negative"),
    "nan box": (lambda d: d["annotations"][0].update(bbox=[5, 5, float("nan"), 10]), "finite"),
    "box outside": (lambda d: d["annotations"][0].update(bbox=[500, 5, 10, 10]), "outside"),
    "odd polygon": (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "even count"),
    "short polygon": (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4]]), "at least 6"),
    "rle wrong size": (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 5]), "does not match"),
    "missing file": (lambda d: d["images"][0].update(file_name="nope.png"), "not found"),
    "missing images": (lambda d: d.pop("images"), "missing 'images'"),
    "missing annotations": (lambda d: d.pop("annotations"), "missing 'annotations'"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_documents_one_line_no_output(weights, data, case):
    src, root = data
    fn, needle = BAD_DOCS[case]
    _mutate(src, fn)
    out = root / "o.json"
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.output
    assert "Traceback" not in r.output
    assert not out.exists() and not list(root.glob(".o.json*"))


@pytest.mark.parametrize("content,needle", [("{not json", "malformed JSON"), ("", "empty"), ("[]", "results list")])
def test_malformed_files(weights, data, content, needle):
    src, root = data
    src.write_text(content)
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights)
    assert r.exit_code == 1 and needle in r.output and not (root / "o.json").exists()


def test_unreadable_image_and_size_mismatch(weights, data):
    src, root = data
    (root / "img_1.png").write_bytes(b"garbage")
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights)
    assert r.exit_code == 1 and "image 11" in r.output and not (root / "o.json").exists()
    cv2.imwrite(str(root / "img_1.png"), np.zeros((10, 10, 3), np.uint8))
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights, "--overwrite")
    assert r.exit_code == 1 and "image 11" in r.output and "10x10" in r.output


def test_bad_weights(tmp_path, data):
    src, root = data
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", tmp_path / "none.pt")
    assert r.exit_code == 1 and "not found" in r.output
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04broken")
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", tmp_path / "trunc.pt")
    assert r.exit_code == 1 and "trunc.pt: cannot read it (its zip archive is cut short" in r.output
    other = tiny_weights(tmp_path / "coco.pt", train_steps=0, num_classes=2, class_names=("a", "b"), class_agnostic="none")
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", other)
    assert r.exit_code == 1 and "not one of the model's" in r.output
    assert not (root / "o.json").exists()


def test_precision_choices_are_the_predictors():
    """cli.py spells the --precision choices out (it starts without importing torch); they must be
    the ones the Predictor accepts, on every command that runs the model."""
    from refinemask_cli.predictor import PRECISIONS

    for name in ("refine", "predict", "demo"):
        option = next(p for p in main.commands[name].params if p.name == "precision")
        assert tuple(option.type.choices) == PRECISIONS, name


def test_option_values_out_of_range_are_usage_errors(weights, data):
    """Exit 2 (click's usage line) for a value no run could take, on refine and predict alike, before
    anything is read: they exited 1 as if the input were bad."""
    src, root = data
    for cmd, extra in ((["refine", src, "--images", root], ["--simplify", "-1"]),
                       (["refine", src, "--images", root], ["--min-agreement", "2"]),
                       (["refine", src, "--images", root], ["--canvas", "33"]),
                       (["refine", src, "--images", root], ["--mask-threshold", "1"]),
                       (["refine", src, "--images", root], ["--mask-threshold", "0"]),
                       (["predict", root], ["--simplify", "-1"]),
                       (["predict", root], ["--canvas", "100"])):
        r = run(*cmd, "-o", root / "o.json", "--weights", weights, *extra)
        assert r.exit_code == 2 and f"Invalid value for '{extra[0]}'" in r.output, (extra, r.output)
        assert not (root / "o.json").exists()


def test_precision_option(weights, data):
    src, root = data
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights, "--device", "cpu",
            "--precision", "fp16")
    assert r.exit_code == 1 and "fp16 needs CUDA" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (root / "o.json").exists()
    n = len(json.loads(src.read_text())["annotations"])
    for i, precision in enumerate(("bf16", "bf16-masks")):
        out = root / f"o{i}.json"
        r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--precision", precision)
        assert r.exit_code == 0, r.output
        assert len(json.loads(out.read_text())["annotations"]) == n


def test_empty_annotations_is_not_an_error(weights, data):
    src, root = data
    _mutate(src, lambda d: d.update(annotations=[]))
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights)
    assert r.exit_code == 0 and "no non-crowd annotations" in r.output
    assert json.loads((root / "o.json").read_text()) == json.loads(src.read_text())


@pytest.mark.parametrize("batch,stop_after,from_journal", [(1, 2, 2), (3, 2, 0), (3, 3, 3)])
def test_resume_after_interruption_gives_identical_output(weights, tmp_path, batch, stop_after, from_journal):
    """Images of different sizes, so a batch pads them: a resumed run must batch exactly as the first
    one did. Stopping inside a batch redoes that whole batch; stopping after it reuses it."""
    src = make_dataset(tmp_path, n_images=4)
    full = tmp_path / "full.json"
    # the journal below is written by a CPU predictor: the CLI runs must be on CPU too (on a GPU
    # machine --device auto picks CUDA, another runtime fingerprint)
    size = ["--batch-size", batch, "--device", "cpu"]
    assert run("refine", src, "--images", tmp_path, "-o", full, "--weights", weights, *size).exit_code == 0
    out = tmp_path / "resumed.json"
    model, ckpt = load_model(weights)
    predictor = Predictor(model, device="cpu", batch_size=batch)
    options = job.RefineOptions()
    journal = job.Journal(out, job.fingerprint(src, ckpt, options, predictor.runtime))
    calls = []

    def stop(n, k):
        calls.append(n)
        if len(calls) == stop_after:
            raise KeyboardInterrupt  # the user pressed Ctrl-C / the machine went down

    with pytest.raises(KeyboardInterrupt):
        job.refine_dataset(read_coco(src), tmp_path, predictor, options, journal, on_image=stop)
    assert not out.exists()
    with open(journal.path, "a") as f:
        f.write('{"image_id": 12, "resu')  # a torn last line from the kill
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, *size)
    assert r.exit_code == 1 and "--resume" in r.output
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, "--resume", "--batch-size", 2)
    assert r.exit_code == 1 and "another input, weights or options" in r.output
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, "--resume", *size)
    assert r.exit_code == 0, r.output
    assert (f"{from_journal} from the journal" in r.output) == bool(from_journal)
    assert out.read_bytes() == full.read_bytes()
    assert not journal.path.exists()


def test_a_damaged_journal_is_named_or_its_damaged_lines_run_again(weights, data):
    """A journal is only ever appended to, but a disk or an editor can damage it: a first line that is
    no header is named (exit 1, one line, how to start over), and a line that is no record holds no
    finished image, so that image runs again; before, both were Python errors (one a traceback)."""
    from refinemask_cli.io.coco import CocoError

    src, root = data
    j = job.Journal(root / "o.json", "fp")
    j.start()
    j.append(1, [{"id": 1}])
    with open(j.path, "a") as f:
        f.write('[1, 2]\n{"image_id": "7", "results": []}\n{"results": []}\n"x"\n')
    j.append(3, [])
    assert j.load() == {1: [{"id": 1}], 3: []}
    for first in (b"[1]", b"garbage", b'"fp"', b'\xff\xfe{"fingerprint": "fp"}'):
        j.path.write_bytes(first + b"\n")
        with pytest.raises(CocoError, match="not a refinemask journal"):
            j.load()
    r = run("refine", src, "--images", root, "-o", root / "o.json", "--weights", weights, "--resume")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "o.json.journal: not a refinemask journal" in r.output and "--overwrite" in r.output
    assert not (root / "o.json").exists()


def test_ctrl_c_says_how_to_resume(weights, tmp_path, monkeypatch):
    """Ctrl-C during refine: exit 130 and one line naming the journal and --resume, no traceback."""
    src = make_dataset(tmp_path, n_images=3)
    real = Predictor.refine_many
    calls = []

    def interrupted(self, *a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Predictor, "refine_many", interrupted)
    out = tmp_path / "out.json"
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, "--device", "cpu")
    assert r.exit_code == 130 and "Traceback" not in r.output
    assert "interrupted" in r.output and "out.json.journal" in r.output and "--resume" in r.output
    assert not out.exists() and (tmp_path / "out.json.journal").exists()


CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB of which 1.2 GiB is free."


@pytest.mark.parametrize("failure", [
    CUDA_OOM,
    "[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes.",
    "memory",
    "a RuntimeError that is not about memory",
])
def test_out_of_memory_is_one_line_that_says_what_to_lower(weights, tmp_path, monkeypatch, failure):
    """A GPU or the CPU running out of memory mid-run was a traceback. Now one line: what ran out and
    --batch-size to lower (the finished images stay in the journal). Other RuntimeErrors are bugs,
    and still show their traceback."""
    import torch

    src = make_dataset(tmp_path, n_images=2)
    real = Predictor.refine_many
    calls = []

    def fails(self, *a, **k):
        if calls:
            if failure == "memory":
                raise MemoryError()
            error = torch.cuda.OutOfMemoryError if failure.startswith("CUDA") else RuntimeError
            raise error(failure)
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Predictor, "refine_many", fails)
    out = tmp_path / "out.json"
    r = run("refine", src, "--images", tmp_path, "-o", out, "--weights", weights, "--device", "cpu", "--batch-size", 1)
    assert not out.exists() and (tmp_path / "out.json.journal").exists()
    if failure.startswith("a RuntimeError"):
        assert isinstance(r.exception, RuntimeError)
        return
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: out of memory (") and "run again with a smaller --batch-size" in r.output
    if failure == CUDA_OOM:
        assert "(CUDA out of memory. Tried to allocate 2.00 GiB)" in r.output


def test_batched_refine_agrees_with_one_image_at_a_time(weights, tmp_path):
    src = make_dataset(tmp_path, n_images=3)
    outs = []
    for batch in (1, 3):
        dst = tmp_path / f"b{batch}.json"
        assert run("refine", src, "--images", tmp_path, "-o", dst, "--weights", weights, "--batch-size", batch,
                   "--output-format", "rle").exit_code == 0
        outs.append({a["id"]: a for a in json.loads(dst.read_text())["annotations"]})
    assert outs[0].keys() == outs[1].keys()
    from pycocotools import mask as mask_utils

    for aid, a in outs[0].items():
        if a.get("iscrowd"):
            continue
        b = outs[1][aid]
        iou = mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0][0]
        assert iou > 0.97, (aid, iou)


def test_report_csv_in_pieces_equals_one_string():
    rows = [dict(annotation_id=i, image_id=1, category_id=1, prompt="box", iou_input_output=0.5,
                 area_input=10.0 * (i % 3), area_output=12.0, flags="") for i in range(25)]
    text = job.report_csv(rows)
    assert "".join(job.iter_report_csv(rows, chunk=7)) == text
    assert text.count("\n") == 26 and text.splitlines()[1].endswith(",0.0,,")  # area_input 0: change 0
    assert text.splitlines()[0].endswith(",area_change,confidence,flags")  # free text last
    rows[0].update(confidence=0.8125, flags="islands-removed")
    assert job.report_csv(rows).splitlines()[1].endswith(",0.0,0.8125,islands-removed")


def test_zoom_flip_passes_and_min_area_through_the_cli(weights, data):
    src, root = data
    outs = {}
    for name, extra in (("whole", ["--mode", "whole"]),
                        ("zoom", ["--mode", "zoom", "--zoom-size", "64", "--flip", "--passes", "2"])):
        out = root / f"{name}.json"
        r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--device", "cpu",
                "--report", root / f"{name}.csv", *extra)
        assert r.exit_code == 0, r.output
        outs[name] = json.loads(out.read_text())
        assert [a["id"] for a in outs[name]["annotations"]] == [a["id"] for a in json.loads(src.read_text())["annotations"]]
    # the zoom run is a different computation: at least one refined mask differs
    assert any(a.get("segmentation") != b.get("segmentation")
               for a, b in zip(outs["whole"]["annotations"], outs["zoom"]["annotations"]) if not a["iscrowd"])
    r = run("refine", src, "--images", root, "-o", root / "bad.json", "--weights", weights, "--passes", "9")
    assert r.exit_code == 2 and not (root / "bad.json").exists()


def test_regress_boxes_refuses_an_untrained_box_head(tmp_path, data):
    """The shipped refine default never trained its box head (meta.detector = untrained): with it,
    --regress-boxes would move every box at random, so refine stops before writing anything."""
    src, root = data
    untrained = tiny_weights(tmp_path / "untrained.pt", train_steps=2, meta={"detector": "untrained"})
    out = root / "regressed.json"
    r = run("refine", src, "--images", root, "-o", out, "--weights", untrained, "--device", "cpu", "--regress-boxes")
    assert r.exit_code == 1 and "--regress-boxes needs a trained box head" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()
    trained = tiny_weights(tmp_path / "trained.pt", train_steps=2, meta={"detector": "trained"})
    r = run("refine", src, "--images", root, "-o", out, "--weights", trained, "--device", "cpu", "--regress-boxes")
    assert r.exit_code == 0, r.output
    ids = [a["id"] for a in json.loads(src.read_text())["annotations"]]
    assert [a["id"] for a in json.loads(out.read_text())["annotations"]] == ids


def test_snap_edges_is_on_unless_turned_off(weights, data, monkeypatch):
    """The option reaches the predictor (what snapping does: tests/test_predictor.py; these objects
    are smaller than the mask grid, so it would change none of them)."""
    src, root = data
    real, seen = Predictor.refine_many, []

    def spy(self, items, regress_boxes=False, settings=None):
        seen.append(settings.snap_edges)
        return real(self, items, regress_boxes, settings)

    monkeypatch.setattr(Predictor, "refine_many", spy)
    for flags, expect in (([], True), (["--no-snap-edges"], False), (["--snap-edges"], True)):
        seen.clear()
        r = run("refine", src, "--images", root, "-o", root / f"snap{len(flags)}{expect}.json", "--weights", weights,
                "--device", "cpu", *flags)
        assert r.exit_code == 0, r.output
        assert seen and set(seen) == {expect}


def test_min_area_removes_islands_and_says_so(weights, data, monkeypatch):
    src, root = data
    real = Predictor.refine_many

    def speckled(self, items, regress_boxes=False, settings=None):
        dets = real(self, items, regress_boxes, settings)
        for det in dets:  # one stray pixel beside every mask, far from the object
            for k, m in enumerate(det.masks):
                mask = np.zeros((m.mask.shape[0] + 3, m.mask.shape[1] + 3), bool)
                mask[: m.mask.shape[0], : m.mask.shape[1]] = m.mask
                mask[-1, -1] = True
                det.masks[k] = type(m)(m.x0, m.y0, mask)
        return dets

    monkeypatch.setattr(Predictor, "refine_many", speckled)
    for min_area, expect in ((0, False), (4, True)):
        out, report = root / f"out{min_area}.json", root / f"rep{min_area}.csv"
        r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--device", "cpu",
                "--report", report, "--min-area", min_area)
        assert r.exit_code == 0, r.output
        flagged = [row for row in report.read_text().splitlines()[1:] if "islands-removed" in row]
        assert (len(flagged) == 6) == expect, report.read_text()
        polys = [a["segmentation"] for a in json.loads(out.read_text())["annotations"] if not a["iscrowd"]]
        parts = [len(p) for p in polys if isinstance(p, list)]
        assert (max(parts) == 1) == expect
    assert "islands-removed 6" in r.output


@pytest.mark.parametrize("coord", [1e12, -1e15])
def test_far_away_polygon_is_one_clear_line_from_validate_and_refine(weights, data, coord):
    """A polygon at 1e12 used to kill refine with a segfault (and -1e15 exhausted memory) while
    validate said nothing: both now name the annotation and exit 1, writing nothing."""
    src, root = data
    doc = json.loads(src.read_text())
    doc["annotations"][1]["segmentation"] = [[0, 0, coord, 0, coord, coord, 0, coord]]
    bad = root / "far.json"
    bad.write_text(json.dumps(doc))
    r = run("validate", bad, "--images", root)
    assert r.exit_code == 1 and "annotation 101: polygon 0 has points more than" in r.output
    r = run("refine", bad, "--images", root, "-o", root / "out.json", "--weights", weights, "--device", "cpu")
    assert r.exit_code == 1 and "annotation 101" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (root / "out.json").exists()


def test_crowd_refine_refines_cvat_style_masks(weights, data):
    src, root = data
    r = run("refine", src, "--images", root, "-o", root / "keep.json", "--weights", weights, "--device", "cpu")
    assert r.exit_code == 0 and "2 passed through (--crowd refine refines them)" in " ".join(r.output.split())
    r = run("refine", src, "--images", root, "-o", root / "out.json", "--weights", weights, "--device", "cpu",
            "--crowd", "refine", "--report", root / "rep.csv")
    assert r.exit_code == 0, r.output
    assert "2 refined as single objects" in " ".join(r.output.split())
    before = {a["id"]: a for a in json.loads(src.read_text())["annotations"]}
    after = {a["id"]: a for a in json.loads((root / "out.json").read_text())["annotations"]}
    crowd_ids = [i for i, a in before.items() if a["iscrowd"]]
    assert crowd_ids and all(after[i]["iscrowd"] == 0 and after[i]["segmentation"] != before[i]["segmentation"]
                             for i in crowd_ids)
    assert sum("crowd-refined" in line for line in (root / "rep.csv").read_text().splitlines()) == len(crowd_ids)
    COCO(str(root / "out.json"))


def test_pycocotools_tolerated_fields_are_read_and_written_fixed(weights, data):
    """No iscrowd, integral-float sizes and digit-string ids: pycocotools loads such files, so do we,
    and the output carries the integers and iscrowd 0 (COCOeval needs it)."""
    from pycocotools.cocoeval import COCOeval

    src, root = data
    doc = json.loads(src.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if not a["iscrowd"]]
    for a in doc["annotations"]:
        del a["iscrowd"]
    doc["images"][0]["width"] = float(doc["images"][0]["width"])
    doc["annotations"][0]["id"] = str(doc["annotations"][0]["id"])
    (root / "loose.json").write_text(json.dumps(doc))
    r = run("validate", root / "loose.json")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "no 'iscrowd' (and 5 more); taken as 0" in text and "width 80.0 is a float" in text
    assert "id '100' is a string" in text
    r = run("refine", root / "loose.json", "--images", root, "-o", root / "out.json", "--weights", weights,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    out = json.loads((root / "out.json").read_text())
    assert all(a["iscrowd"] == 0 for a in out["annotations"]) and out["images"][0]["width"] == 80
    assert out["annotations"][0]["id"] == 100
    gt = COCO(str(root / "out.json"))
    ev = COCOeval(gt, gt.loadRes([{**a, "score": 1.0} for a in out["annotations"]]), "segm")
    ev.evaluate()  # raised KeyError: 'iscrowd' before
    r = run("validate", root / "bad.json")
    doc["images"][0]["width"] = 80.5
    (root / "bad.json").write_text(json.dumps(doc))
    r = run("validate", root / "bad.json")
    assert r.exit_code == 1 and "image 10" in r.output and "positive integers" in r.output


def test_second_zoom_size_through_the_cli(weights, data):
    """--second-zoom-size refines each object again in crops of another side and averages the two:
    the same annotations back, a different computation; refused where it cannot apply."""
    src, root = data
    outs = {}
    for name, extra in (("once", []), ("twice", ["--second-zoom-size", "96"])):
        out = root / f"{name}.json"
        r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--device", "cpu",
                "--mode", "zoom", "--zoom-size", "64", "--no-flip", *extra)
        assert r.exit_code == 0, r.output
        outs[name] = json.loads(out.read_text())
    assert [a["id"] for a in outs["twice"]["annotations"]] == [a["id"] for a in outs["once"]["annotations"]]
    assert any(a.get("segmentation") != b.get("segmentation")
               for a, b in zip(outs["once"]["annotations"], outs["twice"]["annotations"]) if not a["iscrowd"])
    r = run("refine", src, "--images", root, "-o", root / "bad.json", "--weights", weights, "--second-zoom-size", "16")
    assert r.exit_code == 2 and not (root / "bad.json").exists()
    # --mode whole; --regress-boxes; --mode auto with these weights (not trained for zoom: whole images)
    for extra in (["--mode", "whole"], ["--regress-boxes"], []):
        r = run("refine", src, "--images", root, "-o", root / "bad.json", "--weights", weights, "--device", "cpu",
                "--second-zoom-size", "96", *extra)
        assert r.exit_code == 1 and "--second-zoom-size" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (root / "bad.json").exists()
        assert not list(root.glob("bad.json*"))  # no journal either
    r = run("refine", src, "--images", root, "-o", root / "bad.json", "--weights", weights, "--device", "cpu",
            "--zoom-size", "64")
    assert r.exit_code == 1 and "add --mode zoom" in r.output and not list(root.glob("bad.json*")), r.output


def test_mask_threshold_option_and_a_config_change_are_other_runs(weights, tmp_path):
    """--mask-threshold reaches the masks; a journal is only resumed with the same weights file,
    config included: a file whose thresholds changed (same tensors) refines differently."""
    from refinemask_cli.model import with_settings
    from refinemask_cli.weights import read_checkpoint, save_checkpoint

    src = make_dataset(tmp_path, n_images=2)
    common = ["--images", tmp_path, "--weights", weights, "--device", "cpu", "--output-format", "rle"]
    areas = {}
    for t in ("0.2", "0.8"):
        r = run("refine", src, "-o", tmp_path / f"t{t}.json", *common, "--mask-threshold", t)
        assert r.exit_code == 0 and f"{t} (--mask-threshold)" in r.output, r.output
        areas[t] = sum(a["area"] for a in json.loads((tmp_path / f"t{t}.json").read_text())["annotations"]
                       if not a["iscrowd"])
    assert areas["0.2"] > areas["0.8"]
    r = run("refine", src, "-o", tmp_path / "own.json", *common)  # the tiny weights have one threshold
    assert r.exit_code == 0 and "mask threshold" in r.output and "from coarse masks" not in r.output
    model, ckpt = load_model(weights)
    other = tmp_path / "other.pt"
    save_checkpoint(with_settings(model, mask_prompt_threshold=0.3), other)
    other_ckpt = read_checkpoint(other)
    assert other_ckpt["sha256"] == ckpt["sha256"] and other_ckpt["config"] != ckpt["config"]
    options = job.RefineOptions()
    assert job.fingerprint(src, ckpt, options, "cpu") != job.fingerprint(src, other_ckpt, options, "cpu")
    assert job.fingerprint(src, ckpt, options, "cpu") == job.fingerprint(src, read_checkpoint(weights), options, "cpu")


def test_a_coco_file_with_a_byte_order_mark_is_read_and_written_without_it(weights, data):
    """Windows editors save UTF-8 with a byte-order mark, which json (and so pycocotools) refuses:
    refine reads such a file with a warning and writes one that pycocotools loads."""
    src, root = data
    bom = root / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())
    r = run("validate", bom)
    assert r.exit_code == 0 and "byte-order mark" in r.output and "1 warnings" in r.output, r.output
    out = root / "out.json"
    r = run("refine", bom, "--images", root, "-o", out, "--weights", weights, "--device", "cpu")
    assert r.exit_code == 0 and "bom.json: starts with a UTF-8 byte-order mark" in r.output, r.output
    assert out.read_bytes()[:1] == b"{"
    assert len(COCO(str(out)).getAnnIds()) == len(json.loads(src.read_text())["annotations"])
    r = run("evaluate", bom, out)
    assert r.exit_code == 0, r.output


def test_file_names_with_windows_separators_are_found(weights, tmp_path):
    """A dataset made on Windows names its images 'train\\img_0.png': refine, validate and train find
    them in the train/ sub-folder (as predict --like and export already did); the file_name is kept."""
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    src = make_dataset(root)
    doc = json.loads(src.read_text())
    for im in doc["images"]:
        (root / im["file_name"]).rename(root / "train" / im["file_name"])
        im["file_name"] = "train\\" + im["file_name"]
    src.write_text(json.dumps(doc))
    assert run("validate", src, "--images", root).exit_code == 0
    out = root / "out.json"
    r = run("refine", src, "--images", root, "-o", out, "--weights", weights, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [im["file_name"] for im in json.loads(out.read_text())["images"]] == [im["file_name"] for im in doc["images"]]
    from refinemask_cli.data.coco_dataset import CocoInstances

    train = CocoInstances(src, root)
    train.check_files(src)
    assert train.load(0)[0].shape[:2] == (64, 80)
    (root / "train" / "img_1.png").unlink()
    r = run("refine", src, "--images", root, "-o", root / "o2.json", "--weights", weights, "--device", "cpu")
    assert r.exit_code == 1 and "image 11: file train\\img_1.png not found" in r.output, r.output


def test_refine_a_results_list_keeps_everything_but_the_masks(weights, tmp_path):
    """A detector's COCO results (masks as RLE, boxes only, extra keys, scores) refined against the
    dataset it refers to (--like): a results list back, in order, each entry as it was but its mask
    (compressed RLE, area updated where there was one); it loads with pycocotools' loadRes and its
    masks are what refining the same objects as a dataset gives."""
    from pycocotools import mask as mask_utils

    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    objects = [a for a in doc["annotations"] if not a["iscrowd"] and "segmentation" in a and
               isinstance(a["segmentation"], dict)] + [a for a in doc["annotations"] if "segmentation" not in a]
    results = []
    for k, a in enumerate(objects):
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9 - k / 10,
             "detector_key": k}
        if "segmentation" in a:
            r["segmentation"], r["area"] = a["segmentation"], 1.0
        results.append(r)
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    base = ["--images", tmp_path, "--weights", weights, "--device", "cpu"]
    r = run("refine", res_path, "-o", tmp_path / "x.json", *base)
    assert r.exit_code == 1 and "results list" in r.output and "--like" in r.output
    r = run("refine", src, "--like", src, "-o", tmp_path / "x.json", *base)
    assert r.exit_code == 1 and "must be a COCO results list" in r.output and "leave --like out" in r.output
    bad = [*results, {**results[0], "image_id": 999}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run("refine", tmp_path / "bad.json", "--like", src, "-o", tmp_path / "x.json", *base)
    assert r.exit_code == 1 and f"result #{len(results)}: image_id 999" in r.output
    out = tmp_path / "refined_results.json"
    r = run("refine", res_path, "--like", src, "-o", out, *base, "--report", tmp_path / "rep.csv")
    assert r.exit_code == 0, r.output
    refined = json.loads(out.read_text())
    assert isinstance(refined, list) and len(refined) == len(results)
    for before, after in zip(results, refined):
        assert {k: v for k, v in after.items() if k not in ("segmentation", "area")} == \
            {k: v for k, v in before.items() if k not in ("segmentation", "area")}
        assert isinstance(after["segmentation"]["counts"], str)
        assert ("area" in after) == ("area" in before)
        if "area" in after:
            assert after["area"] == float(mask_utils.area(after["segmentation"])) > 1
    COCO(str(src)).loadRes(str(out))  # loads where results are loaded
    # the same objects as a dataset, refined as RLE: the same masks
    as_doc = {**doc, "annotations": [{**a, "id": k + 1} for k, a in enumerate(objects)]}
    (tmp_path / "as_doc.json").write_text(json.dumps(as_doc))
    r = run("refine", tmp_path / "as_doc.json", "-o", tmp_path / "as_doc_out.json", *base, "--output-format", "rle")
    assert r.exit_code == 0, r.output
    want = json.loads((tmp_path / "as_doc_out.json").read_text())["annotations"]
    assert [a["segmentation"] for a in want] == [a["segmentation"] for a in refined]
    assert len((tmp_path / "rep.csv").read_text().splitlines()) == len(results) + 1
    r = run("evaluate", src, out)
    assert r.exit_code == 0, r.output
    # or as LabelMe files to correct by hand, the detector's scores on the shapes
    r = run("refine", res_path, "--like", src, "-o", tmp_path / "lm", "--format", "labelme", *base)
    assert r.exit_code == 0, r.output
    shapes = [s for f in sorted((tmp_path / "lm").glob("*.json")) for s in json.loads(f.read_text())["shapes"]]
    assert len(shapes) >= len(results) and {round(s["score"], 2) for s in shapes if "score" in s} >= {0.9}


def test_report_and_summary_carry_each_refined_masks_confidence(weights, data):
    import csv

    src, root = data
    r = run("refine", src, "--images", root, "-o", root / "c.json", "--weights", weights, "--device", "cpu",
            "--report", root / "c.csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(root / "c.csv")))
    refined = [row for row in rows if "kept-input" not in row["flags"]]
    assert refined and all(0.0 <= float(row["confidence"]) <= 1.0 for row in refined)
    low = min(refined, key=lambda row: float(row["confidence"]))
    text = " ".join(r.output.replace("│", " ").split())  # the table's cell wraps: its borders out
    assert f"lowest {float(low['confidence']):.2f} (annotation {low['annotation_id']})" in text
    assert "check the least confident first" in text
