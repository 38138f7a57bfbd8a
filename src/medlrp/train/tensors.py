"""Small datasets held in memory as one :class:`~medlrp.data.folder.Batch`, and seeded mini-batches.

Phantom-sized datasets (hundreds of 64x64 images) fit in memory many times over; reading them once
makes an epoch a few tensor slices instead of hundreds of PNG decodes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from medlrp.data.folder import Batch, FolderDataset, collate_cases
from medlrp.errors import InputError


def load_all(dataset: FolderDataset) -> Batch:
    """Read every case of ``dataset`` into one batch (``x``: ``(N, C, *size)``)."""
    if len(dataset) == 0:
        raise InputError(f"{dataset.root}: empty dataset")
    return collate_cases([dataset[i] for i in range(len(dataset))])


def subset(batch: Batch, index: torch.Tensor) -> Batch:
    """The cases of ``batch`` at ``index``."""
    return Batch(
        x=batch.x[index],
        label=batch.label[index],
        mask=batch.mask[index],
        has_mask=batch.has_mask[index],
        case_id=[batch.case_id[i] for i in index.tolist()],
    )


def _starts(n: int, batch_size: int) -> list[int]:
    """Where each mini-batch of :func:`minibatches` begins (a lone last case joins its predecessor)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many mini-batches (training steps) :func:`minibatches` makes of ``n`` cases."""
    return len(_starts(n, batch_size))


def minibatches(
    data: Batch, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> Iterator[Batch]:
    """Yield mini-batches in a seeded random order, every case once.

    A lone last case joins its predecessor: BatchNorm cannot train on a batch of one.
    """
    n = len(data.label)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    starts = _starts(n, batch_size)
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        yield subset(data, order[start:stop])
