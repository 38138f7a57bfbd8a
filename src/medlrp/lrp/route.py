"""The one autograd node behind every rule: forward keeps the true value, backward scales the gradient.

``route(value, products, coefficients)`` returns a tensor equal to ``value`` whose gradient ``g`` flows
to ``products[i]`` as ``g * coefficients[i]``. The products are ordinary differentiable tensors (e.g.
``conv(x, W+)``), so one ordinary backward pass through them yields the LRP message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Coefficients = Sequence[torch.Tensor | None]
#: ``expand(state, grad) -> gradients``: turns a compact state (what ``compute`` returned) and the
#: incoming gradient into one gradient per product, in the backward pass (fast path only).
Expand = Callable[[Coefficients, torch.Tensor], tuple[torch.Tensor | None, ...]]


class _Spec:
    """Holds the value and the coefficients (or how to compute them lazily, in the backward pass)."""

    __slots__ = ("value", "coefficients", "compute", "owned", "guard", "expand", "relu")

    def __init__(
        self,
        value: torch.Tensor,
        coefficients: Coefficients | None,
        compute: Callable[[], Coefficients] | None,
        owned: bool = False,
        guard: Sequence[torch.Tensor] = (),
        expand: Expand | None = None,
        relu: tuple[Callable[[], Coefficients], Expand] | None = None,
    ) -> None:
        self.value, self.coefficients, self.compute, self.owned = value, coefficients, compute, owned
        self.expand, self.relu = expand, relu
        # the tensors ``compute`` reads, with their version counters now: an in-place change before the
        # coefficients are computed would make them silently wrong, so it is an error instead
        self.guard = [(t, t._version) for t in guard] if compute is not None else []

    def get(self) -> Coefficients:
        if self.coefficients is None:
            assert self.compute is not None
            for t, version in self.guard:
                if t._version != version:
                    raise RuntimeError(
                        "medlrp: a tensor the LRP rules need was modified in place by the model after it was "
                        "used; the model must not modify a layer output in place once another layer read it"
                    )
            self.guard = []
            # computed only if the gradient really reaches this node: a layer whose output was merged
            # into a following BatchNorm never pays for its unmerged coefficients
            self.coefficients = self.compute()
            self.compute = None
        return self.coefficients

    def scale(self, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``grad * c`` for each coefficient ``c``; owned coefficients are consumed in place."""
        coefficients = self.get()
        if self.expand is not None:
            self.coefficients = None  # consumed: the backward pass runs once
            return self.expand(coefficients, grad)
        if not self.owned or grad.requires_grad:
            return tuple(None if c is None else grad * c for c in coefficients)
        self.coefficients = None  # consumed: the backward pass runs once
        counts: dict[int, int] = {}
        for c in coefficients:
            if c is not None:
                counts[id(c)] = counts.get(id(c), 0) + 1
        out = []
        for c in coefficients:
            if c is None:
                out.append(None)
            elif (
                counts[id(c)] == 1 and c.shape == grad.shape and c.dtype == grad.dtype and not c.requires_grad
            ):
                out.append(c.mul_(grad))  # a fresh tensor nobody else reads: no new allocation
            else:
                out.append(grad * c)
        return tuple(out)


class _Route(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, *products: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.spec = spec
        # a fresh tensor object (sharing storage): never an input, so no view bookkeeping and no cycle
        out = spec.value.detach()
        spec.value = None  # type: ignore[assignment]  # only the coefficients may need it, through compute
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return (None, *ctx.spec.scale(grad))


def route(
    value: torch.Tensor,
    products: Sequence[torch.Tensor],
    coefficients: Coefficients | None = None,
    compute: Callable[[], Coefficients] | None = None,
    owned: bool = False,
    guard: Sequence[torch.Tensor] = (),
    expand: Expand | None = None,
    relu: tuple[Callable[[], Coefficients], Expand] | None = None,
) -> torch.Tensor:
    """Return ``value`` with its gradient sent to ``products`` scaled by ``coefficients``.

    Args:
        value: The true forward value (its graph, if any, is not followed by this node).
        products: Differentiable tensors of ``value``'s shape (or broadcastable coefficients' shape).
        coefficients: One tensor (or ``None``: no gradient) per product; may carry a graph, which makes
            the relevance differentiable through them (``create_graph=True``).
        compute: Instead of ``coefficients``: a callable computing them, run at most once, in the
            backward pass (or earlier, through :func:`settle`).
        owned: The coefficients (from ``compute``) are fresh tensors that nothing else reads, so the
            backward pass may scale them in place by the gradient (saves one allocation per product).
        guard: Tensors ``compute`` reads: if one of them is modified in place before the coefficients
            are computed, computing them raises instead of returning wrong values.
        expand: With ``compute``: ``compute`` returns a compact state (fewer tensors kept from the
            forward to the backward pass) and ``expand(state, grad)`` returns the products' gradients.
        relu: With ``compute``/``expand``: the pair to use instead when the value's only consumer is an
            in-place ReLU (see :func:`settle`); its ``expand`` may read the ReLU's output.
    """
    if coefficients is None and compute is None:
        raise ValueError("route() needs coefficients or compute")
    return _Route.apply(_Spec(value.detach(), coefficients, compute, owned, guard, expand, relu), *products)


def settle(t: torch.Tensor, relu: bool = False) -> bool:
    """Compute now the pending coefficients of the route that produced ``t`` (before ``t`` changes).

    Returns whether ``t`` is the direct output of a route (and so may be modified in place once its
    coefficients are settled: nothing else of the engine reads its storage).

    ``relu``: ``t`` is about to be passed through an in-place ReLU and nothing read it before (every
    other consumer settles it first), so a route with a ReLU variant keeps a smaller state and reads
    the ReLU's output in the backward pass, where the gradient is zero wherever ``t <= 0``.
    """
    if t._base is not None:
        return False
    spec = getattr(t.grad_fn, "spec", None)
    if not isinstance(spec, _Spec):
        return False
    if relu and spec.relu is not None and spec.coefficients is None:
        spec.compute, spec.expand = spec.relu
    spec.relu = None
    spec.get()
    return True
