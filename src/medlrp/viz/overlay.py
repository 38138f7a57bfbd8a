"""The overlay picture written per case and method (``NAME.overlay.png``).

2D: the image, the relevance over the image, and the relevance alone. 3D: axial, coronal and sagittal
slices through the relevance peak (the voxel of largest positive relevance) and a maximum intensity
projection (image: maximum; relevance: the value of largest magnitude along the ray, sign kept).
Colours: a diverging map on ``[-max|R|, +max|R|]`` with a colour bar (red: evidence for the class, blue:
against), never min-max scaled. A mask, when given, is outlined in green on every panel.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlrp.io.image import atomic_path
from medlrp.io.windowing import to_gray
from medlrp.viz.colors import CMAP, diverging_rgba, relevance_peak, symmetric_limit
from medlrp.viz.orient import display_spacing, oriented_mip, oriented_slice, slice_axis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# title, grey uint8, rgba or None, aspect, mask slice (0/1; all zero: no outline)
_Panel = tuple[str, np.ndarray, np.ndarray | None, float, np.ndarray]
#: The mask outline's colour (the report's outline colour, apart from the relevance colours).
OUTLINE = "#00c800"


def _panels_2d(
    gray: np.ndarray, relevance: np.ndarray, affine: np.ndarray, limit: float, mask: np.ndarray
) -> list[_Panel]:
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
) -> list[_Panel]:
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    peak = relevance_peak({"map": relevance})
    panels: list[_Panel] = []
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
    from matplotlib.figure import Figure

    if image.shape != relevance.shape:
        raise ValueError(f"image {image.shape} and relevance {relevance.shape} differ in shape")
    limit = symmetric_limit(relevance)
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
    region = np.zeros(image.shape) if mask is None else (np.asarray(mask) > 0).astype(np.float64)
    if image.ndim == 2:
        panels = _panels_2d(to_gray(image, *window), relevance, affine, limit, region)
    else:
        panels = _panels_3d(image, relevance, affine, window, limit, region)
    fig = Figure(figsize=(2.8 * len(panels) + 0.9, 3.3), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (name, gray, rgba, aspect, outline) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="nearest")
        if rgba is not None:
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        if outline.any():
            ax.contour(outline, levels=[0.5], colors=[OUTLINE], linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    return finish_png(fig, axes, limit, title)


def finish_png(
    fig: Figure,
    axes: Any,
    limit: float,
    title: str,
    label: str = "relevance (red: for the class, blue: against)",
    shrink: float = 0.85,
) -> bytes:
    """Add the colour bar on ``[-limit, limit]`` and the title; return the figure as PNG bytes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(-limit, limit), cmap=CMAP)
    bar = fig.colorbar(mappable, ax=list(np.atleast_1d(axes)), shrink=shrink, pad=0.02)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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
