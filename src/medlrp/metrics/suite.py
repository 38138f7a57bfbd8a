"""Every method on every case: the measurements behind ``medlrp evaluate``.

:func:`evaluate_methods` explains each batch with each method and scores the maps with the metrics of
:data:`METRICS`; the result keeps one value per case, method and metric, plus the mean perturbation
curves. :mod:`medlrp.metrics.table` turns it into the summary table (CSV, Markdown, data for the report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medlrp.errors import MedlrpError
from medlrp.explanation import Explanation
from medlrp.metrics.complexity import entropy, sparseness
from medlrp.metrics.conservation import conservation_error
from medlrp.metrics.curves import aopc, area_between
from medlrp.metrics.localisation import (
    attribution_localisation,
    pointing_game,
    relevance_rank_accuracy,
)
from medlrp.metrics.perturbation import region_perturbation
from medlrp.metrics.randomisation import randomization_check
from medlrp.registry import METHODS

#: What a metric's function takes: ``"curves"``: ``(morf, lerf)`` region-perturbation curves;
#: ``"relevance"``: ``(relevance,)``; ``"mask"``: ``(relevance, mask)`` (NaN for cases without a mask);
#: ``"conserving"``: ``(explanation,)`` (NaN for methods that do not conserve relevance); ``"model"``:
#: ``(model, x, explanation, method, options)`` (the randomisation check, skipped when switched off).
NEEDS = ("curves", "relevance", "mask", "conserving", "model")


@dataclass(frozen=True)
class MetricInfo:
    """One metric of the evaluation: its function and how to read its column of the table.

    ``low`` and ``high`` bound every value the metric can take (``math.inf`` where unbounded); the
    report prints the range beside the name and a test checks that no value leaves it. ``function``
    returns one value per case; ``needs`` (one of :data:`NEEDS`) says what it takes.
    """

    name: str
    higher_is_better: bool
    ranked: bool
    description: str
    needs: str
    function: Callable[..., torch.Tensor]
    low: float = 0.0
    high: float = 1.0

    def range_text(self) -> str:
        """``[0, 1]``, ``[-1, 1]``, ``[0, inf)``: the metric's range as text."""

        def bound(v: float) -> str:
            return ("-" if v < 0 else "") + "inf" if math.isinf(v) else f"{v:g}"

        return f"{'(' if math.isinf(self.low) else '['}{bound(self.low)}, {bound(self.high)}" + (
            ")" if math.isinf(self.high) else "]"
        )


_INF = math.inf


def _aopc_morf(morf: torch.Tensor, lerf: torch.Tensor) -> torch.Tensor:
    return aopc(morf)


def _last_layer_similarity(
    model: torch.nn.Module, x: torch.Tensor, e: Explanation, method: str, options: dict[str, Any]
) -> torch.Tensor:
    sims = randomization_check(model, x, e.target, method, **options)
    return list(sims.values())[-1]


#: The metrics of the evaluation, in table order. ``ranked`` ones enter the overall ranking. The
#: perturbation metrics score softmax probabilities (``softmax=True``, the command's setting), hence
#: their ``[-1, 1]`` range. The signed relevance share inside the mask is not among them: with negative
#: relevance it is unbounded (see :func:`medlrp.metrics.relevance_mass_accuracy`).
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("aopc_morf", True, True, "AOPC: mean drop of the class probability as the most relevant "
               "patches are replaced first", "curves", _aopc_morf, -1.0, 1.0),
    MetricInfo("abpc", True, True, "area between the LeRF and MoRF region-perturbation curves "
               "(probability)", "curves", area_between, -1.0, 1.0),
    MetricInfo("positive_share_in_mask", True, True, "share of the positive relevance inside the mask",
               "mask", attribution_localisation),
    MetricInfo("top_k_share_in_mask", True, True, "share of the K most relevant voxels inside the mask "
               "(K = mask size; relevance rank accuracy)", "mask", relevance_rank_accuracy),
    MetricInfo("pointing_game", True, True, "hit rate: the relevance maximum lies in the mask", "mask",
               pointing_game),
    MetricInfo("randomisation_similarity", False, True, "Spearman correlation of |R| before and after "
               "randomising every layer (low: the map depends on the weights)", "model",
               _last_layer_similarity, -1.0, 1.0),
    MetricInfo("sparseness", True, False, "Gini index of |R|", "relevance", sparseness),
    MetricInfo("entropy", False, False, "entropy of |R| / sum |R| in nats (at most ln of the voxel "
               "count)", "relevance", entropy, 0.0, _INF),
    MetricInfo("conservation_error", False, False, "|sum R - logit| / |logit| (LRP only)", "conserving",
               conservation_error, 0.0, _INF),
)  # fmt: skip
METRIC_INFO = {m.name: m for m in METRICS}
#: The metrics scored on one case from its map and mask alone (``medlrp explain`` writes them per case).
CASE_METRICS: tuple[MetricInfo, ...] = tuple(m for m in METRICS if m.needs == "mask")


@dataclass
class EvaluationResult:
    """Per-case values and mean curves of an evaluation.

    Attributes:
        methods: The methods that ran, in the requested order.
        values: ``values[method][metric]`` is a list with one float per case (NaN where undefined).
        cases: Case ids, in the order of the value lists.
        curves: ``curves[method]["morf" | "lerf"]``: the mean region-perturbation curve.
        unavailable: ``method -> reason`` for requested methods that could not run.
        settings: The settings used (patch size, steps, similarity, ...), JSON-friendly.
    """

    methods: list[str] = field(default_factory=list)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-friendly; NaN written as None)."""
        clean = {m: {k: [_num(v) for v in vs] for k, vs in d.items()} for m, d in self.values.items()}
        return {
            "methods": self.methods,
            "cases": self.cases,
            "values": clean,
            "curves": self.curves,
            "unavailable": self.unavailable,
            "settings": self.settings,
        }


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def default_patch_size(spatial: Sequence[int]) -> list[int]:
    """Patches that tile the grid in 6 x 6 (2D) or 3 x 3 x 3 (3D) regions.

    Few regions keep the two curves per case and method cheap (one forward pass per region).
    """
    parts = 6 if len(spatial) == 2 else 3
    return [max(1, math.ceil(s / parts)) for s in spatial]


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]


def evaluate_methods(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    methods: Sequence[str],
    *,
    randomisation: bool = True,
    patch_size: Sequence[int] | None = None,
    softmax: bool = True,
    method_options: dict[str, dict[str, Any]] | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> EvaluationResult:
    """Explain every batch with every method and measure the maps.

    Args:
        model: The classifier (never changed).
        batches: ``(x, target, mask or None, case ids)`` per batch; ``mask`` rows that are all zero count
            as "no mask" (localisation metrics are NaN there).
        methods: Method names; one that is not registered or fails is recorded in ``unavailable`` and
            skipped, so one broken method does not sink the evaluation.
        randomisation: Run the cascading randomisation check (one explanation per layer and batch).
        patch_size: Region-perturbation patch; default :func:`default_patch_size`.
        softmax: Score probabilities in the perturbation curves.
        method_options: Extra options per method name (``{"lrp": {"composite": ...}}``).
        on_step: Called as ``on_step(method, cases)`` after each method on each batch (progress).

    Returns:
        The :class:`EvaluationResult`.
    """
    from medlrp.api import explain  # late: the facade imports this package

    result = EvaluationResult(methods=[], settings={"softmax": softmax, "randomisation": randomisation})
    active = []
    for m in methods:
        if m in METHODS:
            active.append(m)
        else:
            result.unavailable[m] = "not registered in this installation"
    sums: dict[str, dict[str, torch.Tensor]] = {}
    options = method_options or {}
    for x, target, mask, ids in batches:
        result.cases.extend(ids)
        size = patch_size or default_patch_size(x.shape[2:])
        result.settings["patch_size"] = list(size)
        for method in list(active):
            try:
                e = explain(model, x, target, method=method, **options.get(method, {}))
                row = _measure(model, x, e, mask, list(size), softmax)
                for info in METRICS:
                    if info.needs == "model" and randomisation:
                        row[info.name] = info.function(model, x, e, method, options.get(method, {})).tolist()
            except (MedlrpError, NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
                active.remove(method)
                result.unavailable[method] = f"{type(exc).__name__}: {exc}"
                result.values.pop(method, None)
                sums.pop(method, None)
                continue
            curves = row.pop("_curves")
            store = result.values.setdefault(method, {})
            for name, vals in row.items():
                store.setdefault(name, []).extend(float(v) for v in vals)
            acc = sums.setdefault(method, {})
            for key, c in curves.items():
                acc[key] = acc.get(key, 0) + c.sum(dim=0).double().cpu()
            if on_step is not None:
                on_step(method, len(ids))
    n = len(result.cases)
    result.methods = [m for m in methods if m in active]
    result.curves = {m: {k: (v / max(n, 1)).tolist() for k, v in sums[m].items()} for m in result.methods}
    return result


def _measure(
    model: torch.nn.Module,
    x: torch.Tensor,
    e: Explanation,
    mask: torch.Tensor | None,
    patch_size: list[int],
    softmax: bool,
) -> dict[str, Any]:
    """All per-case metrics of one explained batch (lists of floats), plus the raw curves."""
    r, t = e.relevance.detach(), e.target
    kw = {"patch_size": patch_size, "steps": 10**6, "softmax": softmax}
    morf = region_perturbation(model, x, r, t, order="morf", **kw)
    lerf = region_perturbation(model, x, r, t, order="lerf", **kw)
    has_mask = mask is not None and bool((mask != 0).any())
    conserving = METHODS.trait(e.method, "conserving")
    nan = [math.nan] * x.shape[0]
    row: dict[str, Any] = {"_curves": {"morf": morf, "lerf": lerf}}
    for info in METRICS:
        if info.needs == "curves":
            row[info.name] = info.function(morf, lerf).tolist()
        elif info.needs == "relevance":
            row[info.name] = info.function(r).tolist()
        elif info.needs == "mask":
            row[info.name] = info.function(r, mask).tolist() if has_mask else nan
        elif info.needs == "conserving":
            row[info.name] = info.function(e).tolist() if conserving else nan
    return row
