"""Metrics of a segmentation explanation: where the relevance lies, and what removing it does to the region.

* :func:`region_relevance_share`: the share of the positive relevance inside the explained region, or
  inside the region grown by ``margin`` voxels (its neighbourhood: a tumour's rim, the tissue around a
  lesion), ``sum(R+ in region) / sum(R+)``.
* ``pixel_flipping(..., region=r)`` and ``region_perturbation(..., region=r)`` (in
  :mod:`medlrp.metrics.perturbation`): the curves of the region's score, class ``target``'s logit sum
  over the region (as explained, see :mod:`medlrp.region`), while the input is perturbed in relevance
  order. The region is fixed on the clean input (``"predicted"``: where the class wins there), so every
  step scores the same positions. :func:`region_curves` runs them, one sample at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medlrp.cam.guard import logits
from medlrp.errors import InputError
from medlrp.metrics._common import check_batch, inference_mode_of
from medlrp.metrics.baselines import Baseline, make_baseline
from medlrp.metrics.localisation import _dilate, attribution_localisation
from medlrp.region import Goal, Region, resolve_goal
from medlrp.targets import Target

#: ``curve(scorer, x_i, relevance_i, baseline_i) -> (1, steps + 1)``: one sample's curve of a scorer
#: model whose output ``(M, 1)`` is the region's score.
Curve = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def region_relevance_share(relevance: torch.Tensor, region: torch.Tensor, *, margin: int = 0) -> torch.Tensor:
    """Share of the positive relevance inside ``region`` grown by ``margin`` voxels (Euclidean ball).

    Args:
        relevance: ``(N, C, *spatial)``, e.g. an explanation's ``relevance`` (channels are summed over
            by counting every element; a CAM's ``(N, 1, *spatial)`` alike).
        region: ``(N, 1, *spatial)`` mask (any non-zero value is inside), e.g. ``Explanation.region``;
            the same spatial shape as ``relevance``.
        margin: Voxels added around the region (0: the region itself).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty region or a map without positive relevance.
    """
    if int(margin) < 0:
        raise InputError(f"margin must be >= 0, got {margin}")
    check_batch(region, "region")
    grown = region.detach() != 0
    if margin > 0:
        grown = _dilate(grown.contiguous(), int(margin))
    return attribution_localisation(relevance, grown)


class _RegionScore(torch.nn.Module):
    """The region's score of one sample as a one-output model: ``(M, C, *spatial) -> (M, 1)``."""

    def __init__(self, model: torch.nn.Module, goal: Goal) -> None:
        super().__init__()
        self.model = model
        self.goal = goal

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every row is a perturbed copy of the one sample, so the goal repeats over the rows."""
        return self.goal.score(logits(self.model(inputs)))[:, None]


def region_curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target,
    region: Region,
    baseline: Baseline,
    softmax: bool | None,
    curve: Curve,
) -> torch.Tensor:
    """Per-sample perturbation curves of the region's score: ``(N, steps + 1)``.

    The model is evaluated on ``x`` once (eval mode, no gradients) to fix the target and region; then
    ``curve`` runs on each sample with a scorer returning that sample's region score as its one output.
    """
    if softmax:
        raise InputError("softmax does not apply with region=: the score is the region's logit sum")
    check_batch(x)
    with inference_mode_of(model):
        goal = resolve_goal(logits(model(x.detach())), target, region)
    if goal.region is None:  # pragma: no cover - resolve_goal refuses a region for a classifier
        raise InputError("region= applies to segmentation models")
    base = make_baseline(baseline, x)
    rows = []
    for i in range(x.shape[0]):
        scorer = _RegionScore(model, goal.select(torch.tensor([i], device=goal.target.device)))
        rows.append(curve(scorer, x[i : i + 1], relevance[i : i + 1], base[i : i + 1]))
    return torch.cat(rows)


__all__ = ["region_curves", "region_relevance_share"]
