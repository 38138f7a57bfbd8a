"""Summaries of perturbation curves ``(N, steps + 1)``: AOPC, normalised AUC, the MoRF-LeRF area."""

from __future__ import annotations

import torch

from medlrp.errors import InputError


def _check(curves: torch.Tensor, name: str = "curves") -> None:
    if not isinstance(curves, torch.Tensor) or curves.ndim != 2 or curves.shape[1] < 2:
        shape = tuple(curves.shape) if isinstance(curves, torch.Tensor) else type(curves).__name__
        raise InputError(f"{name} must be (N, steps + 1) with at least one step, got {shape}")


def aopc(curves: torch.Tensor) -> torch.Tensor:
    """Area over the perturbation curve (Samek et al. 2016): ``mean_k (f(x_0) - f(x_k))``, k = 0..K.

    Higher is better for a most-relevant-first curve.
    """
    _check(curves)
    return (curves[:, :1] - curves).mean(dim=1)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under the curve with the steps spread over ``[0, 1]`` (trapezoid rule), per sample.

    Quantus's ``calculate_auc`` uses ``dx=1`` instead: it equals this times ``steps``.
    """
    _check(curves)
    steps = curves.shape[1] - 1
    return torch.trapezoid(curves, dx=1.0 / steps, dim=1)


def area_between(morf: torch.Tensor, lerf: torch.Tensor) -> torch.Tensor:
    """Area between the least- and most-relevant-first curves, ``mean_k (lerf_k - morf_k)`` (ABPC).

    Equal to ``aopc(morf) - aopc(lerf)`` when both start from the same input; higher is better.
    """
    _check(morf, "morf")
    _check(lerf, "lerf")
    if morf.shape != lerf.shape:
        raise InputError(f"morf {tuple(morf.shape)} and lerf {tuple(lerf.shape)} curves differ in shape")
    return (lerf - morf).mean(dim=1)
