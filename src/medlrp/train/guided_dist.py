"""Training under ``torchrun``: DistributedDataParallel with the same result as one process.

Every process builds the same model (same seed) and draws the same sequence of mini-batches (same
generator); each takes a contiguous shard of every batch. The loss runs inside a
:class:`~torch.nn.parallel.DistributedDataParallel` wrapper around a small step module, so DDP's
gradient all-reduce fires on ``loss.backward()``, while the explanation is computed on the *plain*
model inside it (the explainer never sees the wrapper; a wrapper's forward is not what should be
explained, and calling the wrapped module directly would bypass DDP's synchronisation).

Exactness: each shard's loss is scaled by ``world * n_shard / n_batch`` before DDP averages the
gradients over processes, so the gradient is the whole batch's mean gradient even for unequal shards;
:class:`~medlrp.train.guided.GuidedLoss` picks the cases to explain by their position in the whole
batch (``offset``). What differs from one process: BatchNorm in training mode normalises with each
shard's own statistics (as in any DDP run without SyncBatchNorm); models without batch statistics
(ViTs, LayerNorm/GroupNorm CNNs) give the one-process result within float tolerance.

Backend: ``gloo`` on CPU, ``nccl`` on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from medlrp.train.guided import GuidedLoss

__all__ = ["Distributed", "DistributedLoss", "guided_loss_fn", "init_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and prints."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this process's contiguous shard of ``n`` cases."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


def init_distributed() -> Distributed | None:
    """Join the ``torchrun`` process group if this is one of several processes; else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size())


class _Step(nn.Module):
    """What DDP wraps: the model plus the loss, so DDP's forward is the whole loss computation."""

    def __init__(self, model: nn.Module, criterion: GuidedLoss) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        has_mask: torch.Tensor | None,
        offset: int,
        scale: float,
        partner: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = self.criterion(self.model, x, y, mask, has_mask, offset, partner)
        return loss * scale, parts


class DistributedLoss:
    """A ``loss_fn(model, batch)`` for :func:`medlrp.train.fit` that trains with DDP.

    The DDP wrapper is built on the first call, around the model ``fit`` passes (built by then).

    Args:
        criterion: The loss (``GuidedLoss(0)`` trains plainly).
        info: This process's rank and the world size (:func:`init_distributed`).
    """

    def __init__(self, criterion: GuidedLoss, info: Distributed) -> None:
        self.criterion = criterion
        self.info = info
        self._model: nn.Module | None = None
        self._ddp: nn.parallel.DistributedDataParallel | None = None

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Run this process's shard of ``batch``; return the loss and the batch-wide mean parts."""
        if self._ddp is None or self._model is not model:
            # each process keeps its own BatchNorm statistics (see the module docstring)
            self._ddp = nn.parallel.DistributedDataParallel(
                _Step(model, self.criterion), forward_sync_buffers=False
            )
            self._model = model
        n = len(batch.label)
        start, stop = self.info.shard(n)
        # the guidance bound sees the whole batch's gradients: this shard's, weighted by its share, summed
        self.criterion.reduce_gradients = partial(_weighted_sum, weight=(stop - start) / n)
        self.criterion.whole_batch = n  # every process counts the cases of the whole batch
        loss, parts = self._ddp(
            batch.x[start:stop],
            batch.label[start:stop],
            batch.mask[start:stop],
            batch.has_mask[start:stop],
            start,
            self.info.world * (stop - start) / n,
            batch.x.roll(1, dims=0)[start:stop],  # each case's reference partner, as in one process
        )
        return loss, _mean_parts(parts, (stop - start) / n)


def _weighted_sum(t: torch.Tensor, weight: float) -> torch.Tensor:
    """``sum over processes of weight * t`` (every process gets the sum)."""
    t = t * weight
    dist.all_reduce(t)
    return t


def _mean_parts(parts: dict[str, torch.Tensor], weight: float) -> dict[str, float]:
    """Batch-wide means of per-shard means (one all-reduce for all of them)."""
    keys = sorted(parts)
    values = torch.tensor([float(parts[k]) * weight for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def guided_loss_fn(
    criterion: GuidedLoss, info: Distributed | None
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]:
    """``criterion`` as a ``loss_fn`` for :func:`medlrp.train.fit`: plain, or DDP when ``info`` is given."""
    if info is None:
        return criterion.loss_fn()
    return DistributedLoss(criterion, info)
