"""Images read the way an annotator saw them: RGB uint8 ``(H, W, 3)``.

Grayscale is replicated to three channels, alpha is dropped, 16-bit is scaled to 8-bit, and the
EXIF orientation is applied (OpenCV does this for colour reads).

Images may also be *held*: encoded image bytes kept in memory under the path the file would have, for
LabelMe files that carry their image only as ``imageData``. ``read_image``, ``image_exists`` and
``looks_readable`` take a held image where no file is, so every command that reads a dataset's images
reads these too; ``held_image`` gives the bytes (export writes them out).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class ImageReadError(ValueError):
    pass


_HELD: dict[Path, bytes] = {}


def _key(path: str | Path) -> Path:
    return Path(path).resolve()


def hold_image(path: str | Path, data: bytes) -> None:
    """Keep ``data`` (an encoded image file) as the image at ``path``, where no file is."""
    _HELD[_key(path)] = data


def held_image(path: str | Path) -> bytes | None:
    """The bytes held for ``path`` (``None`` where there is a file there, or nothing held)."""
    if not _HELD or Path(path).is_file():
        return None
    return _HELD.get(_key(path))


def image_exists(path: str | Path) -> bool:
    """A file at ``path``, or an image held for it."""
    return Path(path).is_file() or held_image(path) is not None


def image_path(images_dir: str | Path, file_name: str) -> Path:
    """Where a dataset's ``file_name`` is read from under ``images_dir``: as written, or, where that
    is no file and the name has backslashes (a dataset made on Windows, ``train\\a.jpg``), with
    them taken as folder separators, as ``predict --like`` and ``export`` take them."""
    path = Path(images_dir) / file_name
    if "\\" in file_name and not image_exists(path):
        posix = Path(images_dir) / file_name.replace("\\", "/")
        if image_exists(posix):
            return posix
    return path


def not_found_messages(images_dir: str | Path, file_names: list[str], limit: int = 200_000) -> dict[str, str]:
    """``"file NAME not found in DIR"`` for each of ``file_names`` (not found under ``images_dir``), with
    a hint where exactly one file of the same base name lies elsewhere below it (the usual slip:
    ``--images`` one folder too high, or a dataset's file names without the split folder its images
    sit in). At most ``limit`` files are looked at; names found nowhere, or in several places, get
    no hint."""
    root = Path(images_dir)
    wanted: dict[str, list[str]] = {}  # base name -> the file names ending in it (cam_a/1.png, cam_b/1.png)
    for n in dict.fromkeys(file_names):
        wanted.setdefault(PurePosixPath(n.replace("\\", "/")).name, []).append(n)
    found: dict[str, list[Path]] = {}
    seen = 0
    for folder, _, files in os.walk(root):
        for f in files:
            if f in wanted:
                found.setdefault(f, []).append(Path(folder, f).relative_to(root))
        seen += len(files)
        if seen > limit:
            break
    messages = {}
    for base, names in wanted.items():
        places = found.get(base, [])
        for name in names:
            messages[name] = f"file {name} not found in {images_dir}"
            if len(places) != 1:
                continue
            rel = places[0].as_posix()
            given = name.replace("\\", "/")
            while given.startswith("./"):
                given = given[2:]
            if rel.endswith("/" + given):  # --images one folder (or more) too high
                messages[name] += f" (it is at {root / rel}: pass --images {root / rel[: -len(given) - 1]})"
            elif len(names) == 1:  # one name for that one file: its folder part is what is off
                messages[name] += (f" (a file of that name is at {root / rel}; file_name must be the image's path "
                                   f"relative to --images)")
    return messages


def looks_readable(path: str | Path) -> bool:
    """Whether ``path`` is a file whose first bytes one of OpenCV's decoders (the ones ``read_image``
    uses) takes: a cheap check before a long job, not a full decode (a truncated file passes). Where
    OpenCV cannot open the path itself (non-ASCII names on Windows) it decodes the file as
    ``read_image`` does, so no readable image is refused."""
    p = Path(path)
    if not image_exists(p):
        return False
    if p.is_file() and cv2.haveImageReader(str(p)):
        return True
    try:
        read_image(p)
    except ImageReadError:
        return False
    return True


def read_image_as_recorded(path: str | Path, height: int, width: int) -> tuple[np.ndarray, bool]:
    """The image at ``path`` for a record of ``height`` x ``width``, and whether it was read as stored.

    Read as annotators see it (EXIF orientation applied), unless only the image as stored, before its
    EXIF rotation, has the recorded size: a tool that ignored the tag drew the annotations on that,
    so it is read so. Neither matching, it comes back as annotators see it (the caller says so)."""
    image = read_image(path)
    if image.shape[:2] == (height, width) or image.shape[:2] != (width, height):
        return image, False
    stored = read_image(path, exif=False)
    if stored.shape[:2] == (height, width):
        return stored, True
    return image, False


def read_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; ``exif=False``: as stored, without the EXIF orientation."""
    p = Path(path)
    if p.is_file():
        data = np.fromfile(str(p), dtype=np.uint8)
    elif (held := held_image(p)) is not None:
        data = np.frombuffer(held, dtype=np.uint8)
    else:
        raise ImageReadError(f"{p}: image file not found")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION)
    try:
        img = cv2.imdecode(data, flags) if data.size else None
        if img is None and data.size:  # decoders that cannot convert while reading (one-channel float TIFF)
            img = _as_bgr(cv2.imdecode(data, cv2.IMREAD_UNCHANGED))
    except cv2.error as e:  # OpenCV refuses images over its pixel limit before decoding them
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):
            raise ImageReadError(f"{p}: more pixels than OpenCV will decode ({CV_MAX_PIXELS_DEFAULT:,} by default); "
                                 "cut it into tiles, or set the environment variable OPENCV_IO_MAX_IMAGE_PIXELS "
                                 "higher if this machine has the memory") from None
        raise ImageReadError(f"{p}: not a readable image ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise ImageReadError(f"{p}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        floating = np.issubdtype(img.dtype, np.floating)
        img = img.astype(np.float64)
        finite = img[np.isfinite(img)]
        if floating and finite.size and finite.max() <= 1.0:
            img = img * 255  # a floating-point image in [0, 1], as viewers show it
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


CV_MAX_PIXELS_DEFAULT = 1 << 30  # OpenCV's default limit (CV_IO_MAX_IMAGE_PIXELS; OPENCV_IO_MAX_IMAGE_PIXELS sets it)


def _as_bgr(img: np.ndarray | None) -> np.ndarray | None:
    """An image decoded as stored (1, 2, 3 or 4 channels) as 3-channel BGR; None stays None."""
    if img is None:
        return None
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels in (1, 2):  # grey, or grey and alpha
        return np.repeat(img[..., :1], 3, axis=2)
    return img[..., :3]
