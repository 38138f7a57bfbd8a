"""Explanation-guided training: cross-entropy plus an explanation loss on the cases that have a mask.

:class:`GuidedLoss` is the ``loss_fn(model, batch) -> (loss, parts)`` of ``medlrp train --guided``, and
a plain :class:`torch.nn.Module` for any other loop::

    crit = GuidedLoss(guidance_weight=1.0)                 # LRP, logit difference, GuidanceLoss
    loss, parts = crit(model, x, y, mask=mask, has_mask=has_mask)
    loss.backward()                                       # exact gradients through the relevance

The relevance is differentiable w.r.t. the parameters (``create_graph=True``) and starts from the logit
*difference* by default: the label's logit minus the mean of the others. Explaining only the label's
logit lets a shortcut move into the other logits; the softmax depends on differences only, so for two
classes the difference is all there is to the decision. The logits of the relevance computation's own
forward serve the cross-entropy, so a guided step runs one forward less than "forward, then explain".

A relevance function (``relevance_fn``) is any callable
``(model, x, target, start) -> (relevance, logits)``, both with their graph; :func:`lrp_relevance`
(the default) and :func:`input_x_gradient_relevance` are provided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlrp.errors import InputError
from medlrp.targets import one_hot_logit
from medlrp.train.losses import GuidanceLoss

__all__ = [
    "GuidedLoss",
    "RelevanceFn",
    "StartFn",
    "input_x_gradient_relevance",
    "logit_difference",
    "lrp_relevance",
    "resolve_start",
]

#: ``start(output, target) -> initial relevance`` (output's shape, linear in ``output``)
StartFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``relevance_fn(model, x, target, start) -> (relevance, logits)``, both differentiable
RelevanceFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, StartFn], tuple[torch.Tensor, torch.Tensor]]


def logit_difference(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Initial relevance ``w * output`` with ``w = +1`` at the target, ``-1/(C-1)`` elsewhere.

    Its sum is the target logit minus the mean of the other logits (for two classes: ``z_t - z_other``).
    """
    num_classes = output.shape[1]
    if num_classes < 2:
        raise InputError("the logit difference needs a model with at least 2 classes")
    w = torch.full_like(output, -1.0 / (num_classes - 1))
    w.scatter_(1, target[:, None], 1.0)
    return w * output


_STARTS: dict[str, StartFn] = {"logit": one_hot_logit, "logit-difference": logit_difference}


def resolve_start(start: str | StartFn) -> StartFn:
    """``"logit"``, ``"logit-difference"`` or a callable ``start(output, target)``."""
    if callable(start):
        return start
    try:
        return _STARTS[start]
    except KeyError:
        raise InputError(f"unknown relevance start {start!r}; known: {', '.join(_STARTS)}") from None


def input_x_gradient_relevance(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, start: StartFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable input x gradient of ``start(model(x), target)`` (a reference and a fallback)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(start(logits, target).sum(), x, create_graph=True)
    return x * grad, logits


def lrp_relevance(composite: str | None = None, **options: Any) -> RelevanceFn:
    """A relevance function running :class:`medlrp.LRP` with ``create_graph=True``.

    Args:
        composite: LRP composite name (``None``: the engine's default for the model).
        **options: Further options of :class:`medlrp.LRP` (e.g. ``low=``, ``high=`` for z-box).
    """

    def fn(
        model: nn.Module, x: torch.Tensor, target: torch.Tensor, start: StartFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from medlrp.lrp import LRP  # late: the engine imports much, and training may not need it

        explainer = LRP(model, composite=composite, **options)
        return explainer.relevance(x, target, create_graph=True, start=start, return_output=True)

    return fn


class GuidedLoss(nn.Module):
    """Cross-entropy on every case plus ``guidance_weight`` times an explanation loss on masked cases.

    Args:
        guidance_weight: Weight of the explanation loss (0 trains plainly).
        criterion: Explanation loss ``criterion(relevance, mask, logit, weight) -> scalar``
            (default :class:`~medlrp.train.losses.GuidanceLoss`).
        relevance_fn: How relevance is computed (default :func:`lrp_relevance` with ``composite``).
        composite: LRP composite for the default relevance function.
        start: ``"logit-difference"`` (default), ``"logit"`` or a callable.
    """

    def __init__(
        self,
        guidance_weight: float = 1.0,
        criterion: nn.Module | None = None,
        relevance_fn: RelevanceFn | None = None,
        composite: str | None = None,
        start: str | StartFn = "logit-difference",
    ) -> None:
        super().__init__()
        if guidance_weight < 0:
            raise InputError(f"guidance weight must be >= 0, got {guidance_weight}")
        self.guidance_weight = float(guidance_weight)
        self.criterion = criterion if criterion is not None else GuidanceLoss()
        self.relevance_fn = relevance_fn if relevance_fn is not None else lrp_relevance(composite)
        self.start = resolve_start(start)

    def forward(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        has_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss, parts)``; ``parts`` holds the detached ``"ce"`` and ``"guidance"`` terms.

        Args:
            model: The model being trained (the plain module: unwrap DistributedDataParallel first).
            x: Input batch ``(N, C, *spatial)``.
            y: Labels ``(N,)``; relevance explains each case's label.
            mask: ``(N, ...)`` masks; rows of cases without a mask are ignored.
            has_mask: ``(N,)`` bool, which cases have a mask (default: all, when ``mask`` is given).
        """
        weight = None
        if mask is not None and self.guidance_weight > 0:
            weight = (
                torch.ones(x.shape[0], device=x.device)
                if has_mask is None
                else has_mask.to(device=x.device, dtype=torch.float32)
            )
            if not bool(weight.any()):
                weight = None
        if weight is None:
            logits = model(x)
            ce = F.cross_entropy(logits, y)
            return ce, {"ce": ce.detach(), "guidance": ce.new_zeros(())}
        relevance, logits = self.relevance_fn(model, x, y, self.start)
        explained = self.start(logits, y).sum(dim=1)
        guidance = self.criterion(relevance, mask, explained, weight.to(relevance.dtype))
        ce = F.cross_entropy(logits, y)
        loss = ce + self.guidance_weight * guidance
        return loss, {"ce": ce.detach(), "guidance": guidance.detach()}
