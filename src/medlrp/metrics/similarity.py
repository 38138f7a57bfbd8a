"""Similarity of two batches of maps, per sample: Spearman and Pearson correlation, SSIM (N-d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlrp.errors import InputError
from medlrp.metrics._common import flat


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim < 2:
        raise InputError(
            f"maps to compare must share one shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..F`` along dim 1 of ``(N, F)``; ties share their mean rank (``scipy.stats.rankdata``)."""
    n, f = v.shape
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = torch.cumsum(new_group, dim=1) - 1 + torch.arange(n, device=v.device)[:, None] * f
    pos = torch.arange(1, f + 1, device=v.device, dtype=torch.float64).expand(n, f).reshape(-1)
    total = torch.zeros(n * f, dtype=torch.float64, device=v.device).index_add_(0, group.reshape(-1), pos)
    count = torch.bincount(group.reshape(-1), minlength=n * f).to(torch.float64)
    mean_rank = (total / count.clamp_min(1))[group]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (flattened), float64; NaN for a constant map."""
    _same(a, b)
    x, y = flat(a.detach()).double(), flat(b.detach()).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return (x * y).sum(dim=1) / (x.norm(dim=1) * y.norm(dim=1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (flattened; ties get mean ranks, as scipy)."""
    _same(a, b)
    return pearson(average_ranks(flat(a.detach())), average_ranks(flat(b.detach())))


_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def ssim(a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity of each pair of maps over all their non-batch axes (1, 2 or 3).

    The same computation as ``skimage.metrics.structural_similarity(a, b, data_range=max - min of both)``
    with its defaults (uniform ``win_size`` window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the
    voxels at least ``win_size // 2`` from the border). Quantus's ``ssim`` flattens maps to 1-D first:
    pass ``a.flatten(1)``, ``b.flatten(1)`` for that.

    Returns:
        ``(N,)`` float64 in ``[-1, 1]``.
    """
    _same(a, b)
    dims = a.ndim - 1
    if dims not in _POOL:
        raise InputError(f"ssim compares 1D, 2D or 3D maps, got {dims} axes (drop the channel axis first)")
    if min(a.shape[1:]) < win_size:
        raise InputError(f"ssim needs every axis at least win_size={win_size} long, got {tuple(a.shape[1:])}")
    x, y = a.detach().double().unsqueeze(1), b.detach().double().unsqueeze(1)
    both = torch.cat([flat(x), flat(y)], dim=1)
    data_range = (both.amax(dim=1) - both.amin(dim=1)).view(-1, *[1] * (dims + 1))

    def mean(t: torch.Tensor) -> torch.Tensor:
        # A valid (unpadded) window mean is exactly the cropped interior skimage averages over.
        return _POOL[dims](t, win_size, stride=1)

    ux, uy = mean(x), mean(y)
    cov = win_size**dims / (win_size**dims - 1)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return flat(s).mean(dim=1)


SIMILARITIES = {"spearman": spearman, "pearson": pearson, "ssim": ssim}
