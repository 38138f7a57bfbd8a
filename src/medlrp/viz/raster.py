"""Pictures drawn with numpy and Pillow, fast enough to write one per case beside a GPU.

Panels are scaled with nearest-neighbour sampling (every voxel stays one flat colour, as matplotlib's
``interpolation="nearest"``), mask outlines are the border pixels of the scaled mask, text is drawn with
Pillow's bundled font, and PNGs are encoded here (:func:`png_bytes`): at a fast zlib level, as the
encoding at Pillow's default level cost more than the drawing.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

#: zlib level of written PNGs: levels 1-3 encode about 10x faster than 6 for files 10-20% larger.
PNG_LEVEL = 3
#: PNG colour type per number of channels (grey, RGB, RGBA).
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}


def png_bytes(image: np.ndarray | PILImage.Image) -> bytes:
    """Encode a ``uint8`` grey ``(H, W)``, RGB or RGBA array (or a Pillow image of those) as PNG bytes.

    Every row is written with PNG's "up" filter (the difference to the row above, computed by numpy):
    nearest-scaled pictures repeat rows, which then compress to almost nothing at a fast zlib level.
    Pillow's encoder chooses a filter per row and took 10-20 times longer on the overlays.
    """
    a = np.ascontiguousarray(np.asarray(image))
    channels = 1 if a.ndim == 2 else a.shape[-1]
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or channels not in _COLOUR_TYPE:
        raise ValueError(f"png_bytes takes uint8 (H, W), (H, W, 3) or (H, W, 4), not {a.dtype} {a.shape}")
    rows, cols = a.shape[:2]
    flat = a.reshape(rows, cols * channels)
    filtered = np.empty((rows, cols * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "up"
    filtered[:, 1:] = flat
    filtered[1:, 1:] -= flat[:-1]  # uint8 arithmetic wraps modulo 256, as PNG's filters do
    header = struct.pack(">IIBBBBB", cols, rows, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def fit(shape: tuple[int, int], aspect: float, height: int, width: int) -> tuple[int, int]:
    """The largest ``(rows, cols)`` in pixels inside ``height x width`` showing ``shape`` with ``aspect``.

    ``aspect`` is a voxel's displayed height over its width (matplotlib's ``imshow(aspect=...)``).
    """
    if not (math.isfinite(aspect) and aspect > 0):  # a degenerate affine: square voxels
        aspect = 1.0
    ratio = aspect * shape[0] / shape[1]  # displayed height over width
    rows, cols = (height, height / ratio) if height / ratio <= width else (width * ratio, width)
    return max(1, int(round(rows))), max(1, int(round(cols)))


def nearest(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``array`` (``(H, W, ...)``) resampled to ``rows x cols`` by nearest-neighbour (pixel centres)."""
    r = np.minimum(((np.arange(rows) + 0.5) * array.shape[0] / rows).astype(np.intp), array.shape[0] - 1)
    c = np.minimum(((np.arange(cols) + 0.5) * array.shape[1] / cols).astype(np.intp), array.shape[1] - 1)
    return np.take(np.take(array, r, axis=0), c, axis=1)  # two takes: 4x faster than one fancy index


def outline(mask: np.ndarray) -> np.ndarray:
    """The border of a 2D mask: mask pixels with a 4-neighbour outside the mask (or at the edge)."""
    m = np.asarray(mask) > 0
    padded = np.pad(m, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~inner


def boundary(mask: np.ndarray) -> np.ndarray:
    """A two-pixel line centred on a 2D mask's border, as a contour at 0.5 is drawn.

    The line is :func:`outline` and the outside pixels with a 4-neighbour in the mask.
    """
    m = np.asarray(mask) > 0
    padded = np.pad(m, 1, constant_values=False)
    touched = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return outline(m) | (touched & ~m)


@functools.lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=1024)
def _rendered(line: str, size: int, anchor: str, rotate: bool = False) -> tuple[PILImage.Image, int, int]:
    """``line``'s coverage (an ``L`` mask), drawn once, and its offset from the anchor point.

    The same titles and tick labels recur on every case: drawing them from this cache saves most of
    the text's cost.
    """
    box = font(size).getbbox(line, anchor=anchor)
    mask = PILImage.new("L", (max(1, box[2] - box[0]), max(1, box[3] - box[1])), 0)
    ImageDraw.Draw(mask).text((-box[0], -box[1]), line, fill=255, font=font(size), anchor=anchor)
    if rotate:
        mask = mask.transpose(PILImage.Transpose.ROTATE_90)
        return mask, -(mask.width // 2), -(mask.height // 2)
    return mask, box[0], box[1]


def text(canvas: PILImage.Image, xy: tuple[float, float], line: str, size: int, anchor: str) -> None:
    """Draw one line of black text at ``xy`` with Pillow's ``anchor`` (e.g. ``"mt"``: middle, top)."""
    mask, dx, dy = _rendered(line, size, anchor)
    canvas.paste((0, 0, 0), (int(round(xy[0])) + dx, int(round(xy[1])) + dy), mask)


def vertical_text(canvas: PILImage.Image, xy: tuple[int, int], line: str, size: int) -> None:
    """Draw ``line`` rotated by 90 degrees (reading upwards), centred on ``xy``."""
    mask, dx, dy = _rendered(line, size, "mm", rotate=True)
    canvas.paste((0, 0, 0), (xy[0] + dx, xy[1] + dy), mask)


def nice_ticks(limit: float, most: int = 9) -> tuple[np.ndarray, int]:
    """Tick values on ``[-limit, limit]`` at a round step (1, 2, 2.5 or 5 times a power of ten).

    Returns the ticks (zero among them) and the decimals that write the step exactly.
    """
    power = math.floor(math.log10(limit)) - 1
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0):
        step = mantissa * 10.0**power
        k = math.floor(limit / step * (1 + 1e-9))
        if 2 * k + 1 <= most:
            decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if mantissa in (2.5, 25.0) else 0)
            return np.arange(-k, k + 1) * step, decimals
    return np.array([-limit, 0.0, limit]), 3  # not reached: 50 * 10**power > limit / 4
