"""``medlrp.explain``: every method behind one call."""

from __future__ import annotations

from typing import Any

import torch

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.registry import METHODS
from medlrp.targets import Target


def explain(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    method: str = "lrp",
    composite: str | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s decision on the batch ``x``.

    Args:
        model: Any classifier ``(N, C, *spatial) -> (N, classes)``; it is never changed.
        x: The input batch, 2D ``(N, C, H, W)`` or 3D ``(N, C, D, H, W)``.
        target: ``None`` (each sample's argmax), an int, or one class per sample.
        method: A registered method name (see ``medlrp.registry.METHODS.names()``).
        composite: LRP only: a composite name; ``None`` picks ``epsilon-plus-flat`` for CNNs and
            ``attnlrp`` for transformers.
        **options: Method options (``layer=`` for CAMs, ``steps=`` for integrated gradients, ...).

    Returns:
        An :class:`~medlrp.explanation.Explanation`; attribution methods give relevance of ``x``'s
        shape, CAM methods ``(N, 1, *spatial)``.
    """
    fn = METHODS.get(method)
    if method == "lrp":
        options["composite"] = composite
    elif composite is not None:
        raise InputError(f"composite= applies to method='lrp' only, not to {method!r}")
    result = fn(model, x, target, **options)
    assert isinstance(result, Explanation)
    return result
