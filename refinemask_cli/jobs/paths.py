"""Image file names as paths under a folder: the one check every writer and reader of mirrored
folders uses, so that a dataset's ``file_name`` can never point outside the folder it belongs to."""
from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from ..io.coco import CocoError


def safe_relative(file_name: str, where: str) -> PurePosixPath:
    """``file_name`` as a relative POSIX path (``\\`` taken as a separator); a ``CocoError`` naming
    ``where`` (e.g. "image 7") when it is absolute, has a drive or climbs out with ``..``."""
    text = str(file_name)
    if not text.strip():
        raise CocoError(f"{where}: empty file_name")
    win = PureWindowsPath(text)
    posix = PurePosixPath(text.replace("\\", "/"))
    if posix.is_absolute() or win.drive or win.root:
        raise CocoError(f"{where}: file_name {text!r} is an absolute path; make it relative to the images folder")
    parts = [p for p in posix.parts if p not in ("", ".")]
    if ".." in parts:
        raise CocoError(f"{where}: file_name {text!r} climbs out of the images folder with '..'; "
                        f"make it relative to the images folder")
    return PurePosixPath(*parts)


def with_suffix(file_name: str, suffix: str, where: str) -> PurePosixPath:
    """The safe relative path of ``file_name`` with its suffix replaced (``a/b.jpg`` → ``a/b.txt``)."""
    return safe_relative(file_name, where).with_suffix(suffix)
