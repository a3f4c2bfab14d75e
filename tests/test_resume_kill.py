"""Kill a real `refinemask refine` / `predict` process mid-way (SIGKILL), resume it, get the same bytes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from .cocofix import make_dataset, tiny_weights

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")


def command(kind, src, root, out, weights, *extra):
    head = (["refine", str(src), "--images", str(root)] if kind == "refine" else
            ["predict", str(root), "--score-threshold", "0"])
    return [sys.executable, "-m", "refinemask_cli.cli", *head, "-o", str(out), "--weights", str(weights),
            "--device", "cpu", *extra]


@pytest.mark.parametrize("kind", ["refine", "predict"])
def test_sigkill_then_resume_is_identical(tmp_path, kind):
    weights = tiny_weights(tmp_path / "w.pt", box_score_thresh=0.0)
    root = tmp_path / "data"
    root.mkdir()
    src = make_dataset(root, n_images=16)
    full = tmp_path / "full.json"
    subprocess.run(command(kind, src, root, full, weights), check=True, capture_output=True)
    out = tmp_path / "out.json"
    journal = tmp_path / "out.json.journal"
    proc = subprocess.Popen(command(kind, src, root, out, weights), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 4:  # header + 3 images
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; use more images")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = journal.read_text().count("\n") - 1
    assert 3 <= done < 16
    res = subprocess.run(command(kind, src, root, out, weights, "--resume"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == full.read_bytes()
    assert not journal.exists()
