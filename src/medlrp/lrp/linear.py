"""One call of a linear layer (``F.linear``, ``convNd``, ``conv_transposeNd``) under an LRP rule.

The products the rule needs (:mod:`medlrp.lrp.products`) are computed once, in the forward pass, on
the routed input; the layer's output is then routed to them, merged with a following BatchNorm
(:mod:`medlrp.lrp.merge`) or not, by one of two paths:

* the fused path (:mod:`medlrp.lrp.kernels`, no graph): a compact state kept for the backward pass, or
  for cheap layers nothing at all (the backward pass recomputes their products);
* the general path (every rule, and ``create_graph=True``): the rule's coefficients, computed in the
  backward pass (fast mode) or now with their graph (dual mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.engine import Engine
from medlrp.lrp.geometry import conv_geometry
from medlrp.lrp.kernels import Fused, kernel
from medlrp.lrp.merge import Scale, merged_products, unmerge
from medlrp.lrp.products import Call, Products, physical
from medlrp.lrp.route import route
from medlrp.lrp.rules import LinearRule, Product, Quantities

Tensor = torch.Tensor

_BY_NAME = attrgetter("name")  # products in a fixed order (by name)

#: Layers whose products cost at most this many multiply-adds per output element (a first layer on 1-3
#: channels, a depthwise convolution) keep no rule state: the backward pass recomputes their products.
CHEAP_FAN_IN = 32


class LinearCall:
    """A linear layer's call: computes the products and builds the routed output (merged or not)."""

    def __init__(
        self,
        engine: Engine,
        call: Call,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        rule: LinearRule,
        channel_dim: int,
    ) -> None:
        if rule.needs_reference and not engine.is_model_input(x):
            raise engine.input_error(
                f"rule {rule.name!r} needs a reference input, so it may only be put on a layer that reads "
                "the model input"
            )
        nonneg = True
        if rule.needs_signs:
            node = engine.node(x)
            known = node is not None and node.nonneg
            nonneg = known or (engine.flag(x.detach().min() >= 0) if x.numel() else True)
        self.engine, self.rule, self.nonneg = engine, rule, nonneg
        self.bias = None if bias is None else _channel(bias, x.dim(), channel_dim)
        self.channel_dim, self.dims = channel_dim, x.dim()
        self.products = p = Products(engine, call, x, weight, self.bias, rule, nonneg, channel_dim)
        fused = kernel(rule).fused
        self.fused: Fused | None = None if fused is None or engine.dual else fused(rule)
        # the fused path's products only, as long as it may apply (a merged BatchNorm with a mixed scale,
        # known later, computes the general path's products then, from the routed input)
        keys = self.fused.keys(nonneg, False) if self.fused is not None else None
        wanted = set(keys) if keys is not None else physical(rule.uses(nonneg), nonneg)
        stack_dim = getattr(call, "stack_dim", None)
        if not engine.dual and nonneg and stack_dim is not None and {Product.Z, Product.A} <= wanted:
            p.pair(stack_dim)
        if engine.dual:
            self.z_true = call(x, weight, bias)
        elif Product.Z in wanted:
            self.z_true = p.routed(Product.Z)
        else:
            with torch.no_grad():
                self.z_true = call(x, weight, bias)
        p.z_value = self.z_true if engine.dual else self.z_true.detach()
        for key in sorted(wanted, key=_BY_NAME):
            p.routed(key)

    def output(self) -> Tensor:
        """The layer's output, routed by the rule (not merged)."""
        return self._build(self.z_true, None, self.bias if self.bias is not None else 0.0)

    def merged_output(self, y: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """The output ``y = s * z + t`` of a BatchNorm merged into this layer, routed by the rule."""
        scale = Scale(_channel(s, self.dims, self.channel_dim), self.engine.flag)
        shift = _channel(t, self.dims, self.channel_dim)
        bias = shift if self.bias is None else scale.s * self.bias + shift
        return self._build(y, scale, bias if self.engine.dual else bias.detach())

    def coefficients(self, z: Tensor, scale: Scale | None, bias: Tensor | float) -> dict[Product, Tensor]:
        """The physical products' coefficients, for output ``z`` of the (merged) layer."""
        read = merged_products(self.rule.reads, self.products.canonical, scale)
        merged = self.rule.coefficients(Quantities(z, bias, read), self.nonneg)
        return unmerge(merged, scale, self.nonneg, not self.engine.dual, [z, *read.values()])

    def _build(self, z: Tensor, scale: Scale | None, bias: Tensor | float) -> Tensor:
        routed = None if self.fused is None else self._fused(self.fused, z.detach(), scale, bias)
        if routed is None:
            routed = self._general(z, scale, bias)
        if self.engine.dual:
            node = self.engine.track(z, routed)
            out = z
        else:
            node = self.engine.track(routed)
            out = routed
        node.linear = self
        return out

    def _general(self, z: Tensor, scale: Scale | None, bias: Tensor | float) -> Tensor:
        """The route of the rule's coefficients."""
        mixed = scale is not None and scale.mixed
        keys = sorted(physical(self.rule.uses(self.nonneg), self.nonneg, mixed), key=_BY_NAME)
        products = [self.products.routed(k) for k in keys]
        if self.engine.dual:
            coeffs = self.coefficients(z, scale, bias)
            kept = [(p, coeffs[k]) for p, k in zip(products, keys, strict=True) if k in coeffs]
            return route(z, [p for p, _ in kept], [c for _, c in kept])
        z_value = z.detach()

        def compute() -> list[Tensor | None]:
            coeffs = self.coefficients(z_value, scale, bias)
            return [coeffs.get(k) for k in keys]

        guard = (z_value, self.products.z_value, *products)
        return route(z_value, products, compute=compute, owned=True, guard=guard)

    def _fused(self, fused: Fused, z: Tensor, scale: Scale | None, bias: Tensor | float) -> Tensor | None:
        """The route of the rule's fused form, else ``None`` (not applicable to this scale)."""
        keys = fused.keys(self.nonneg, scale is not None and scale.mixed)
        if keys is None:
            return None
        p = self.products
        products = [p.routed(k) for k in keys]
        values = {k: p.value(k) for k in keys if k is not Product.Z}
        nonneg = self.nonneg
        s = None if scale is None else scale.s
        if isinstance(bias, Tensor):
            bias = bias.detach()  # a parameter: no graph in the fast path
        if self._cheap(keys):
            # keep nothing: the backward pass recomputes this cheap layer's products (its output is
            # large: a first layer on a few channels, a depthwise convolution), then the state. With
            # inputs of both signs (M) the positive part is derived from z, which a ReLU may have cut:
            # then z is recomputed too (and not held: that would keep the output to the end)
            again = p.recompute(keys, 1.0 if s is None else s, bias, None if Product.M in keys else z)

            def expand_again(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
                z_again, values_again = again()
                return fused.grads(fused.state(z_again, values_again, s, bias), s, grad, nonneg)

            return route(z, products, compute=list, expand=expand_again)  # type: ignore[arg-type]

        def expand(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
            return fused.grads(list(state), s, grad, nonneg)  # type: ignore[arg-type]

        relu = None
        if fused.relu_variant:

            def relu_expand(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
                return fused.relu_grads(list(state), z, s, grad, nonneg)  # type: ignore[arg-type]

            relu = (lambda: fused.relu_state(z, values, s, bias), relu_expand)
        return route(
            z,
            products,
            compute=lambda: fused.state(z, values, s, bias),
            guard=(z, *values.values()),
            expand=expand,  # type: ignore[arg-type]
            relu=relu,  # type: ignore[arg-type]
        )

    def _cheap(self, keys: Sequence[Product]) -> bool:
        """Whether the fused state is worth recomputing: products of at most :data:`CHEAP_FAN_IN` terms."""
        if Product.F in keys or tuple(keys) == (Product.Z,):
            return False  # flat keeps one channel, epsilon keeps nothing: no state to save
        weight = self.products.weight
        return weight.dim() > 2 and weight[0].numel() <= CHEAP_FAN_IN


def _channel(v: Tensor, dims: int, channel_dim: int) -> Tensor:
    """A per-channel vector shaped to broadcast against the layer output."""
    if channel_dim == -1:
        return v
    shape = [1] * max(dims, 2)
    shape[channel_dim] = -1
    return v.reshape(shape)


def bind_linear(func_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Split a functional linear call into ``(input, weight, bias, rest_args, rest_kwargs)``."""
    args = list(args)
    kwargs = dict(kwargs)
    x = args.pop(0) if args else kwargs.pop("input")
    w = args.pop(0) if args else kwargs.pop("weight")
    b = args.pop(0) if args else kwargs.pop("bias", None)
    return x, w, b, tuple(args), kwargs


def make_call(func: Any, rest: tuple[Any, ...], kw: dict[str, Any]) -> Call:
    """``call(x, w, b)``: the functional op with the layer's other arguments (stride, padding ...)."""

    def call(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return func(x, w, b, *rest, **kw)

    call.geometry = geometry = conv_geometry(func, rest, kw)  # type: ignore[attr-defined]
    # the weight's output-channel dim where products may stack along it (no groups), else None
    stack_dim = None
    if func is F.linear:
        stack_dim = 0
    elif geometry is not None and geometry.groups == 1:
        stack_dim = 1 if geometry.transposed else 0
    call.stack_dim = stack_dim  # type: ignore[attr-defined]
    return call
