"""Secondary Capture pictures: each slice of the scan in its window with the signed relevance over it.

A frame is the slice (grey levels of the display window) with the relevance laid over it in the same
diverging colours as ``NAME.overlay.png`` (blue negative, white zero, red positive; opacity grows with
``|R|``; limits ``±max|R|`` over the whole volume, so slices compare), a colour bar with its limits on the
right and a caption line on top. Small slices are enlarged (nearest neighbour) so the text stays legible.
The caption carries the method and class only: no file name, no identifier is burned into the pixels.
"""

from __future__ import annotations

import math

import numpy as np

from medlrp.io.windowing import to_gray
from medlrp.viz.colors import blend, diverging_rgba, symmetric_limit

#: Frames are enlarged by an integer factor until the slice is at least this many pixels high.
MIN_HEIGHT = 256
_BAR_WIDTH = 16
_LABEL_WIDTH = 72
_CAPTION_HEIGHT = 16


def overlay_frames(
    scan: np.ndarray, relevance: np.ndarray, window: tuple[float, float], caption: str = ""
) -> np.ndarray:
    """Render one RGB frame per slice.

    Args:
        scan: ``(H, W)`` or ``(S, H, W)`` intensities (one channel; MONOCHROME1 already mirrored).
        relevance: Same shape, signed.
        window: ``(low, high)`` grey-level limits for the scan.
        caption: A short line drawn above each slice.

    Returns:
        ``uint8 (S, H', W', 3)``; ``S`` is 1 for a 2D input.
    """
    if scan.shape != relevance.shape:
        raise ValueError(f"scan {scan.shape} and relevance {relevance.shape} differ in shape")
    scan3 = scan[None] if scan.ndim == 2 else scan
    rel3 = relevance[None] if relevance.ndim == 2 else relevance
    limit = symmetric_limit(rel3)
    factor = max(1, math.ceil(MIN_HEIGHT / scan3.shape[1]))
    bar = _colour_bar(scan3.shape[1] * factor, limit)
    frames = []
    for k in range(scan3.shape[0]):
        picture = blend(to_gray(scan3[k], *window), diverging_rgba(rel3[k], limit))
        picture = picture.repeat(factor, axis=0).repeat(factor, axis=1)
        body = np.concatenate([picture, np.zeros((picture.shape[0], 4, 3), np.uint8), bar], axis=1)
        text = f"{caption} | slice {k + 1}/{scan3.shape[0]}" if scan3.shape[0] > 1 else caption
        frames.append(np.concatenate([_caption(text, body.shape[1]), body], axis=0))
    return np.stack(frames)


def _colour_bar(height: int, limit: float) -> np.ndarray:
    """The colour bar (``+limit`` on top) and its three labels, ``uint8 (height, width, 3)``."""
    values = np.linspace(limit, -limit, height)[:, None].repeat(_BAR_WIDTH, axis=1)
    rgba = diverging_rgba(values, limit)
    bar = np.zeros((height, _BAR_WIDTH + _LABEL_WIDTH, 3), np.uint8)
    bar[:, :_BAR_WIDTH] = rgba[..., :3]
    labels = ((0, f"+{limit:.3g}"), (height // 2 - 5, "0"), (height - 12, f"-{limit:.3g}"))
    for top, text in labels:
        _draw_text(bar, text, max(0, top), _BAR_WIDTH + 4)
    return bar


def _caption(text: str, width: int) -> np.ndarray:
    strip = np.zeros((_CAPTION_HEIGHT, width, 3), np.uint8)
    _draw_text(strip, text, 2, 2)
    return strip


def _draw_text(canvas: np.ndarray, text: str, top: int, left: int) -> None:
    """Write ``text`` in white with Pillow's built-in bitmap font (clipped to the canvas)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(canvas)
    ImageDraw.Draw(picture).text((left, top), text, fill=(255, 255, 255))
    canvas[...] = np.asarray(picture)
