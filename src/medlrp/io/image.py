"""The :class:`Image` every reader returns, and atomic writing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Image:
    """A 2D image or 3D volume with its geometry.

    Attributes:
        array: ``float32``, ``(C, H, W)`` for 2D or ``(C, D, H, W)`` for 3D (``C`` channels, usually 1).
            NIfTI keeps the file's voxel order ``(i, j, k)``; DICOM gives ``(slices, rows, columns)`` with
            slices sorted by position; ``affine`` always maps the array's spatial voxel indices (in array
            order) to world millimetres (RAS+ as in NIfTI).
        affine: ``4x4`` voxel-to-world matrix for the array's spatial axes (2D images: a 3D affine whose
            last spatial axis is a single slice).
        source: The file or folder read.
        kind: ``"png"``, ``"jpeg"``, ``"nifti"`` or ``"dicom"``.
        meta: Non-identifying metadata (modality, spacing, window, ...). Patient identifiers are kept in
            ``identifiers`` and only written out when the user asks for them.
        identifiers: Patient identifiers found in the input (empty unless the format has them).
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.array.ndim - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in millimetres along the array's spatial axes."""
        cols = np.linalg.norm(self.affine[:3, : self.spatial_dims], axis=0)
        return tuple(float(c) for c in cols)


def _default_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the usual permissions (0666 minus the umask).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, else removed.

    Readers never see a half-written file: the rename is atomic on POSIX file systems.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths``, renamed onto them together once the block succeeds.

    A group of files (a relevance map and its overlay) appears complete or not at all: on failure every
    temporary is removed, and so is any file of the group already renamed into place.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            suffix = "".join(final.suffixes)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield list(temps)
        for tmp, final in zip(temps, finals, strict=True):
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, final)
            placed.append(final)
    except BaseException:
        for path in (*temps, *placed):
            path.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``path``; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
