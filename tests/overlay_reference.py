"""The overlay as matplotlib drew it before medlrp drew it with numpy (the reference of test_viz_overlay).

The panels (``overlay_panels``: grey picture, relevance colours, aspect, mask cut) come from the
library; only the drawing is matplotlib's: ``imshow`` of the grey picture and of the RGBA relevance
(nearest), the mask as a ``contour`` at 0.5, a colour bar on ``[-limit, limit]`` with the ``bwr`` map,
constrained layout, 100 dpi.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image as PILImage

from medlrp.viz.overlay import Panel


def reference_overlay(
    panels: list[Panel], limit: float
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The matplotlib picture (``uint8 (H, W, 3)``) and each panel's ``(top, left, rows, cols)``."""
    fig = Figure(figsize=(2.8 * len(panels) + 0.9, 3.3), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (name, gray, rgba, aspect, outline) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="nearest")
        if rgba is not None:
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        if outline.any():
            ax.contour(outline, levels=[0.5], colors=["#00c800"], linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=Normalize(-limit, limit), cmap="bwr"), ax=list(np.atleast_1d(axes)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pixels = np.asarray(PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    boxes = []
    for ax in np.atleast_1d(axes):
        x0, y0, x1, y1 = ax.get_window_extent().extents
        top, bottom = pixels.shape[0] - y1, pixels.shape[0] - y0
        boxes.append((round(top), round(x0), round(bottom) - round(top), round(x1) - round(x0)))
    return pixels, boxes
