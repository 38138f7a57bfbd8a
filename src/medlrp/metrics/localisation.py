"""Localisation against a region mask (tumour, lung field): does the relevance fall where it should?

``relevance`` and ``mask`` are ``(N, C, *spatial)`` with a channel dimension of 1 broadcasting (CAM maps
are ``(N, 1, *spatial)``); any non-zero mask value is inside. A sample with an empty mask scores NaN,
as in Quantus.

Mapping to Quantus 0.6.0 (tested to agree): each function equals the Quantus metric of the same name with
``normalise=False, abs=False`` (the defaults ``normalise=True`` divides the whole batch by one maximum:
it changes no score here; ``abs=True`` would score ``relevance.abs()``). ``pointing_game(tolerance=0)``
equals ``quantus.PointingGame(weighted=False)`` except for an empty mask, which Quantus scores as a hit
(it writes NaN into a boolean array); Quantus has no tolerance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medlrp.errors import InputError
from medlrp.metrics._common import common_shape, flat

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _pair(relevance: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast to one shape and flatten: ``(N, F)`` float relevance and bool mask."""
    shape = common_shape(relevance, mask, "relevance", "mask")
    r = relevance.detach().expand(shape)
    m = (mask.detach().to(r.device) != 0).expand(shape)
    return flat(r), flat(m)


def _nan_if_empty(score: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m.any(dim=1), score, torch.full_like(score, math.nan))


def relevance_mass_accuracy(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the relevance that lies inside the mask, ``sum(R in mask) / sum(R)`` (Arras et al. 2022).

    Signed relevance as given; pass ``relevance.clamp(min=0)`` to count positive evidence only.

    Returns:
        ``(N,)``; NaN for an empty mask.
    """
    r, m = _pair(relevance, mask)
    return _nan_if_empty((r * m).sum(dim=1) / r.sum(dim=1), m)


def relevance_rank_accuracy(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Of the ``K`` most relevant features (``K`` = mask size), the share inside the mask (Arras et al.).

    Ties are ranked by flat position (a stable sort).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask.
    """
    r, m = _pair(relevance, mask)
    k = m.sum(dim=1)
    order = torch.argsort(r, dim=1, descending=True, stable=True)
    top = torch.arange(r.shape[1], device=r.device)[None] < k[:, None]
    hits = (m.gather(1, order) & top).sum(dim=1)
    return _nan_if_empty(hits / k.clamp_min(1), m)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a bool mask ``(N, C, *spatial)`` by a Euclidean ball of ``radius`` voxels."""
    n, c, *spatial = mask.shape
    dims = len(spatial)
    ax = torch.arange(-radius, radius + 1, device=mask.device, dtype=torch.float32)
    grids = torch.meshgrid(*[ax] * dims, indexing="ij")
    ball = (sum(g**2 for g in grids) <= radius**2).to(torch.float32)[None, None]
    m = mask.reshape(n * c, 1, *spatial).to(torch.float32)
    return (_CONV[dims](m, ball, padding=radius) > 0.5).reshape(mask.shape)


def pointing_game(relevance: torch.Tensor, mask: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """1 where the maximum of the relevance hits the mask (Zhang et al. 2018), else 0.

    Args:
        relevance: ``(N, C, *spatial)`` map.
        mask: Region mask of the same shape (a channel of 1 broadcasts).
        tolerance: A maximum within this many voxels (Euclidean) of the mask still counts as a hit
            (Zhang et al. use 15 pixels); every location reaching the maximum counts.

    Returns:
        ``(N,)`` float of 0/1; NaN for an empty mask.
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}")
    shape = common_shape(relevance, mask, "relevance", "mask")
    m = (mask.detach().to(relevance.device) != 0).expand(shape)
    if tolerance > 0:
        m = _dilate(m.contiguous(), int(tolerance))
    r = flat(relevance.detach().expand(shape))
    m = flat(m)
    at_max = r == r.amax(dim=1, keepdim=True)
    hit = (at_max & m).any(dim=1).to(r.dtype if r.is_floating_point() else torch.float32)
    return _nan_if_empty(hit, flat((mask.detach().to(relevance.device) != 0).expand(shape)))


def attribution_localisation(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance inside the mask (Kohlbrenner et al. 2020).

    Equals ``quantus.AttributionLocalisation(abs=False, positive_attributions=True, normalise=False)``
    up to its ``1e-9`` stabiliser.

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask or a map without positive relevance.
    """
    r, m = _pair(relevance, mask)
    r = r.clamp(min=0)
    return _nan_if_empty((r * m).sum(dim=1) / r.sum(dim=1), m)
