"""One writer per output: an advisory lock beside the output file, held for a whole run.

``fcntl.flock`` on ``.NAME.lock`` in the output's folder: the operating system releases it when the
process ends, however it ends, so a killed run never leaves a stale lock behind. The file is removed
when the run finishes; a run that opened the file just before it was removed notices (the path no
longer names the file it locked) and tries again. Where ``fcntl`` does not exist (Windows) runs are
not locked.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputLocked(OSError):
    """Another run is writing the same output."""


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``output`` or raise ``OutputLocked`` at once (never waits)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_path(Path(output))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(f"{output} is being written by another refinemask run (lock {path}); "
                               "wait for it to finish or choose another -o") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the run that held it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
