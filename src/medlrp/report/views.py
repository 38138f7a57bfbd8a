"""Pictures for the HTML report: the image, one relevance layer per method and the mask outline.

A 2D case is one plane with one picture per layer; a volume is three orthogonal planes (axial, coronal,
sagittal), each with one picture per slice (at most ``max_slices``, evenly spaced), so the report's
sliders only swap pictures; each plane opens at the relevance peak. Relevance layers are RGBA: the
diverging colour map (red: evidence for the class, blue: against) with alpha growing with ``|R|``,
coloured on the case's symmetric limit ``[-max|R|, +max|R|]`` over the whole volume, so slices compare.
The mask outline (where a mask was given) is an opaque green line on the mask's border.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from PIL import Image as PILImage

from medlrp.io.windowing import to_gray
from medlrp.viz.colors import diverging_rgba, relevance_peak, symmetric_limit
from medlrp.viz.orient import display_spacing, oriented_slice, slice_axis
from medlrp.viz.overlay import OUTLINE_RGB
from medlrp.viz.raster import outline, png_bytes


def png_data_uri(array: np.ndarray, max_side: int = 384) -> str:
    """Encode a ``uint8`` grey ``(H, W)`` or RGBA ``(H, W, 4)`` array as a PNG ``data:`` URI.

    Pictures larger than ``max_side`` are shrunk (bilinear) first to keep the report small.
    """
    im = PILImage.fromarray(np.ascontiguousarray(array))
    scale = max_side / max(im.size)
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PILImage.BILINEAR)
    return bytes_data_uri(png_bytes(im))


def bytes_data_uri(data: bytes, mime: str = "image/png") -> str:
    """Any bytes as a ``data:`` URI."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def outline_rgba(mask: np.ndarray) -> np.ndarray:
    """The mask's border as an RGBA picture: opaque green on the border, transparent elsewhere."""
    border = outline(mask)
    rgba = np.zeros((*border.shape, 4), dtype=np.uint8)
    rgba[border] = (*OUTLINE_RGB, 255)
    return rgba


def _plane(
    name: str,
    pictures: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]],
    slices: list[int],
    total: int,
    start: int,
    aspect: float,
    window: tuple[float, float],
    limits: dict[str, float],
    max_side: int,
) -> dict[str, Any]:
    """One plane of the viewer: per slice the image, each method's layer and the mask outline."""
    has_mask = pictures[0][2] is not None
    return {
        "name": name,
        "aspect": aspect,
        "slices": slices,
        "total": total,
        "start": start,
        "base": [png_data_uri(to_gray(img, *window), max_side) for img, _, _ in pictures],
        "layers": {
            m: [png_data_uri(diverging_rgba(maps[m], limits[m]), max_side) for _, maps, _ in pictures]
            for m in limits
        },
        "outline": [png_data_uri(outline_rgba(mk), max_side) for _, _, mk in pictures] if has_mask else None,
    }


def case_view(
    image: np.ndarray,
    relevances: dict[str, np.ndarray],
    affine: np.ndarray,
    window: tuple[float, float],
    max_slices: int = 64,
    max_side: int = 384,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report's pictures of one case.

    Args:
        image: ``(H, W)`` or ``(D, H, W)`` intensities (one channel).
        relevances: ``method -> map`` of ``image``'s shape.
        affine: The image's voxel-to-world matrix.
        window: ``(low, high)`` grey-level limits.
        max_slices: Most slices per plane a volume shows in the sliders.
        max_side: Largest picture side in pixels.
        mask: The region the localisation metrics score against (``image``'s shape), or None; drawn as
            an outline on every panel.

    Returns:
        ``{"dims", "limits", "peak", "planes"}``: ``limits[method]`` the symmetric colour limit, ``peak``
        the voxel of strongest positive evidence, ``planes`` a list (one plane for 2D images; axial,
        coronal and sagittal for volumes) of ``{"name", "aspect", "slices"`` (1-based slice numbers),
        ``"total"`` (slices in the volume), ``"start"`` (the slider's first position: the slice through
        ``peak``), ``"base"``, ``"layers"`` (method -> pictures), ``"outline"`` (pictures or None)``}``;
        each picture list holds one ``data:`` URI per slice shown.
    """
    limits = {m: symmetric_limit(r) for m, r in relevances.items()}
    peak = relevance_peak(relevances) if relevances else tuple(s // 2 for s in image.shape)
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
    if image.ndim == 2:
        spacing = np.linalg.norm(affine[:3, :2], axis=0)
        aspect = float(spacing[0] / spacing[1]) * image.shape[0] / image.shape[1]
        picture = (image, relevances, mask)
        plane = _plane("image", [picture], [1], 1, 0, aspect, window, limits, max_side)
        return {"dims": 2, "limits": limits, "peak": list(peak), "planes": [plane]}
    max_side = min(max_side, 256)  # many slices per layer: keep the report to a few MB per case
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    planes = []
    for name in ("axial", "coronal", "sagittal"):
        axis = slice_axis(affine, name)
        n = image.shape[axis]
        picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
        picks = np.unique(np.append(picks, peak[axis]))  # the peak's own slice is always shown

        def cut(volume: np.ndarray, i: int, axis: int = axis) -> np.ndarray:
            return oriented_slice(volume, affine, axis, int(i))

        pictures = [
            (
                cut(image, i),
                {m: cut(r, i) for m, r in relevances.items()},
                None if mask is None else cut(mask, i),
            )
            for i in picks
        ]
        rows, cols = display_spacing(spacing, affine, axis)
        sample = pictures[0][0]
        aspect = rows / cols * sample.shape[0] / sample.shape[1]
        start = int(np.flatnonzero(picks == peak[axis])[0])
        slices = [int(i) + 1 for i in picks]
        planes.append(_plane(name, pictures, slices, int(n), start, aspect, window, limits, max_side))
    return {"dims": 3, "limits": limits, "peak": list(peak), "planes": planes}
