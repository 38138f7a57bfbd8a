"""The products of one linear layer call: the same call on modified inputs and weights.

Each :class:`~medlrp.lrp.rules.Product` names an input modifier and a weight modifier. Physical products
(what is really computed) are kept minimal: ``Z`` is the layer's own output; for an input known to be
>= 0 ``B = W- x`` is ``Z - b - A`` and the products on ``x-`` vanish; with inputs of both signs
``D = Z - b - A - B - C``. Products on references (``low``, ``high``, ``ones``) read leaves standing for
them, so the engine adds ``reference * grad`` to the relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from medlrp.lrp.geometry import Geometry, input_grad
from medlrp.lrp.ones import OnesThrough, ones_product
from medlrp.lrp.reads import on_device
from medlrp.lrp.rules import LinearRule, Product

Tensor = torch.Tensor
#: ``call(x, w, b)``: the functional op with the layer's other arguments (stride, padding ...).
Call = Callable[[Tensor, Tensor, Tensor | None], Tensor]

#: Input modifiers on the layer input (``nonneg``: known to be >= 0).
INPUTS: dict[str, Callable[[Tensor, bool], Tensor]] = {
    "x": lambda x, nonneg: x,
    "x+": lambda x, nonneg: x if nonneg else x.clamp(min=0),
    "x-": lambda x, nonneg: x.clamp(max=0),
    "|x|": lambda x, nonneg: x.abs(),
}
#: Weight modifiers (``+``, ``-``, ``|`` go through :func:`clamped_product` on the fast path).
WEIGHTS: dict[str, Callable[[Tensor], Tensor]] = {
    "W": lambda w: w,
    "W+": lambda w: w.clamp(min=0),
    "W-": lambda w: w.clamp(max=0),
    "|W|": lambda w: w.abs(),
    "1": torch.ones_like,
    "W2": lambda w: w * w,
}
_CLAMPED = ("W+", "W-", "|W|")


def clamped_product(call: Call, x: Tensor, weight: Tensor, part: str) -> Tensor:
    """``call(x, W_part)`` whose autograd node recomputes ``W_part`` in the backward pass.

    Autograd would keep the clamped weight of every layer from the forward to the backward pass (one
    copy of the model's weights for z+, gamma and alpha-beta); clamping again costs a fraction of one
    product. An in-place change of ``weight`` in between is an error, as autograd's own check would be.
    """
    modify = WEIGHTS[part]
    wp = modify(weight.detach())
    version = weight._version
    storage = wp.untyped_storage().data_ptr()

    def pack(t: Tensor) -> Any:
        # the clamped weight itself or a view of it (``F.linear`` saves its transpose)
        if t.untyped_storage().data_ptr() == storage:
            return _Recipe(t.size(), t.stride(), t.storage_offset())
        return t

    def unpack(saved: Any) -> Tensor:
        if not isinstance(saved, _Recipe):
            return saved
        if weight._version != version:
            raise RuntimeError(
                "medlrp: a weight was modified in place between the forward and the backward pass of LRP"
            )
        return modify(weight.detach()).as_strided(saved.size, saved.stride, saved.offset)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return call(x, wp, None)


def bound_kernels(wp: Tensor, wn: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``low W+ + high W-`` for each case (``lo``, ``hi``: one bound per case): ``(N, *weight.shape)``."""
    shape = (-1,) + (1,) * wp.dim()
    return wp * lo.reshape(shape) + wn * hi.reshape(shape)


def through_bounds(call: Call, ones: Tensor, kernels: Tensor) -> Tensor:
    """``W+ low + W- high`` for bounds constant over each case: ``ones`` through ``kernels[k]`` per case.

    ``ones``: ``N`` cases, or one shared by all; ``kernels``: :func:`bound_kernels`.
    """
    parts = [
        call(ones[k : k + 1] if ones.shape[0] > 1 else ones, kernels[k], None)
        for k in range(kernels.shape[0])
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def case_values(t: Tensor) -> Tensor | None:
    """``t``'s value per case (shape ``(N,)``) if it is constant over each case (expanded), else ``None``."""
    if t.dim() > 1 and all(st == 0 or n == 1 for n, st in zip(t.shape[1:], t.stride()[1:], strict=True)):
        return t[(slice(None),) + (0,) * (t.dim() - 1)]
    return None


class _Pair(torch.autograd.Function):
    """``(Z, A) = (conv(x, W) + b, conv(x, W+))``, the backward one call through ``[W, W+]``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, call: Call, geometry: Geometry, dim: int
    ) -> tuple[Tensor, Tensor]:
        """The two products, each by its own call."""
        w = weight.detach()
        ctx.save_for_backward(x)
        ctx.weight, ctx.version, ctx.geometry, ctx.dim = weight, weight._version, geometry, dim
        return call(x, w, None if bias is None else bias.detach()), call(x, w.clamp(min=0), None)

    @staticmethod
    def backward(ctx: Any, gz: Tensor | None, ga: Tensor | None) -> tuple[Tensor | None, ...]:
        """``[W, W+]``'s input gradient for ``[gz, ga]`` (the weights made again, not kept)."""
        (x,) = ctx.saved_tensors
        if ctx.weight._version != ctx.version:
            raise RuntimeError(
                "medlrp: a weight was modified in place between the forward and the backward pass of LRP"
            )
        w = ctx.weight.detach()
        grads = [g if g is not None else torch.zeros_like(other) for g, other in ((gz, ga), (ga, gz))]
        both = torch.cat([w, w.clamp(min=0)], ctx.dim)
        return input_grad(ctx.geometry, torch.cat(grads, 1), x, both), None, None, None, None, None


class _Recipe:
    """A saved clamped weight (or a view of it) that the backward pass recomputes."""

    __slots__ = ("size", "stride", "offset")

    def __init__(self, size: torch.Size, stride: tuple[int, ...], offset: int) -> None:
        self.size, self.stride, self.offset = size, stride, offset


def physical(keys: Any, nonneg: bool, partners: bool = False) -> set[Product]:
    """The physical products behind ``keys`` (``partners``: a merged scale of both signs also reads them)."""
    out: set[Product] = set()
    for key in keys:
        group = {key, PARTNER[key]} if partners and key in PARTNER else {key}
        for k in group:
            if k in (Product.C, Product.D) and nonneg:
                continue  # x- = 0: these products vanish
            if k is Product.B and nonneg:
                out |= {Product.Z, Product.A}
            elif k is Product.D:
                out |= {Product.Z, Product.A, Product.B, Product.C}
            else:
                out.add(k)
    return out


#: The product a merged product also reads when the BatchNorm scale is negative: ``(sW)+ = s+ W+ + s- W-``.
PARTNER = {
    Product.A: Product.B,
    Product.B: Product.A,
    Product.C: Product.D,
    Product.D: Product.C,
    Product.LP: Product.LN,
    Product.HN: Product.HP,
}


class Products:
    """The products of one layer call, each computed once: on the routed input and (dual mode) the true one.

    Attributes:
        references: Reference kind -> ``(true value, routed leaf)``.
    """

    def __init__(
        self,
        engine: Any,
        call: Call,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        rule: LinearRule,
        nonneg: bool,
        channel_dim: int,
    ) -> None:
        self.engine, self.call, self.weight, self.bias, self.rule = engine, call, weight, bias, rule
        self.x_true, self.x_routed = x, engine.routed(x)
        self.nonneg, self.channel_dim = nonneg, channel_dim
        self.references: dict[str, tuple[Tensor, Tensor]] = {}
        self._routed: dict[Product, Tensor] = {}
        self._true: dict[Product, Tensor] = {}
        self.z_value: Tensor | None = None

    def routed(self, key: Product) -> Tensor:
        """The product ``key`` on the routed input (differentiable), computed once."""
        hit = self._routed.get(key)
        if hit is None:
            if key is Product.Z:
                hit = self.call(self.x_routed, self.weight, self.raw_bias())
            else:
                hit = self._product(key, True)
            self._routed[key] = hit
        return hit

    def pair(self, dim: int) -> bool:
        """``Z`` and ``A = W+ x`` of an input >= 0 whose backward is one call through ``[W, W+]``.

        Both products read the same input, so their input gradients sum inside one call of the
        convolution's backward with the stacked weight (``dim``: the weight's output-channel dim): on a
        CPU one call with twice the channels costs well under two (about 0.7x for a 3D U-Net's layers).
        The forward calls stay apart: ``Z`` is the model's own output, bit for bit. Needs the call's
        geometry (:mod:`medlrp.lrp.geometry`); ``False`` (nothing done) without it.
        """
        geometry = getattr(self.call, "geometry", None)
        if geometry is None:
            return False
        z, a = _Pair.apply(self.x_routed, self.weight, self.raw_bias(), self.call, geometry, dim)
        self._routed[Product.Z], self._routed[Product.A] = z, a
        return True

    def value(self, key: Product) -> Tensor:
        """The product ``key``'s true value (with its graph in dual mode)."""
        if key is Product.Z:
            assert self.z_value is not None
            return self.z_value
        if not self.engine.dual:
            return self.routed(key).detach()
        hit = self._true.get(key)
        if hit is None:
            hit = self._true[key] = self._product(key, False)
        return hit

    def canonical(self, key: Product) -> Tensor | float:
        """Unmerged product values, the virtual ones derived (``B``/``D`` from ``Z``; ``0`` for vanished)."""
        if key in (Product.C, Product.D) and self.nonneg:
            return 0.0
        if key is Product.B and self.nonneg or key is Product.D:
            rest = self.value(Product.Z) - self.value(Product.A)
            if self.bias is not None:
                rest = rest - self.bias
            if key is Product.D:
                rest = rest - self.value(Product.B) - self.value(Product.C)
            return rest
        return self.value(key)

    def raw_bias(self) -> Tensor | None:
        """The bias as the call takes it (``None`` without one)."""
        return None if self.bias is None else self.bias.reshape(-1)

    def _input(self, kind: str, routed: bool) -> Tensor:
        x = self.x_routed if routed else self.x_true
        modify = INPUTS.get(kind)
        if modify is not None:
            return modify(x, self.nonneg)
        if kind not in self.references:
            self.references[kind] = self._reference(kind)
        true, leaf = self.references[kind]
        return leaf if routed else true

    def _reference(self, kind: str) -> tuple[Tensor, Tensor]:
        x = self.x_true
        if kind == "ones":
            value = torch.ones_like(x)
        else:
            bound = self.rule.reference(kind, x)
            value = on_device(bound, x).expand_as(x)
            if not self.engine.dual:
                value = value.detach()
        return value, self.engine.reference(kind, value)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """z-box's ``low`` and ``high``, expanded to the input's shape (a graph only in dual mode)."""
        x = self.x_true
        out = []
        for kind in ("low", "high"):
            value = on_device(self.rule.reference(kind, x), x).expand_as(x)
            out.append(value if self.engine.dual else value.detach())
        return out[0], out[1]

    def box(self, routed: bool) -> Tensor:
        """``BOX = W+ low + W- high`` on the ones leaf: ``LP + HN`` as one product.

        Its gradient at the leaf (whose value is 1) is ``low * W+^T g + high * W-^T g``, what ``LP`` and
        ``HN`` give their bound leaves. Bounds constant over each case (a number, each case's own
        min/max) make it one product per case through ``low W+ + high W-``: one call each way instead of
        two (equal up to rounding).
        """
        ones = self._input("ones", routed)
        low, high = self.bounds()
        weight = self.weight if self.engine.dual else self.weight.detach()
        wp, wn = WEIGHTS["W+"](weight), WEIGHTS["W-"](weight)
        lo, hi = case_values(low), case_values(high)
        if lo is None or hi is None:
            return self.call(ones * low, wp, None) + self.call(ones * high, wn, None)
        kernels = bound_kernels(wp, wn, lo, hi)
        geometry = getattr(self.call, "geometry", None)
        if (
            geometry is not None
            and not geometry.transposed
            and not self.engine.dual
            and ones.dim() == geometry.dims + 2
        ):
            return OnesThrough.apply(ones, kernels, geometry)  # the value without a convolution
        return through_bounds(self.call, ones, kernels)

    def _product(self, key: Product, routed: bool) -> Tensor:
        if key is Product.BOX:
            return self.box(routed)
        x = self._input(key.input, routed)
        if key is Product.F:
            flat = self._flat(x)
            if flat is not None:
                return flat
        if key.weight in _CLAMPED and not self.engine.dual:
            return clamped_product(self.call, x, self.weight, key.weight)
        return self.call(x, self.engine.weight_part(self.weight, key.weight), None)

    def _flat(self, ones: Tensor) -> Tensor | None:
        """``ones * ones-weights`` is the same for every output channel: one channel, expanded.

        Exact (the gradient of the expansion sums over the channels, as the full product's would), and
        one output channel's cost instead of all; ``None`` where a single-channel weight does not fit
        the call (grouped or transposed convolutions), which then compute the full product.
        """
        assert self.z_value is not None
        shape = self.z_value.shape
        try:
            one = self.call(ones, torch.ones_like(self.weight[:1]), None)
        except RuntimeError:
            return None
        cdim = self.channel_dim % len(shape)
        if (
            one.dim() != len(shape)
            or one.shape[cdim] != 1
            or any(a != b for i, (a, b) in enumerate(zip(one.shape, shape, strict=True)) if i != cdim)
        ):
            return None
        return one.expand(shape)

    def recompute(self, keys: Any, scale: Tensor | float, bias: Tensor | float, z_kept: Tensor | None) -> Any:
        """A closure giving ``(z, {key: value})`` again from the input, for a layer that keeps no state.

        ``z`` is ``z_kept`` (the route's own storage, which an in-place ReLU may have cut to 0: kept
        anyway, as the ReLU's output or the next layer's input) unless it is ``None``: then ``z`` is
        recomputed (rules that derive the positive part from ``z``).
        """
        # the closure lives until the backward pass: it holds the input and the weight (kept anyway), not
        # ``self`` (whose products are output-sized)
        call, weight, x, nonneg = self.call, self.weight.detach(), self.x_routed.detach(), self.nonneg
        geometry = getattr(call, "geometry", None)
        inputs = {kind: true.detach() for kind, (true, _) in self.references.items()}
        if Product.BOX in keys:
            inputs["low"], inputs["high"] = self.bounds()

        def on(kind: str, w: Tensor) -> Tensor:
            inp = inputs[kind]
            per_case = case_values(inp)
            if per_case is None:
                return call(inp, w, None)
            # a bound constant over each case (a number, or the case's min/max): the product is that
            # constant times one product of ones, computed for one case
            one = call(torch.ones(inp[:1].shape, dtype=inp.dtype, device=inp.device), w, None)
            return one * per_case.reshape(-1, *([1] * (one.dim() - 1)))

        def product(key: Product) -> Tensor:
            if key is Product.BOX:
                low, wp, wn = inputs["low"], WEIGHTS["W+"](weight), WEIGHTS["W-"](weight)
                lo, hi = case_values(low), case_values(inputs["high"])
                if lo is not None and hi is not None:
                    kernels = bound_kernels(wp, wn, lo, hi)
                    if geometry is not None and not geometry.transposed and low.dim() == geometry.dims + 2:
                        return ones_product(geometry, low.shape[2:], kernels)
                    if lo.shape[0] <= 2:  # one product of ones per case instead of two for all
                        return through_bounds(
                            call, torch.ones(low[:1].shape, dtype=low.dtype, device=low.device), kernels
                        )
                return on("low", wp).add_(on("high", wn))
            w = WEIGHTS[key.weight](weight)
            modify = INPUTS.get(key.input)
            if modify is not None:
                return call(modify(x, nonneg), w, None)
            return on(key.input, w)

        def again() -> tuple[Tensor, dict[Product, Tensor]]:
            with torch.no_grad():
                z = z_kept
                if z is None:
                    z = call(x, weight, None).mul(scale).add_(bias)
                return z, {k: product(k) for k in keys if k is not Product.Z}

        return again
