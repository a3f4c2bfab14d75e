"""Writes that never lose data: one run per output (a lock), the input as -o, a write that fails
midway (file size limit) leaving the input whole, no partial output, and --resume working after."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.io.lock import OutputLocked, lock_path, output_lock

from .cocofix import make_dataset, tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["refine", "predict"])
def test_second_run_on_the_same_output_stops_at_once(weights, tmp_path, command):
    src = make_dataset(tmp_path)
    out = tmp_path / "out.json"
    args = [command, *([src, "--images"] if command == "refine" else []), tmp_path, "-o", out,
            "--weights", weights, "--device", "cpu"]
    with output_lock(out):
        t = time.perf_counter()
        r = run(*args)
        assert time.perf_counter() - t < 30
        assert r.exit_code == 1 and "being written by another refinemask run" in r.output
        assert len(r.output.strip().splitlines()) == 1 and not out.exists()
        with pytest.raises(OutputLocked), output_lock(out):
            pass
    assert not lock_path(out).exists()  # released and removed
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "x.json"
    code = ("import sys, time; from refinemask_cli.io.lock import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked), output_lock(out):
            pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with output_lock(out):  # the operating system released it with the process
        pass


def test_output_equal_to_the_input(weights, tmp_path):
    src = make_dataset(tmp_path)
    before = src.read_bytes()
    r = run("refine", src, "--images", tmp_path, "-o", src, "--weights", weights, "--device", "cpu")
    assert r.exit_code == 1 and "--overwrite" in r.output and src.read_bytes() == before
    r = run("refine", src, "--images", tmp_path, "-o", src, "--weights", weights, "--device", "cpu", "--overwrite")
    assert r.exit_code == 0, r.output
    after = json.loads(src.read_text())  # replaced whole (atomically), never truncated
    assert [a["id"] for a in after["annotations"]] == [a["id"] for a in json.loads(before)["annotations"]]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _limited(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_fails_midway_loses_nothing_and_resume_finishes(weights, tmp_path):
    src = make_dataset(tmp_path)
    doc = json.loads(src.read_text())
    doc["my_key"] = {"padding": "x" * 60000}  # the output is large, the journal small
    src.write_text(json.dumps(doc))
    before = src.read_bytes()
    out = tmp_path / "refined.json"
    def args(output):
        return [sys.executable, "-m", "refinemask_cli.cli", "refine", str(src), "--images", str(tmp_path),
                "-o", str(output), "--weights", str(weights), "--device", "cpu"]

    r = subprocess.run(args(out), capture_output=True, text=True, preexec_fn=_limited(30000), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "File too large" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    assert src.read_bytes() == before and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no partial output
    journal = out.with_name(out.name + ".journal")
    assert journal.exists() and len(journal.read_text().splitlines()) == 3  # header + both images
    r = subprocess.run(args(out) + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    clean = tmp_path / "clean.json"
    r = subprocess.run(args(clean), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == clean.read_bytes() and not journal.exists()
    assert os.path.getsize(out) > 30000
