"""Curve plots of an evaluation (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from medlrp.io.image import atomic_path
from medlrp.metrics.suite import EvaluationResult

#: Line styles and markers cycled beside the colours: no two methods share colour, style and marker.
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_style(index: int) -> dict[str, str]:
    """Colour, line style and marker of the ``index``-th method (distinct for the first 40 methods)."""
    return {
        "color": f"C{index % 10}",
        "linestyle": STYLES[(index // 10 + index) % len(STYLES)],
        "marker": MARKERS[index % len(MARKERS)],
    }


def plot_curves(result: EvaluationResult, path: str | Path, *, ylabel: str = "target probability") -> Path:
    """Mean MoRF and LeRF region-perturbation curves of every method, side by side, legend outside."""
    from matplotlib.figure import Figure  # the object API never touches pyplot's global backend

    fig = Figure(figsize=(10.0, 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = {"morf": "most relevant first (MoRF: steep is good)", "lerf": "least relevant first (LeRF)"}
    for ax, key in zip(axes, ("morf", "lerf"), strict=True):
        for i, method in enumerate(result.methods):
            curve = result.curves.get(method, {}).get(key)
            if curve:
                steps = max(len(curve) - 1, 1)
                xs = [k / steps for k in range(len(curve))]
                every = max(1, steps // 8)
                ax.plot(xs, curve, label=method, markersize=4, markevery=every, **method_style(i))
        ax.set_xlabel("fraction of regions replaced")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle("Region perturbation (mean over cases)")
    if result.methods:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="method")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
