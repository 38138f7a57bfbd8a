"""The one autograd node behind every rule: forward keeps the true value, backward scales the gradient.

``route(value, products, coefficients)`` returns a tensor equal to ``value`` whose gradient ``g`` flows
to ``products[i]`` as ``g * coefficients[i]``. The products are ordinary differentiable tensors (e.g.
``conv(x, W+)``), so one ordinary backward pass through them yields the LRP message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Coefficients = Sequence[torch.Tensor | None]


class _Spec:
    """Holds the value and the coefficients (or how to compute them lazily, in the backward pass)."""

    __slots__ = ("value", "coefficients", "compute")

    def __init__(
        self,
        value: torch.Tensor,
        coefficients: Coefficients | None,
        compute: Callable[[], Coefficients] | None,
    ) -> None:
        self.value = value
        self.coefficients = coefficients
        self.compute = compute

    def get(self) -> Coefficients:
        if self.coefficients is None:
            assert self.compute is not None
            # computed only if the gradient really reaches this node: a layer whose output was merged
            # into a following BatchNorm never pays for its unmerged coefficients
            self.coefficients = self.compute()
            self.compute = None
        return self.coefficients


class _Route(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, *products: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.spec = spec
        # a fresh tensor object (sharing storage): never an input, so no view bookkeeping and no cycle
        return spec.value.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        coefficients = ctx.spec.get()
        return (None, *(None if c is None else grad * c for c in coefficients))


def route(
    value: torch.Tensor,
    products: Sequence[torch.Tensor],
    coefficients: Coefficients | None = None,
    compute: Callable[[], Coefficients] | None = None,
) -> torch.Tensor:
    """Return ``value`` with its gradient sent to ``products`` scaled by ``coefficients``.

    Args:
        value: The true forward value (its graph, if any, is not followed by this node).
        products: Differentiable tensors of ``value``'s shape (or broadcastable coefficients' shape).
        coefficients: One tensor (or ``None``: no gradient) per product; may carry a graph, which makes
            the relevance differentiable through them (``create_graph=True``).
        compute: Instead of ``coefficients``: a callable computing them, run at most once, in the
            backward pass.
    """
    if coefficients is None and compute is None:
        raise ValueError("route() needs coefficients or compute")
    return _Route.apply(_Spec(value.detach(), coefficients, compute), *products)
