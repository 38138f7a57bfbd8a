"""Pictures for the HTML report: the image and one relevance layer per method, as ``data:`` URIs.

A 2D case gives one picture per layer; a volume gives one per axial slice (at most ``max_slices``, evenly
spaced), so the report's slice slider only swaps pictures. Relevance layers are RGBA: the diverging colour
map with alpha growing with ``|R|``, coloured on the case's symmetric limit ``[-max|R|, +max|R|]`` over
the whole volume, so slices compare.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image as PILImage

from medlrp.io.windowing import to_gray
from medlrp.viz.colors import diverging_rgba, symmetric_limit
from medlrp.viz.orient import display_spacing, oriented_slice, slice_axis


def png_data_uri(array: np.ndarray, max_side: int = 384) -> str:
    """Encode a ``uint8`` grey ``(H, W)`` or RGBA ``(H, W, 4)`` array as a PNG ``data:`` URI.

    Pictures larger than ``max_side`` are shrunk (bilinear) first to keep the report small.
    """
    im = PILImage.fromarray(np.ascontiguousarray(array))
    scale = max_side / max(im.size)
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PILImage.BILINEAR)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def bytes_data_uri(data: bytes, mime: str = "image/png") -> str:
    """Any bytes as a ``data:`` URI."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def case_view(
    image: np.ndarray,
    relevances: dict[str, np.ndarray],
    affine: np.ndarray,
    window: tuple[float, float],
    max_slices: int = 96,
    max_side: int = 384,
) -> dict[str, Any]:
    """The report's pictures of one case.

    Args:
        image: ``(H, W)`` or ``(D, H, W)`` intensities (one channel).
        relevances: ``method -> map`` of ``image``'s shape.
        affine: The image's voxel-to-world matrix.
        window: ``(low, high)`` grey-level limits.
        max_slices: Most slices a volume shows in the slider.
        max_side: Largest picture side in pixels.

    Returns:
        ``{"dims", "aspect", "base", "layers", "limits"}`` and for volumes ``"slices"`` (1-based slice
        numbers), ``"start"`` (the slider's first position: the slice of largest ``|R|``), ``"total"``
        (slices in the volume) and ``"plane"``.
        ``base`` and each ``layers[method]`` are one URI (2D) or a list of URIs (3D).
    """
    limits = {m: symmetric_limit(r) for m, r in relevances.items()}
    if image.ndim == 2:
        spacing = np.linalg.norm(affine[:3, :2], axis=0)
        return {
            "dims": 2,
            "aspect": float(spacing[0] / spacing[1]) * image.shape[0] / image.shape[1],
            "base": png_data_uri(to_gray(image, *window), max_side),
            "layers": {
                m: png_data_uri(diverging_rgba(r, limits[m]), max_side) for m, r in relevances.items()
            },
            "limits": limits,
        }
    axis = slice_axis(affine, "axial")
    n = image.shape[axis]
    max_side = min(max_side, 256)  # many slices per layer: keep the report to a few MB per case
    picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    first = next(iter(relevances.values()))
    peak = int(np.unravel_index(int(np.abs(first).argmax()), first.shape)[axis])
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    rows, cols = display_spacing(spacing, affine, axis)
    sample = oriented_slice(image, affine, axis, 0)
    return {
        "dims": 3,
        "plane": "axial",
        "aspect": rows / cols * sample.shape[0] / sample.shape[1],
        "slices": [int(i) + 1 for i in picks],
        "total": int(n),
        "start": int(np.abs(picks - peak).argmin()),
        "base": [
            png_data_uri(to_gray(oriented_slice(image, affine, axis, i), *window), max_side) for i in picks
        ],
        "layers": {
            m: [
                png_data_uri(diverging_rgba(oriented_slice(r, affine, axis, i), limits[m]), max_side)
                for i in picks
            ]
            for m, r in relevances.items()
        },
        "limits": limits,
    }
