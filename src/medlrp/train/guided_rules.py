"""Bias-free LRP for guided training: all of the explained logit lands on the input.

With ordinary rules a layer's bias (and a BatchNorm shift merged into it) absorbs part of the relevance.
A shortcut can hide there: a step function of a token, built from two ReLUs, passes *no* relevance to
the token's pixels at all (their shares cancel exactly) and all of it to the biases, so the relevance
outside the mask is zero while the token decides. The bias-free epsilon rule divides by the
contributions of the inputs only, ``R_in = x * W^T (R / stab(z - b))``, so every layer passes on all
the relevance it receives: the input relevance sums to the explained logit (conservation), and the
relevance a step function carries goes to the pixels it reads. Guidance losses tied to the logit
(:class:`~medlrp.train.guided_losses.RelevanceMassLoss`) then see every part of the decision.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from medlrp.lrp.composites import Composite, resolve_composite
from medlrp.lrp.rules import LinearRule, Quantities, stabilize

__all__ = ["BiasFreeEpsilon", "guidance_composite"]


class BiasFreeEpsilon(LinearRule):
    """``R_in = x * W^T (R / stab(z - b))``: epsilon on the contributions without the bias (conservative).

    Args:
        epsilon: Stabiliser of the denominator (``stab(u) = u + epsilon * sign(u)``).
    """

    name = "epsilon-bias-free"

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, float]:
        """See :meth:`medlrp.lrp.rules.Rule.params`."""
        return {"epsilon": self.epsilon}

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, torch.Tensor]:
        """See :meth:`medlrp.lrp.rules.LinearRule.coefficients`."""
        return {"Z": q.z / stabilize(q.z - q.bias, self.epsilon)}


def guidance_composite(model: nn.Module, epsilon: float = 1e-6) -> Composite:
    """The model's default composite with :class:`BiasFreeEpsilon` on every linear layer and convolution.

    CNNs: bias-free epsilon everywhere (no first-layer rule: the flat and z-box rules spread or move
    relevance away from the pixels a unit reads). Transformers: the default transformer composite's
    attention, normalisation and activation rules, with bias-free epsilon on the linear layers.
    """
    base = resolve_composite(model, None)
    rule = BiasFreeEpsilon(epsilon)
    return dataclasses.replace(base, dense=rule, conv=rule, first=None, name="guidance-bias-free-epsilon")
