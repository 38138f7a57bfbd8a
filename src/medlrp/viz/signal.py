"""The overlay picture of a signal (``NAME.overlay.png``): each lead's trace coloured by its relevance.

One row per lead: the trace in grey, over it the same trace coloured on a diverging map on
``[-max|R|, +max|R|]`` (red positive, blue negative, opacity growing with ``|R|``; never min-max
scaled), and at the right the lead's share of the total ``|R|``. A colour bar gives the scale.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlrp.io.image import write_atomic
from medlrp.viz.colors import CMAP, diverging_rgba, symmetric_limit

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def lead_summary(relevance: np.ndarray, leads: Sequence[str]) -> list[dict[str, float | str]]:
    """Per lead: the relevance sum, the share of the total ``|R|`` and the sample of largest ``|R|``."""
    r = np.asarray(relevance, dtype=np.float64)
    total = float(np.abs(r).sum()) or 1.0
    return [
        {
            "lead": str(name),
            "relevance_sum": float(r[i].sum()),
            "abs_share": float(np.abs(r[i]).sum() / total),
            "peak_sample": int(np.abs(r[i]).argmax()),
        }
        for i, name in enumerate(leads)
    ]


def signal_overlay_png(
    signal: np.ndarray, relevance: np.ndarray, leads: Sequence[str], ms_per_sample: float, title: str = ""
) -> bytes:
    """Render the overlay as PNG bytes; ``signal`` and ``relevance`` are ``(leads, samples)``."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if signal.shape != relevance.shape:
        raise ValueError(f"signal {signal.shape} and relevance {relevance.shape} differ in shape")
    n_leads, samples = signal.shape
    limit = symmetric_limit(relevance)
    summary = lead_summary(relevance, leads)
    t = np.arange(samples) * ms_per_sample / 1000.0
    fig = Figure(figsize=(11, 0.75 * n_leads + 1.0), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_leads, 1, sharex=True))
    for i, ax in enumerate(axes):
        y = signal[i]
        ax.plot(t, y, color="0.65", linewidth=0.6)
        points = np.stack([t, y], axis=1)
        segments = np.stack([points[:-1], points[1:]], axis=1)
        # each segment takes the mean relevance of its two samples
        colours = diverging_rgba((relevance[i, :-1] + relevance[i, 1:]) / 2, limit) / 255.0
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=1.8))
        ax.set_ylabel(str(leads[i]), rotation=0, ha="right", va="center", fontsize=8)
        ax.text(
            1.005,
            0.5,
            f"{100 * summary[i]['abs_share']:.0f}%",
            transform=ax.transAxes,
            fontsize=7,
            va="center",
        )
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel("time (s)" if ms_per_sample != 1.0 else "sample", fontsize=8)
    return finish_png(fig, axes, limit, title, "relevance (right: lead's share of |R|)", shrink=0.5)


def finish_png(
    fig: Figure,
    axes: Any,
    limit: float,
    title: str,
    label: str,
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


def write_signal_overlay(
    path: str | Path,
    signal: np.ndarray,
    relevance: np.ndarray,
    leads: Sequence[str],
    ms_per_sample: float,
    title: str = "",
) -> Path:
    """Render (see :func:`signal_overlay_png`) and write the PNG atomically; return ``path``."""
    data = signal_overlay_png(signal, relevance, leads, ms_per_sample, title)
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))
