"""Relevance rules for the operations of a transformer: softmax, products, layer norm, activations.

Every rule is written into the forward pass: the output keeps its exact forward value, and only the
gradient is changed, so that after one ordinary backward the relevance of a tensor is ``x * x.grad``
(the gradient-times-input identity). In that framework the rules of AttnLRP (Achtibat et al., ICML 2024)
and CP-LRP (Ali et al., ICML 2022) become:

* **softmax, AttnLRP**: ``R_i = x_i (R_i - s_i sum_j R_j)``. With ``R = s * g`` this is exactly
  ``x * (J_softmax^T g)``: the plain gradient *is* the rule, nothing to change. Part of the relevance
  goes to the softmax's implicit bias by design, so AttnLRP is not conservative.
* **softmax, CP-LRP**: the attention weights are held constant: no gradient through the softmax.
* **products of two tensors on the relevance path** (``q @ k^T``, ``A @ v``, einsum, elementwise
  gates): the uniform rule. The epsilon rule on the product terms gives ``x * grad`` to *each* factor,
  so the gradient to each factor is halved (relevance split 50/50). The gradient framework never
  divides by the output, so no stabiliser is needed (the limit ``epsilon -> 0`` of the paper's rule).
  A product with one constant factor is linear in the other and keeps its plain gradient.
* **fused attention** (``scaled_dot_product_attention``): both products at once: ``v`` gets half the
  gradient, ``q`` and ``k`` a quarter (AttnLRP); CP-LRP stops ``q`` and ``k``.
* **layer norm / RMS norm**: the standard deviation is held constant; the centring ``x - mean(x)`` is a
  linear map whose gradient gives the paper's identity rule on it (and CP-LRP's constant scale).
* **element-wise activations** (GELU, SiLU, tanh, ...): the identity rule, relevance passes unchanged
  (:func:`medlrp.lrp.rules.identity_ratio`, the engine's pass rule).

For ``create_graph=True`` the engine builds the true forward (with its graph) beside the routed one; a
rule op's routed output is then :class:`Linearised`, whose backward evaluates the rule's
vector-Jacobian product at the true tensors *with their graph* (``vjp_*`` below), so the derivative of
the relevance with respect to parameters is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward; the gradient is multiplied by a constant factor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` (a view) whose gradient is multiplied by ``factor``.

    The result is a view made by a custom autograd function: feed it to an operation, never modify it
    in place.
    """
    if factor == 1.0 or not x.requires_grad:
        return x
    return _ScaleGrad.apply(x, factor)


def _norm_dims(x: torch.Tensor, normalized_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(range(x.dim() - len(normalized_shape), x.dim()))


def layer_norm_rstd(x: torch.Tensor, normalized_shape: Sequence[int], eps: float) -> torch.Tensor:
    """``1 / sqrt(var(x) + eps)`` over the normalised dims (biased variance, as ``F.layer_norm``)."""
    dims = _norm_dims(x, normalized_shape)
    return torch.rsqrt(x.var(dim=dims, keepdim=True, correction=0) + eps)


def rms_norm_rstd(x: torch.Tensor, normalized_shape: Sequence[int], eps: float | None) -> torch.Tensor:
    """``1 / sqrt(mean(x^2) + eps)`` over the normalised dims (``F.rms_norm``'s default eps if None)."""
    dims = _norm_dims(x, normalized_shape)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)


def vjp_layer_norm(
    grad: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    normalized_shape: Sequence[int],
    centre: bool = True,
) -> torch.Tensor:
    """The layer-norm rule's input gradient: ``h - mean(h)`` with ``h = g * w * rstd`` (``rstd`` constant).

    ``centre=False`` gives RMS norm's (no mean is subtracted in its forward).
    """
    h = grad * rstd if weight is None else grad * weight * rstd
    if centre:
        h = h - h.mean(dim=_norm_dims(h, normalized_shape), keepdim=True)
    return h


class _LayerNormRule(torch.autograd.Function):
    """``F.layer_norm`` (fused, exact value) whose input gradient holds the standard deviation constant."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        normalized_shape: Sequence[int],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        # the fused kernel returns the reciprocal standard deviation with the value: no extra pass
        y, _, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.normalized_shape = normalized_shape
        ctx.save_for_backward(rstd, weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rstd, weight = ctx.saved_tensors
        return vjp_layer_norm(grad, rstd, weight, ctx.normalized_shape), None, None, None, None


def layer_norm_rule(
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer norm with its standard deviation held constant in the backward (AttnLRP and CP-LRP).

    Only the input's gradient is produced (this is a relevance pass: parameters get none).
    """
    return _LayerNormRule.apply(x, tuple(normalized_shape), weight, bias, eps)


def rms_norm_rule(
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMS norm with its scale held constant: a value-exact ``x * rstd.detach() * w``."""
    y = x * rms_norm_rstd(x, normalized_shape, eps).detach()
    return y if weight is None else y * weight


class _Held:
    """Non-tensor holder, so that the output is never an input of the autograd function (no view)."""

    __slots__ = ("value", "vjp")

    def __init__(self, value: torch.Tensor, vjp: Callable[[torch.Tensor], Sequence[torch.Tensor | None]]):
        self.value = value
        self.vjp = vjp


class Linearised(torch.autograd.Function):
    """The exact (second-order) form of a rule op, for ``create_graph=True``.

    In that mode the engine computes the true forward (with its ordinary graph) beside the routed one.
    ``Linearised.apply(held, *inputs)`` returns ``held.value`` (the op's true output, detached) as the
    routed output; its backward returns ``held.vjp(grad)``, one gradient per routed input (or ``None``),
    computed from the true tensors *with their graph*. So the relevance is differentiable with respect to
    parameters exactly, while the first-order backward never enters the true graph.
    """

    @staticmethod
    def forward(ctx: Any, held: _Held, *inputs: torch.Tensor) -> torch.Tensor:
        """Return the held value (a fresh tensor object sharing its storage)."""
        ctx.vjp = held.vjp
        return held.value.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The rule's vector-Jacobian product."""
        return (None, *ctx.vjp(grad))


def linearised(
    value: torch.Tensor,
    vjp: Callable[[torch.Tensor], Sequence[torch.Tensor | None]],
    inputs: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Output ``value`` whose gradient to ``inputs`` is ``vjp(grad)`` (see :class:`Linearised`)."""
    return Linearised.apply(_Held(value, vjp), *inputs)
