"""The resume journal of ``refine`` and ``predict``: one fsync'd JSON line per finished image beside
the output, under a header line with the fingerprint of everything that decides the exact output."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..io.coco import CocoError, is_id

if TYPE_CHECKING:  # pragma: no cover
    from .refine import RefineOptions


# what one journal line holds; a journal of another format (an older refinemask's) is not resumed
JOURNAL_FORMAT = 2  # 2: report rows carry the refined mask's confidence


class Journal:
    """Finished images, one JSON line each, beside the output; a torn last line is ignored."""

    def __init__(self, output: Path, fingerprint: str, suffix: str = ""):
        self.path = output.with_name(output.name + ".journal" + suffix)  # suffix: one journal per rank
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[int, object]:
        done: dict[int, object] = {}
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        if not lines or not lines[0]:
            return done
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict):
            raise CocoError(f"{self.path}: not a refinemask journal (its first line is no header); "
                            "pass --overwrite to start over")
        if header.get("fingerprint") != self.fingerprint:
            raise CocoError(f"{self.path}: journal was written for another input, weights or options (or by "
                            "another version of refinemask); pass --overwrite to start over")
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when the run was stopped
            # a line that is not a record (a damaged file) holds no finished image: that image runs again
            if isinstance(rec, dict) and is_id(rec.get("image_id")) and "results" in rec:
                done[rec["image_id"]] = rec["results"]
        return done

    def start(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")

    def append(self, image_id: int, results: object) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"image_id": image_id, "results": results}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


T = TypeVar("T")


def resume_batches(journal: Journal | None, resume: bool, batches: Sequence[Sequence[T]],
                   image_id: Callable[[T], int]) -> tuple[list[Sequence[T]], dict[int, Any]]:
    """Start ``journal`` (with ``resume``, continue the one there) and split ``batches``: the ones to
    run, and the journal's records of the images whose whole batch it holds, taken as they are. A
    batch the journal holds in part is run again whole, so every batch pads as it did the first time."""
    done = journal.load() if (journal and resume and journal.exists()) else {}
    if journal and not done:
        journal.start()
    run = [b for b in batches if any(image_id(x) not in done for x in b)]
    again = {image_id(x) for b in run for x in b}
    return run, {k: v for k, v in done.items() if k not in again}


def fingerprint(input_json: Path | bytes, weights: dict, options: RefineOptions | dict, runtime: str = "") -> str:
    """What decides a run's exact output: the input file (hashed in 1 MiB blocks, never held whole;
    or the given bytes), the weights (a checkpoint as read: its tensors' sha256 and its config, whose
    inference settings such as the mask thresholds change outputs without changing a tensor), the
    options (a dataclass or a plain dict of JSON values) and the runtime (device kind, precision,
    batch size)."""
    h = hashlib.sha256(f"journal format {JOURNAL_FORMAT}\n".encode())
    if isinstance(input_json, bytes):
        h.update(input_json)
    else:
        with open(input_json, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(weights["sha256"].encode())
    h.update(json.dumps(weights["config"], sort_keys=True).encode())
    h.update(json.dumps(options if isinstance(options, dict) else asdict(options), sort_keys=True).encode())
    h.update(runtime.encode())
    return h.hexdigest()
