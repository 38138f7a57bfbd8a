"""Complexity of a map: sparseness (Gini index, Chalasani et al. 2020) and entropy (Bhatt et al. 2020)."""

from __future__ import annotations

import torch

from medlrp.metrics._common import check_batch, flat


def sparseness(relevance: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|relevance|`` per sample: 0 for a flat map, towards 1 for a single hot voxel.

    Each map is divided by its own largest ``|R|`` and ``1e-7`` is added before the index, exactly as
    ``quantus.Sparseness(abs=True, normalise=True, normalise_func_kwargs={"normalise_axes": axes})`` with
    per-sample ``axes = (1, ..., ndim - 1)`` (Quantus's default divides the whole batch by one maximum,
    which couples the samples through the ``1e-7``). An all-zero map scores 0.

    Returns:
        ``(N,)`` in ``[0, 1)``.
    """
    check_batch(relevance, "relevance")
    a = flat(relevance.detach()).abs()
    peak = a.amax(dim=1, keepdim=True)
    a = torch.where(peak > 0, a / torch.where(peak > 0, peak, 1), a) + 1e-7
    a, _ = torch.sort(a, dim=1)
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    return ((2 * i - n - 1) * a).sum(dim=1) / (n * a.sum(dim=1))


def entropy(relevance: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of ``|R| / sum |R|`` per sample (lower is simpler), as ``quantus.Complexity``.

    An all-zero map scores 0.

    Returns:
        ``(N,)`` in nats.
    """
    check_batch(relevance, "relevance")
    a = flat(relevance.detach()).abs()
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, 1)
    return -(p * torch.log(p + 1e-12)).sum(dim=1)
