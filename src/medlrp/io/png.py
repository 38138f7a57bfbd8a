"""PNG/JPEG reading (8- and 16-bit) and writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from medlrp.errors import InputError
from medlrp.io.image import Image, atomic_path
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits


def read_png(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Image:
    """Read a PNG or JPEG as ``(C, H, W)`` float32 with its raw values (16-bit kept as 0..65535).

    The size the header declares is checked against ``limits`` before any pixel is decoded.

    Raises:
        InputError: unreadable file, or a declared size beyond ``limits``.
    """
    limits.check_bytes(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns above its fixed pixel count; ``limits`` decides instead.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(path)
    except PILImage.DecompressionBombError as exc:
        raise InputError(f"{path}: refused by Pillow as a decompression bomb ({exc})") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    with im:
        width, height = im.size
        limits.check_shape(path, (height, width, len(im.getbands())), volume=False)
        return _decode(path, im)


def _decode(path: Path, im: PILImage.Image) -> Image:
    try:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            data = np.asarray(im, dtype=np.float32)[None]
        elif im.mode in ("L", "1", "P"):
            data = np.asarray(im.convert("L"), dtype=np.float32)[None]
        else:
            data = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
        fmt = (im.format or path.suffix.lstrip(".")).lower()
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    affine = np.eye(4)
    kind = "jpeg" if fmt in ("jpeg", "jpg") else "png"
    return Image(array=data, affine=affine, source=path, kind=kind, meta={"shape": list(data.shape)})


def write_png(path: str | Path, array: np.ndarray, bits: int = 8) -> Path:
    """Write a ``(H, W)`` gray or ``(H, W, 3|4)`` colour array atomically; integer data is written as is."""
    data = np.asarray(array)
    if bits == 16:
        im = PILImage.fromarray(data.astype(np.uint16))
    else:
        im = PILImage.fromarray(data.astype(np.uint8))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)
