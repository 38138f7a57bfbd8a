"""The overlay picture written per case and method (``NAME.overlay.png``).

2D: the image, the relevance over the image, and the relevance alone. 3D: axial, coronal and sagittal
slices through the relevance peak (the voxel of largest positive relevance) and a maximum intensity
projection (image: maximum; relevance: the value of largest magnitude along the ray, sign kept).
Colours: a diverging map on ``[-max|R|, +max|R|]`` with a colour bar (red: evidence for the class, blue:
against), never min-max scaled. A mask, when given, is outlined in green on every panel.

Drawn with numpy and Pillow (:mod:`medlrp.viz.raster`), not matplotlib: a batch run writes one per case
and method, and a matplotlib figure cost more than explaining the case (BENCHMARKS.md, "Explain
pipeline"). The picture is the one matplotlib drew (same size, layout, colours, scale and outline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from medlrp.io.image import atomic_path
from medlrp.io.windowing import to_gray
from medlrp.viz.colors import blend, diverging_rgba, relevance_peak, symmetric_limit
from medlrp.viz.orient import display_spacing, oriented_mip, oriented_slice, slice_axis
from medlrp.viz.raster import boundary, fit, nearest, nice_ticks, png_bytes, text, vertical_text

#: One panel: title, grey uint8 picture, RGBA relevance or None, voxel aspect, mask cut (all zero: none).
Panel = tuple[str, np.ndarray, np.ndarray | None, float, np.ndarray]
#: The mask outline's colour (also the report's), apart from the relevance colours.
OUTLINE_RGB = (0, 200, 0)
#: The colour bar's label.
BAR_LABEL = "relevance (red: for the class, blue: against)"
#: Pixels at the right for the colour bar, its tick labels and its label.
_BAR_WIDTH = 90


def _panels_2d(
    gray: np.ndarray, relevance: np.ndarray, affine: np.ndarray, limit: float, mask: np.ndarray
) -> list[Panel]:
    spacing = np.linalg.norm(affine[:3, :2], axis=0)
    aspect = float(spacing[0] / spacing[1]) if spacing[1] > 0 else 1.0
    rgba = diverging_rgba(relevance, limit)
    blank = np.full_like(gray, 255)
    return [
        ("image", gray, None, aspect, mask),
        ("relevance over image", gray, rgba, aspect, mask),
        ("relevance", blank, rgba, aspect, mask),
    ]


def _panels_3d(
    image: np.ndarray,
    relevance: np.ndarray,
    affine: np.ndarray,
    window: tuple[float, float],
    limit: float,
    mask: np.ndarray,
) -> list[Panel]:
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    peak = relevance_peak({"map": relevance})
    panels: list[Panel] = []
    for plane in ("axial", "coronal", "sagittal"):
        axis = slice_axis(affine, plane)
        index = int(peak[axis])
        gray = to_gray(oriented_slice(image, affine, axis, index), *window)
        rgba = diverging_rgba(oriented_slice(relevance, affine, axis, index), limit)
        rows, cols = display_spacing(spacing, affine, axis)
        cut = oriented_slice(mask, affine, axis, index)
        panels.append((f"{plane} {index + 1}/{image.shape[axis]}", gray, rgba, rows / cols, cut))
    axis = slice_axis(affine, "axial")
    gray = to_gray(oriented_mip(image, affine, axis), *window)
    rgba = diverging_rgba(oriented_mip(relevance, affine, axis, signed=True), limit)
    rows, cols = display_spacing(spacing, affine, axis)
    outline = oriented_mip(mask, affine, axis)
    panels.append(("maximum intensity projection", gray, rgba, rows / cols, outline))
    return panels


@dataclass
class OverlayPicture:
    """The overlay as pixels, before encoding.

    Attributes:
        pixels: ``uint8 (H, W, 3)``.
        panels: Per panel, where its picture lies: ``(top, left, rows, cols)`` in pixels.
        limit: The colour limit: the map is coloured on ``[-limit, limit]``.
    """

    pixels: np.ndarray
    panels: list[tuple[int, int, int, int]]
    limit: float


def overlay_panels(
    image: np.ndarray,
    relevance: np.ndarray,
    affine: np.ndarray,
    window: tuple[float, float],
    mask: np.ndarray | None = None,
) -> tuple[list[Panel], float]:
    """The panels of the overlay (see :func:`overlay_png` for the arguments) and the colour limit.

    Each panel is ``(title, grey uint8 picture, RGBA relevance or None, voxel aspect, mask cut)``.
    """
    if image.shape != relevance.shape:
        raise ValueError(f"image {image.shape} and relevance {relevance.shape} differ in shape")
    limit = symmetric_limit(relevance)
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
    region = np.zeros(image.shape) if mask is None else (np.asarray(mask) > 0).astype(np.float64)
    if image.ndim == 2:
        return _panels_2d(to_gray(image, *window), relevance, affine, limit, region), limit
    return _panels_3d(image, relevance, affine, window, limit, region), limit


def overlay_picture(panels: list[Panel], limit: float, title: str = "") -> OverlayPicture:
    """Draw ``panels`` (see :func:`overlay_panels`) side by side with the colour bar and ``title``."""
    # the size matplotlib drew it at (figsize in inches at 100 dpi): the same picture, drawn faster
    width, height = int(round(100 * (2.8 * len(panels) + 0.9))), 330
    canvas = PILImage.new("RGB", (width, height), "white")
    top = 30 if title else 8
    if title:
        text(canvas, (width / 2, 6), title, 14, "mt")
    slot = (width - _BAR_WIDTH - 6) / len(panels)
    box_h, box_w = height - top - 20 - 6, int(slot) - 8
    boxes = []
    for k, (name, gray, rgba, aspect, mask_cut) in enumerate(panels):
        rows, cols = fit(gray.shape, aspect, box_h, box_w)
        left = int(round(6 + k * slot + (slot - cols) / 2))
        picture_top = top + 20 + (box_h - rows) // 2
        rgb = np.repeat(gray[..., None], 3, axis=-1) if rgba is None else blend(gray, rgba)
        shown = nearest(rgb, rows, cols)
        if mask_cut.any():
            shown[boundary(nearest(mask_cut, rows, cols))] = OUTLINE_RGB
        canvas.paste(PILImage.fromarray(shown), (left, picture_top))
        text(canvas, (left + cols / 2, picture_top - 4), name, 12, "md")
        boxes.append((picture_top, left, rows, cols))
    _colour_bar(canvas, limit, top + 20, box_h)
    return OverlayPicture(np.asarray(canvas), boxes, limit)


def _colour_bar(canvas: PILImage.Image, limit: float, top: int, height: int) -> None:
    """The colour bar on ``[-limit, limit]`` (top: +limit), its ticks and its label, at the right."""
    height = int(height * 0.85)
    top += (int(height / 0.85) - height) // 2
    left = canvas.width - _BAR_WIDTH + 4
    values = np.linspace(limit, -limit, height)
    column = diverging_rgba(values, limit)[:, :3]
    canvas.paste(PILImage.fromarray(np.repeat(column[:, None], 14, axis=1)), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left - 1, top - 1, left + 14, top + height), outline=(0, 0, 0))
    ticks, decimals = nice_ticks(limit)
    for value in ticks:
        y = top + (limit - value) / (2 * limit) * (height - 1)
        draw.line((left + 14, y, left + 17, y), fill=(0, 0, 0))
        label = f"{value:.1e}" if decimals > 4 else f"{value:.{decimals}f}"
        text(canvas, (left + 19, y), "0" if value == 0 else label, 10, "lm")
    vertical_text(canvas, (canvas.width - 8, top + height // 2), BAR_LABEL, 10)


def overlay_png(
    image: np.ndarray,
    relevance: np.ndarray,
    affine: np.ndarray,
    window: tuple[float, float],
    title: str = "",
    mask: np.ndarray | None = None,
) -> bytes:
    """Render the overlay picture as PNG bytes.

    Args:
        image: ``(H, W)`` or ``(D, H, W)`` intensities (one channel).
        relevance: Same shape as ``image``, signed.
        affine: The image's voxel-to-world matrix (orients the 3D views, gives the aspect ratio).
        window: ``(low, high)`` grey-level limits for the image.
        title: A line above the panels.
        mask: The region the localisation scores are measured against (``image``'s shape), or None;
            its outline is drawn in green on every panel.
    """
    return png_bytes(overlay_picture(*overlay_panels(image, relevance, affine, window, mask), title).pixels)


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    relevance: np.ndarray,
    affine: np.ndarray,
    window: tuple[float, float],
    title: str = "",
    mask: np.ndarray | None = None,
) -> Path:
    """Render (see :func:`overlay_png`) and write the PNG atomically; return ``path``."""
    data = overlay_png(image, relevance, affine, window, title, mask)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
