"""Size limits checked from a file's header before its pixels are decoded (no decompression bombs).

A 140 KB PNG may declare 12000 x 12000 pixels, a gzipped NIfTI of a few kilobytes a volume of billions of
voxels: decoding them first would take minutes and gigabytes. Every reader reads the declared size from
the header and refuses the file beyond these limits. Raise them with ``--max-pixels``/``--max-voxels``/
``--max-bytes`` on the command line or ``ReadLimits(...)`` in Python (``read_image(path, limits=...)``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from medlrp.errors import InputError

#: Defaults: 2D images up to 64 Mi pixels (8192 x 8192), volumes up to 256 Mi voxels (512 x 512 x 1024),
#: files up to 4 GiB.
MAX_PIXELS = 2**26
MAX_VOXELS = 2**28
MAX_BYTES = 2**32


@dataclass(frozen=True)
class ReadLimits:
    """How large an input medlrp decodes.

    Attributes:
        max_pixels: Most pixels of a 2D image (rows x columns x samples per pixel).
        max_voxels: Most voxels of a volume (all its frames or slices, times samples per pixel).
        max_bytes: Most bytes of one input file (a DICOM series: of all its files together).
    """

    max_pixels: int = MAX_PIXELS
    max_voxels: int = MAX_VOXELS
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_voxels", "max_bytes"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")

    def check_shape(self, source: Path | str, shape: tuple[int, ...], volume: bool) -> None:
        """Refuse a declared ``shape`` (all its axes multiplied) beyond the pixel or voxel limit.

        Raises:
            InputError: one line naming the file, its declared size and the option raising the limit.
        """
        if any(int(n) < 0 for n in shape):
            raise InputError(f"{source}: the header declares a negative size {tuple(shape)}")
        count = math.prod(int(n) for n in shape)
        if volume:
            limit, what, option = self.max_voxels, "voxels", "--max-voxels"
        else:
            limit, what, option = self.max_pixels, "pixels", "--max-pixels"
        if count > limit:
            size = " x ".join(str(int(n)) for n in shape)
            raise InputError(
                f"{source}: declares {size} = {count:,} {what}, over the limit of {limit:,} "
                f"(a decompression bomb or a very large image; raise it with {option} if you trust the file)"
            )

    def check_bytes(self, source: Path | str, size: int | None = None) -> None:
        """Refuse a file (or ``size`` bytes) beyond the byte limit.

        Raises:
            InputError: one line naming the file and its size.
        """
        n = os.path.getsize(source) if size is None else int(size)
        if n > self.max_bytes:
            raise InputError(
                f"{source}: {n:,} bytes, over the limit of {self.max_bytes:,} (raise it with --max-bytes)"
            )


DEFAULT_LIMITS = ReadLimits()
