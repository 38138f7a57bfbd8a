"""Reading and preprocessing cases in DataLoader worker processes, one failure per case, never per batch.

A case that cannot be read or preprocessed becomes a :class:`FailedCase` carrying the one-line reason;
the batch goes on with the others. A mask is read as it is (on the input grid, where the outputs and
their scores live) and must have the image's spatial shape.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from medlrp.batch.cases import BatchCase
from medlrp.batch.orphans import die_with_parent
from medlrp.errors import InputError
from medlrp.io import Image, read_image
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits
from medlrp.models.preprocessing import Preprocessing


@dataclass
class ReadCase:
    """A case ready to explain: model input, raw image (for aligned outputs) and raw mask."""

    case: BatchCase
    x: torch.Tensor
    image: Image
    mask: Image | None
    read_s: float


@dataclass
class FailedCase:
    """A case that failed, with a one-line reason naming the file."""

    case: BatchCase
    reason: str


@dataclass
class LoadedBatch:
    """A collated batch: ``x`` stacks the inputs of ``cases`` (``None`` when all failed)."""

    cases: list[ReadCase]
    failed: list[FailedCase]
    x: torch.Tensor | None

    def pin_memory(self) -> LoadedBatch:
        """Pin ``x`` (the DataLoader calls this when ``pin_memory=True``)."""
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


def failure_reason(case: BatchCase, exc: BaseException, data: Path | None = None) -> str:
    """One line naming the file and the problem (InputError messages already name the file).

    With ``data`` (the dataset folder) the case's paths appear relative to it: a full path may carry a
    patient's name.
    """
    if isinstance(exc, InputError):
        text = str(exc)
    else:
        text = f"{case.image}: {type(exc).__name__}: {exc}"
    return relative_paths(" ".join(text.split()), case, data)


def relative_paths(text: str, case: BatchCase, data: Path | None) -> str:
    """``text`` with the case's file paths (and the data folder) written relative to ``data``."""
    if data is None:
        return text
    for path in (case.image, case.mask):
        if path is not None:
            for form in {str(path), str(Path(path).resolve())}:
                text = text.replace(form, Path(os.path.relpath(path, data)).as_posix())
    for form in {str(data), str(Path(data).resolve())}:
        text = text.replace(form.rstrip("/") + "/", "")
    return text


class CaseReader(Dataset[ReadCase | FailedCase]):
    """Map-style dataset over ``cases``; item ``i`` is a :class:`ReadCase` or a :class:`FailedCase`."""

    def __init__(
        self,
        cases: list[BatchCase],
        preprocessing: Preprocessing,
        limits: ReadLimits = DEFAULT_LIMITS,
        data: Path | None = None,
    ) -> None:
        self.cases = cases
        self.preprocessing = preprocessing
        self.limits = limits
        self.data = data

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> ReadCase | FailedCase:
        case = self.cases[index]
        start = time.perf_counter()
        try:
            image = read_image(case.image, limits=self.limits)
            x = self.preprocessing(image.array, source=str(case.image))
            mask = self._read_mask(case, image) if case.mask is not None else None
        except Exception as exc:  # any failure is this case's, reported and skipped
            return FailedCase(case, failure_reason(case, exc, self.data))
        return ReadCase(case, x, image, mask, time.perf_counter() - start)

    def _read_mask(self, case: BatchCase, image: Image) -> Image:
        assert case.mask is not None
        mask = read_image(case.mask, limits=self.limits)
        got, want = tuple(mask.array.shape[1:]), tuple(image.array.shape[1:])
        if got != want:
            raise InputError(f"{case.mask}: mask of shape {got}, image is {want}")
        return mask


def collate(items: list[ReadCase | FailedCase]) -> LoadedBatch:
    """Split a list of items into read and failed cases and stack the inputs."""
    cases = [it for it in items if isinstance(it, ReadCase)]
    failed = [it for it in items if isinstance(it, FailedCase)]
    x = torch.stack([c.x for c in cases]) if cases else None
    return LoadedBatch(cases, failed, x)


def make_loader(
    reader: CaseReader,
    batches: list[list[int]],
    workers: int,
    pin_memory: bool = False,
    close_fds: list[int] | None = None,
) -> DataLoader[LoadedBatch]:
    """A DataLoader yielding ``batches`` (lists of reader indices) in order, read by ``workers`` processes.

    ``close_fds`` are closed in each worker (descriptors the workers inherit but must not hold).
    """
    return DataLoader(
        reader,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=functools.partial(_init_reader, list(close_fds or []), os.getpid()),
    )


def _init_reader(fds: list[int], parent: int, worker_id: int) -> None:
    for fd in fds:
        os.close(fd)
    # A reader only reads: killing it with its parent loses nothing and leaves no process behind.
    die_with_parent(parent, signal.SIGKILL)
