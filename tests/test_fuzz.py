"""Runs the property-based fuzzing (``fuzz_documents.py``) in a subprocess, so a native crash fails
this test with its signal instead of killing the run. CI size: a fixed seed and ~1 minute; the long
run (20,000 generated documents) is marked slow."""
import os
import subprocess
import sys

import pytest

from .conftest import ROOT


def _fuzz(examples: int, timeout: int):
    env = {**os.environ, "FUZZ_EXAMPLES": str(examples)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
                        str(ROOT / "tests" / "fuzz_documents.py")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, f"fuzzing failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert "10 passed" in r.stdout


def test_fuzz_ci_sized():
    _fuzz(300, 600)


@pytest.mark.slow
def test_fuzz_long():
    _fuzz(20000, 3600)
