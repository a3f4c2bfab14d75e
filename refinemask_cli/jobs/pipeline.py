"""The pipeline shared by ``refine`` and ``predict``: read ahead in worker threads, run the network
on batches in the calling thread, post-process (polygons, RLE, reports) in one more thread while the
next batch runs, and hand results on strictly in input order.

Threads, not a process DataLoader: OpenCV's decoder, pycocotools and the contour tracing release the
GIL, so threads overlap with the network without pickling images between processes.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")  # one input (an image's record)
L = TypeVar("L")  # what reading it gives
D = TypeVar("D")  # the network's output for a batch
R = TypeVar("R")  # the post-processed output for a batch


def prefetch(inputs: Sequence[T], load: Callable[[T], L], workers: int = 2, ahead: int = 4) -> Iterator[tuple[T, L]]:
    """Yield ``(input, load(input))`` in order while a thread pool loads the next ``ahead``."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        pending: deque = deque()
        it = iter(inputs)
        for item in it:
            pending.append((item, pool.submit(load, item)))
            if len(pending) >= ahead:
                break
        try:
            while pending:
                item, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(load, nxt)))
                yield item, fut.result()
        finally:
            for _, f in pending:
                f.cancel()


def batch_groups(inputs: Sequence[T], batch_size: int) -> list[list[T]]:
    """Consecutive inputs, ``batch_size`` per forward pass: fixed by the input order alone."""
    inputs = list(inputs)
    return [inputs[i : i + batch_size] for i in range(0, len(inputs), max(1, batch_size))]


def run_pipeline(
    groups: Sequence[Sequence[T]],
    load: Callable[[T], L],
    forward: Callable[[list[tuple[T, L]]], D],
    finish: Callable[[list[tuple[T, L]], D], R],
    hand_on: Callable[[list[tuple[T, L]], R], None],
    workers: int = 2,
    ahead: int = 4,
) -> None:
    """For each group: ``forward`` (calling thread) → ``finish`` (post thread) → ``hand_on`` (calling
    thread, in group order). At most two groups wait for post-processing, so memory stays bounded."""
    stream = prefetch([item for g in groups for item in g], load, workers, ahead)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="post") as post:
        try:
            for group in groups:
                items = [next(stream) for _ in group]
                out = forward(items)
                pending.append((items, post.submit(finish, items, out)))
                while pending and (len(pending) > 1 or pending[0][1].done()):
                    done_items, fut = pending.popleft()
                    hand_on(done_items, fut.result())
            while pending:
                done_items, fut = pending.popleft()
                hand_on(done_items, fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()
            stream.close()
