"""One job over several processes (``torchrun``): each rank takes every ``world``-th batch of
images, in the order one process would form them, so every image meets exactly the same batch
companions as in a single run and the merged output is byte-identical. Results travel to every rank
as Python objects over a gloo group (CPU), whatever device the model runs on; rank 0 writes.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def suffix(self) -> str:
        """A file-name part for this rank's own files ('' in a single process)."""
        return "" if self.world == 1 else f".rank{self.rank}of{self.world}"

    def take(self, groups: Sequence[T]) -> list[T]:
        return list(groups[self.rank :: self.world])

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def current_shard() -> Shard:
    """This process's shard: from ``torchrun``'s environment, joining a gloo group for the results."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():  # one GPU per rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Shard(rank, world)
