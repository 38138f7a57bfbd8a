"""Faithfulness by perturbation: pixel flipping, region perturbation, deletion and insertion curves.

Every function returns one curve per sample, ``(N, steps + 1)``: the model's score of the target class on
the input after ``0, 1, ..., steps`` perturbation steps (column 0 is the clean input; for insertion, the
baseline). Summaries of the curves live in :mod:`medlrp.metrics.curves` (AOPC, AUC, MoRF-LeRF area).

Mapping to Quantus 0.6.0 (tested to agree on the same inputs):

* ``pixel_flipping(..., features_per_step=k, baseline=b, order="morf", softmax=s)`` equals
  ``quantus.PixelFlipping(features_in_step=k, perturb_baseline=b, normalise=False, abs=False)`` called
  with ``softmax=s``: Quantus returns ``curve[:, 1:]`` (it does not score the clean input).
  Quantus's default ``normalise=True`` (division by the batch's maximum) does not change the order;
  ``abs=True`` does: pass ``relevance.abs()`` here for that.
* ``region_perturbation(..., patch_size=p, steps=R, baseline=b)`` equals
  ``quantus.RegionPerturbation(patch_size=p, regions_evaluation=R, order="morf", perturb_baseline=b,
  normalise=False, abs=False)``, which returns ``curve[:, :1] - curve[:, 1:]`` (the drop). Patches tile the
  input from a centred zero padding as in Quantus; Quantus handles 2D images only, we also 3D volumes.
* ``"black"`` is each sample's minimum in both; numbers are used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medlrp.errors import InputError
from medlrp.metrics._common import broadcast_map, check_batch
from medlrp.metrics._curves import perturbation_curve, rank_units, stable_argsort, unit_order
from medlrp.metrics.baselines import Baseline, make_baseline
from medlrp.metrics.segmentation import region_curves
from medlrp.region import Region
from medlrp.targets import Target


def _units(x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Relevance per unit: a channel-1 map ranks voxels (all channels flip together), else each element."""
    check_batch(x)
    broadcast_map(relevance, x.shape, "relevance")
    return relevance.detach().to(x.device)


def _feature_path(
    x: torch.Tensor, relevance: torch.Tensor, features_per_step: int | None, order: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature order and per-step feature counts ``(N, steps + 1)`` of a pixel-flipping path."""
    scores = _units(x, relevance).flatten(1)
    total = scores.shape[1]
    step = features_per_step if features_per_step is not None else max(1, math.ceil(total / 100))
    if step < 1:
        raise InputError(f"features_per_step must be at least 1, got {step}")
    counts = torch.clamp(torch.arange(math.ceil(total / step) + 1) * step, max=total)
    return unit_order(scores, order, seed), counts.expand(x.shape[0], -1)


def pixel_flipping(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target = None,
    *,
    features_per_step: int | None = None,
    baseline: Baseline = 0.0,
    order: str = "morf",
    softmax: bool | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    region: Region = None,
) -> torch.Tensor:
    """Pixel flipping (Bach et al. 2015): replace features in relevance order and track the score.

    Args:
        model: Classifier ``(N, C, *spatial) -> (N, classes)``; never changed (eval mode, no gradients,
            every module's ``training`` flag restored).
        x: Input batch, 2D ``(N, C, H, W)`` or 3D ``(N, C, D, H, W)``.
        relevance: ``x``'s shape, or ``(N, 1, *spatial)``: then a feature is a voxel with all its channels.
        target: Class per sample; ``None`` takes each sample's argmax on ``x``.
        features_per_step: Features replaced per step; ``None`` gives at most 100 steps.
        baseline: The replacement (see :mod:`medlrp.metrics.baselines`): a number, ``"black"``,
            ``"mean"``, ``"blur"``, ``"noise"``, a tensor or a callable.
        order: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"``.
        softmax: Score the target's probability (default for classifiers, as Quantus) or its logit
            (False). Not with ``region``.
        batch_size: Perturbed inputs per forward pass; ``None`` picks a size from the input's size.
        seed: Seed of ``order="random"``.
        region: Segmentation models: ``"predicted"`` or a mask (see :mod:`medlrp.region`); the score
            is then class ``target``'s logit sum over the region fixed on ``x`` (see
            :mod:`medlrp.metrics.segmentation`).

    Returns:
        ``(N, steps + 1)`` with ``steps = ceil(features / features_per_step)``; column 0 scores ``x``,
        the last column the fully replaced input.
    """
    if region is not None:
        _units(x, relevance)
        return region_curves(
            model, x, relevance, target, region, baseline, softmax,
            lambda scorer, xi, ri, bi: pixel_flipping(
                scorer, xi, ri, 0, features_per_step=features_per_step, baseline=bi, order=order,
                softmax=False, batch_size=batch_size, seed=seed,
            ),
        )  # fmt: skip
    softmax = True if softmax is None else softmax
    path, counts = _feature_path(x, relevance, features_per_step, order, seed)
    base = make_baseline(baseline, x)
    return perturbation_curve(model, x, base, path, counts, target, softmax=softmax, batch_size=batch_size)


def deletion(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target = None,
    *,
    features_per_step: int | None = None,
    baseline: Baseline = 0.0,
    softmax: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Deletion curve (Petsiuk et al. 2018): :func:`pixel_flipping` with the most relevant first.

    Summarise with :func:`medlrp.metrics.auc` (lower is better).
    """
    return pixel_flipping(
        model, x, relevance, target, features_per_step=features_per_step, baseline=baseline,
        softmax=softmax, batch_size=batch_size,
    )  # fmt: skip


def insertion(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target = None,
    *,
    features_per_step: int | None = None,
    baseline: Baseline = "blur",
    softmax: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Insertion curve (Petsiuk et al. 2018): start from the baseline, restore the most relevant first.

    Column 0 scores the baseline, the last column ``x``. Summarise with :func:`medlrp.metrics.auc`
    (higher is better). Arguments as in :func:`pixel_flipping`.
    """
    path, counts = _feature_path(x, relevance, features_per_step, "morf", 0)
    return perturbation_curve(
        model, x, make_baseline(baseline, x), path, counts, target,
        softmax=softmax, batch_size=batch_size, insert=True,
    )  # fmt: skip


def _padding(size: int, patch: int) -> tuple[int, int]:
    """Centred padding up to a multiple of ``patch`` (floor before, ceil after, as Quantus)."""
    extra = (-size) % patch
    return extra // 2, extra - extra // 2


def patch_ranks(
    relevance: torch.Tensor, patch_size: Sequence[int], order: str, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """Rank non-overlapping patches by summed relevance; return a rank per voxel and the patch count.

    Args:
        relevance: ``(N, C, *spatial)``; channels are summed.
        patch_size: One size per spatial dimension.
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        seed: Seed of the random order.

    Returns:
        ``(N, 1, *spatial)`` int32 ranks (every voxel of a patch has its patch's rank) and the number of
        patches.
    """
    r = relevance.sum(dim=1)
    n, spatial = r.shape[0], r.shape[1:]
    pads = [_padding(s, p) for s, p in zip(spatial, patch_size, strict=True)]
    flat_pad = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad lists the last axis first
    rp = F.pad(r, flat_pad)  # zeros: padding adds no relevance to a patch
    blocks = [s // p for s, p in zip(rp.shape[1:], patch_size, strict=True)]
    view = [n] + [v for b, p in zip(blocks, patch_size, strict=True) for v in (b, p)]
    sums = rp.reshape(view).sum(dim=tuple(range(2, 2 * len(blocks) + 1, 2)))
    rank = rank_units(sums.reshape(n, -1), order, seed).reshape(n, *blocks)
    for axis, p in enumerate(patch_size):
        rank = rank.repeat_interleave(p, dim=axis + 1)
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial, strict=True))
    return rank[(slice(None), *crop)].unsqueeze(1), math.prod(blocks)


def region_perturbation(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target = None,
    *,
    patch_size: int | Sequence[int] = 8,
    steps: int = 100,
    baseline: Baseline = 0.0,
    order: str = "morf",
    softmax: bool | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    region: Region = None,
) -> torch.Tensor:
    """Region perturbation (Samek et al. 2016): replace whole patches in order of summed relevance.

    Args:
        model: Classifier; never changed (see :func:`pixel_flipping`).
        x: Input batch, 2D or 3D.
        relevance: ``x``'s shape or ``(N, 1, *spatial)``.
        target: Class per sample; ``None`` takes each sample's argmax on ``x``.
        patch_size: Edge of the square / cubic patches (or one size per spatial dimension). The input is
            tiled from a centred padding so edge patches may be partial.
        steps: Patches replaced, one per step; at most the number of patches.
        baseline: The replacement (see :mod:`medlrp.metrics.baselines`).
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        softmax: Score probabilities (default for classifiers) or logits. Not with ``region``.
        batch_size: Perturbed inputs per forward pass; ``None`` picks a size from the input's size.
        seed: Seed of ``order="random"``.
        region: Segmentation models: score the region's logit sum (see :func:`pixel_flipping`).

    Returns:
        ``(N, min(steps, patches) + 1)``; column 0 scores ``x``.
    """
    _units(x, relevance)
    if region is not None:
        return region_curves(
            model, x, relevance, target, region, baseline, softmax,
            lambda scorer, xi, ri, bi: region_perturbation(
                scorer, xi, ri, 0, patch_size=patch_size, steps=steps, baseline=bi, order=order,
                softmax=False, batch_size=batch_size, seed=seed,
            ),
        )  # fmt: skip
    softmax = True if softmax is None else softmax
    dims = x.ndim - 2
    sizes = [patch_size] * dims if isinstance(patch_size, int) else list(patch_size)
    if len(sizes) != dims or min(sizes) < 1:
        raise InputError(f"patch_size must be a positive int or {dims} positive ints, got {patch_size!r}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    rank, patches = patch_ranks(relevance.detach().to(x.device), sizes, order, seed)
    # Voxels in patch order; step s has replaced every voxel of a patch ranked below s.
    flat_rank = rank.flatten(1)
    path = stable_argsort(flat_rank)
    sizes_per_rank = torch.zeros(x.shape[0], patches, dtype=torch.long, device=x.device)
    sizes_per_rank.scatter_add_(1, flat_rank.long(), torch.ones_like(flat_rank, dtype=torch.long))
    voxels_done = torch.cat([sizes_per_rank.new_zeros(x.shape[0], 1), sizes_per_rank.cumsum(dim=1)], dim=1)
    counts = voxels_done[:, : min(steps, patches) + 1]
    return perturbation_curve(
        model, x, make_baseline(baseline, x), path, counts, target, softmax=softmax, batch_size=batch_size
    )
