"""``medlrp.explain``: every method behind one call."""

from __future__ import annotations

from typing import Any

import torch

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.region import Region
from medlrp.registry import METHODS
from medlrp.targets import Target


def method_options(method: str, composite: str | None = None, layer: str | None = None) -> dict[str, Any]:
    """A run's options that apply to ``method``: ``composite`` (LRP), ``layer`` (CAMs, when given).

    The command line sets one composite and one layer for all its methods; each method gets what it takes.
    """
    options: dict[str, Any] = {}
    if METHODS.trait(method, "composite"):
        options["composite"] = composite
    if layer is not None and METHODS.trait(method, "layer"):
        options["layer"] = layer
    return options


def explain(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    method: str = "lrp",
    composite: str | None = None,
    *,
    region: Region = None,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s decision on the batch ``x``.

    Args:
        model: Any classifier ``(N, C, *spatial) -> (N, classes)``, or segmentation network
            ``(N, C, *spatial) -> (N, classes, *spatial)``; it is never changed.
        x: The input batch, 2D ``(N, C, H, W)`` or 3D ``(N, C, D, H, W)``.
        target: ``None`` (classifiers: each sample's argmax; segmentation: the one class of a
            one-channel output, class 1 of a two-channel one, else required), an int, or one class per
            sample.
        region: Segmentation models only: ``"predicted"`` (the default: where class ``target`` wins the
            argmax) or a mask of the output's spatial shape (``(*spatial)``, ``(N, *spatial)`` or
            ``(N, 1, *spatial)``, bool or float); the explained quantity is the target class's logit sum
            over the region, per sample (see :mod:`medlrp.region`).
        method: A registered method name (see ``medlrp.registry.METHODS.names()``).
        composite: LRP only: a composite name; ``None`` picks ``epsilon-plus-flat`` for CNNs and
            ``attnlrp`` for transformers.
        **options: Method options (``layer=`` for CAMs, ``steps=`` for integrated gradients, ...).

    Returns:
        An :class:`~medlrp.explanation.Explanation`; attribution methods give relevance of ``x``'s
        shape, CAM methods ``(N, 1, *spatial)``.
    """
    fn = METHODS.get(method)
    if METHODS.trait(method, "composite"):
        options["composite"] = composite
    elif composite is not None:
        takes = ", ".join(n for n in METHODS if METHODS.trait(n, "composite"))
        raise InputError(f"composite= applies to the methods {takes} only, not to {method!r}")
    if region is not None:
        options["region"] = region  # only then: a method registered by a user need not know regions
    result = fn(model, x, target, **options)
    assert isinstance(result, Explanation)
    return result
