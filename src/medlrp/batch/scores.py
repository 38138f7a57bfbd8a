"""Localisation scores of a case's relevance against its mask, from :mod:`medlrp.metrics` when present."""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

#: The medlrp.metrics functions a batch run reports for cases that have a mask.
MASK_METRICS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game")


def mask_scores(relevance: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """Score one case on the input grid.

    Args:
        relevance: ``(*spatial)`` relevance (summed over channels).
        mask: ``(*spatial)`` mask; non-zero marks the region.

    Returns:
        ``{metric name: value}`` for each of :data:`MASK_METRICS` that :mod:`medlrp.metrics` provides;
        ``None`` where the value is undefined (e.g. an empty mask); empty without the metrics module.
    """
    try:
        metrics = importlib.import_module("medlrp.metrics")
    except ImportError:
        return {}
    r = torch.as_tensor(np.asarray(relevance, dtype=np.float64))[None, None]
    m = torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float64)[None, None]
    scores: dict[str, float | None] = {}
    for name in MASK_METRICS:
        fn = getattr(metrics, name, None)
        if fn is not None:
            value = float(torch.as_tensor(fn(r, m)).reshape(-1)[0])
            scores[name] = value if math.isfinite(value) else None  # JSON has no NaN
    return scores
