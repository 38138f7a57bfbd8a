"""Where this process stands in a ``torchrun`` job: rank, world size, device, and a few collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is one process.
The process group (gloo: it only carries barriers and a few integers, so it works with or without GPUs)
exists only when the world has more than one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medlrp.devices import resolve_device

# Ranks wait for each other at the end of the run; a slow shard must not time the others out.
_BARRIER_TIMEOUT = datetime.timedelta(hours=48)


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """Read torchrun's environment, pick the device, and join the process group if needed.

        Args:
            device: ``"auto"`` (``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU), ``"cpu"``,
                ``"cuda"`` (``cuda:<LOCAL_RANK>``) or an explicit ``"cuda:K"``.
        """
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        ctx = cls(rank=rank, world_size=world, local_rank=local, device=resolve_device(device, local))
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=_BARRIER_TIMEOUT)
            ctx.owns_group = True
        return ctx

    @property
    def distributed(self) -> bool:
        """True when other ranks take part."""
        return self.world_size > 1 and dist.is_initialized()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.distributed:
            dist.barrier()

    def sum(self, value: int) -> int:
        """The sum of ``value`` over all ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t)
        return int(t.item())

    def agree(self, value: str) -> bool:
        """True when every rank passed the same ``value`` (every rank gets the same answer)."""
        if not self.distributed:
            return True
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return all(v == values[0] for v in values)

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
