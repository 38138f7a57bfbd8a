"""Curve plots of an evaluation (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from medlrp.io.image import atomic_path
from medlrp.metrics.suite import EvaluationResult


def plot_curves(result: EvaluationResult, path: str | Path, *, ylabel: str = "target probability") -> Path:
    """Mean MoRF (solid) and LeRF (dashed) region-perturbation curves of every method, one PNG."""
    from matplotlib.figure import Figure  # the object API never touches pyplot's global backend

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot()
    for i, method in enumerate(result.methods):
        colour = f"C{i % 10}"
        for key, style in (("morf", "-"), ("lerf", "--")):
            curve = result.curves.get(method, {}).get(key)
            if curve:
                steps = len(curve) - 1
                xs = [k / max(steps, 1) for k in range(len(curve))]
                label = f"{method} ({key.upper()})"
                ax.plot(xs, curve, style, color=colour, label=label)
    ax.set_xlabel("fraction of regions replaced")
    ax.set_ylabel(ylabel)
    ax.set_title("Region perturbation")
    ax.grid(alpha=0.3)
    if result.methods:
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
