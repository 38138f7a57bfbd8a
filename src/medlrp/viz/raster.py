"""Pictures drawn with numpy and Pillow, fast enough to write one per case beside a GPU.

Panels are scaled with nearest-neighbour sampling (every voxel stays one flat colour, as matplotlib's
``interpolation="nearest"``), mask outlines are the border pixels of the scaled mask, text is drawn with
Pillow's bundled font, and PNGs are written at zlib level 1 (encoding at level 6 cost more than drawing).
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

#: zlib level of written PNGs: 1 encodes several times faster than Pillow's default 6, files ~20% larger.
PNG_LEVEL = 1


def png_bytes(image: np.ndarray | PILImage.Image) -> bytes:
    """Encode a ``uint8`` grey ``(H, W)``, RGB or RGBA array (or a Pillow image) as PNG bytes."""
    im = image if isinstance(image, PILImage.Image) else PILImage.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def fit(shape: tuple[int, int], aspect: float, height: int, width: int) -> tuple[int, int]:
    """The largest ``(rows, cols)`` in pixels inside ``height x width`` showing ``shape`` with ``aspect``.

    ``aspect`` is a voxel's displayed height over its width (matplotlib's ``imshow(aspect=...)``).
    """
    ratio = aspect * shape[0] / shape[1]  # displayed height over width
    rows, cols = (height, height / ratio) if height / ratio <= width else (width * ratio, width)
    return max(1, int(round(rows))), max(1, int(round(cols)))


def nearest(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``array`` (``(H, W, ...)``) resampled to ``rows x cols`` by nearest-neighbour (pixel centres)."""
    r = np.minimum(((np.arange(rows) + 0.5) * array.shape[0] / rows).astype(np.intp), array.shape[0] - 1)
    c = np.minimum(((np.arange(cols) + 0.5) * array.shape[1] / cols).astype(np.intp), array.shape[1] - 1)
    return array[r[:, None], c[None, :]]


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


def text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], line: str, size: int, anchor: str) -> None:
    """Draw one line of black text at ``xy`` with Pillow's ``anchor`` (e.g. ``"mt"``: middle, top)."""
    draw.text(xy, line, fill=(0, 0, 0), font=font(size), anchor=anchor)


def vertical_text(canvas: PILImage.Image, xy: tuple[int, int], line: str, size: int) -> None:
    """Paste ``line`` rotated by 90 degrees (reading upwards), centred on ``xy``."""
    box = font(size).getbbox(line)
    strip = PILImage.new("RGB", (box[2] - box[0] + 2, box[3] - box[1] + 2), "white")
    ImageDraw.Draw(strip).text((1 - box[0], 1 - box[1]), line, fill=(0, 0, 0), font=font(size))
    strip = strip.transpose(PILImage.Transpose.ROTATE_90)
    canvas.paste(strip, (xy[0] - strip.width // 2, xy[1] - strip.height // 2))


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
