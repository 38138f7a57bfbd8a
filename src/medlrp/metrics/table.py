"""The evaluation summary: mean and 95% confidence interval per method and metric, and a ranking.

:func:`summary_table` returns the table as data, and :func:`table_markdown` / :func:`table_csv` render
it; the HTML report embeds the Markdown (``medlrp.report.ReportSection(markdown=...)``).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from scipy import stats

from medlrp.metrics.suite import METRIC_INFO, METRICS, EvaluationResult


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of the finite values: ``(mean, low, high, n)``.

    NaN values (no mask, undefined) are left out; with one value the interval is the value itself.
    """
    v = [float(a) for a in values if a is not None and math.isfinite(a)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = sum(v) / n
    if n == 1:
        return mean, mean, mean, 1
    sd = math.sqrt(sum((a - mean) ** 2 for a in v) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def summary_table(result: EvaluationResult) -> list[dict[str, Any]]:
    """One row per method and metric: ``method, metric, mean, ci_low, ci_high, n, higher_is_better``.

    Metrics without any finite value for a method (no masks, conservation for non-LRP) are left out.
    """
    rows = []
    for method in result.methods:
        for info in METRICS:
            mean, low, high, n = mean_ci(result.values.get(method, {}).get(info.name, []))
            if n:
                rows.append(
                    {"method": method, "metric": info.name, "mean": mean, "ci_low": low, "ci_high": high,
                     "n": n, "higher_is_better": info.higher_is_better}
                )  # fmt: skip
    return rows


def ranking(result: EvaluationResult) -> list[dict[str, Any]]:
    """Methods ordered by their mean rank over the ranked metrics every method has (1 = best).

    Returns:
        ``[{"method", "mean_rank", "ranks": {metric: rank}}]``, best first.
    """
    means = {(r["method"], r["metric"]): r["mean"] for r in summary_table(result)}
    metrics = [
        m.name
        for m in METRICS
        if m.ranked and result.methods and all((meth, m.name) in means for meth in result.methods)
    ]
    ranks: dict[str, dict[str, float]] = {m: {} for m in result.methods}
    for metric in metrics:
        sign = -1.0 if METRIC_INFO[metric].higher_is_better else 1.0
        scores = {m: sign * means[(m, metric)] for m in result.methods}
        for m, rank in zip(result.methods, stats.rankdata([scores[m] for m in result.methods]), strict=True):
            ranks[m][metric] = float(rank)
    out = [
        {
            "method": m,
            "mean_rank": sum(ranks[m].values()) / len(metrics) if metrics else math.nan,
            "ranks": ranks[m],
        }
        for m in result.methods
    ]
    return sorted(out, key=lambda r: (r["mean_rank"], r["method"]))


def _fmt(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} ± {(high - low) / 2:.3f}"


def table_markdown(result: EvaluationResult) -> str:
    """The summary as Markdown: a methods x metrics table, a ranking table, notes, metric meanings.

    Each column header carries the metric's direction (↑ higher is better) and its range; cells are
    mean ± half-width of the 95% confidence interval.
    """
    rows = summary_table(result)
    cells = {(r["method"], r["metric"]): _fmt(r["mean"], r["ci_low"], r["ci_high"]) for r in rows}
    metrics = [m.name for m in METRICS if any((meth, m.name) in cells for meth in result.methods)]

    def head(m: str) -> str:
        info = METRIC_INFO[m]
        return f"{m} {'↑' if info.higher_is_better else '↓'} {info.range_text()}"

    lines = [
        "| method | " + " | ".join(head(m) for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for method in result.methods:
        lines.append(f"| {method} | " + " | ".join(cells.get((method, m), "–") for m in metrics) + " |")
    lines += ["", f"Mean ± half-width of the 95% confidence interval over {len(result.cases)} cases."]
    ranked = ranking(result)
    if ranked and not math.isnan(ranked[0]["mean_rank"]):
        used = list(ranked[0]["ranks"])
        lines += ["", "Ranking (mean rank over the ranked metrics, 1 = best):", ""]
        lines += [
            "| rank | method | mean rank | " + " | ".join(used) + " |",
            "|---|---|---|" + "---|" * len(used),
        ]
        lines += [
            f"| {i} | {r['method']} | {r['mean_rank']:.2f} | "
            + " | ".join(f"{r['ranks'][m]:g}" for m in used)
            + " |"
            for i, r in enumerate(ranked, 1)
        ]
    if result.unavailable:
        lines += ["", "Methods not evaluated:", ""]
        lines += [f"- {m}: {why}" for m, why in result.unavailable.items()]
    lines += ["", "Metrics (range in brackets):", ""]
    lines += [f"- {m} {METRIC_INFO[m].range_text()}: {METRIC_INFO[m].description}" for m in metrics]
    return "\n".join(lines) + "\n"


def table_csv(result: EvaluationResult) -> str:
    """The summary rows as CSV text."""
    buf = io.StringIO()
    fields = ["method", "metric", "mean", "ci_low", "ci_high", "n", "higher_is_better"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in summary_table(result):
        writer.writerow(row)
    return buf.getvalue()
