"""One call of a linear layer (``F.linear``, ``convNd``, ``conv_transposeNd``) under an LRP rule.

The layer ``z = W x + b`` is handled through *products*: the same functional call with a modified
input and/or weight (``W+ x``, ``W- low``, ``ones * ones`` ...). The products a rule needs are
computed once, in the forward pass, on the routed input; the rule's coefficients (see
:mod:`medlrp.lrp.rules`) tell how the output gradient is split among them.

Physical products (what is really computed) are kept minimal:

* ``Z`` is the layer's own output ``W x + b`` (for the epsilon rule it is the only product);
* for rules on signs (z+, alpha-beta, gamma) with an input known to be >= 0 (after a ReLU): ``A = W+ x``
  only, ``B = W- x`` is ``Z - b - A`` (one extra product per layer); with inputs of both signs:
  ``A, B, C`` and ``D = Z - b - A - B - C``;
* reference products (z-box ``W+- low/high``, flat, w-square) on leaves standing for the references.

A following BatchNorm ``y = s * z + t`` (per output channel) is merged without recomputing anything:
the merged layer's products are per-channel combinations of the unmerged ones
(``(sW)+ x = s+ W+ x + s- W- x``), and so are the coefficients on the way back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medlrp.lrp.engine import Engine, clamp_weight, clamped_product
from medlrp.lrp.route import route
from medlrp.lrp.rules import REFERENCE_RULES, LinearRule, Quantities, ZBox, affine

Tensor = torch.Tensor

# which unmerged keys a merged key reads when the BatchNorm scale has negative entries
_PARTNER = {"A": "B", "B": "A", "C": "D", "D": "C", "LP": "LN", "HN": "HP"}
# products of the form (input transform, weight transform)
_PRODUCTS = {
    "A": ("x+", "W+"),
    "B": ("x+", "W-"),
    "C": ("x-", "W+"),
    "LP": ("low", "W+"),
    "LN": ("low", "W-"),
    "HP": ("high", "W+"),
    "HN": ("high", "W-"),
    "F": ("ones", "1"),
    "Q": ("ones", "W2"),
    "M": ("|x|", "|W|"),  # |W| |x| = V+x+ + V-x- - V+x- - V-x+: the fused path for inputs of both signs
}


#: Layers whose products cost at most this many multiply-adds per output element (a first layer on 1-3
#: channels, a depthwise convolution) keep no rule state: the backward pass recomputes their products.
CHEAP_FAN_IN = 32


class Scale:
    """A per-output-channel scale ``s`` (a merged BatchNorm), with its signed parts."""

    def __init__(self, s: Tensor) -> None:
        self.s = s
        # all positive: the common case (trained or fresh BatchNorm), where merging is a plain rescale
        self.mixed = bool((s < 0).any())
        self.pos = s.clamp(min=0) if self.mixed else s
        self.neg = s.clamp(max=0) if self.mixed else None


class LinearCall:
    """A linear layer's call: computes the products and builds the routed output (merged or not)."""

    def __init__(
        self,
        engine: Engine,
        call: Callable[[Tensor, Tensor, Tensor | None], Tensor],
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        rule: LinearRule,
        name: str,
        channel_dim: int,
    ) -> None:
        self.engine = engine
        self.call = call
        self.weight = weight
        self.rule = rule
        self.name = name
        self.x_true = x
        self.x_routed = engine.routed(x)
        self.channel_dim = channel_dim
        self.references: dict[str, tuple[Tensor, Tensor]] = {}
        if isinstance(rule, REFERENCE_RULES) and not engine.is_model_input(x):
            raise engine.input_error(
                f"rule {rule.name!r} needs a reference input, so it may only be put on a layer that reads "
                "the model input"
            )
        self.nonneg = True
        if rule.needs_input_signs:
            node = engine.node(x)
            known = node is not None and node.nonneg
            self.nonneg = known or (bool((x.detach().min() >= 0).item()) if x.numel() else True)
        self._routed: dict[str, Tensor] = {}
        self._true: dict[str, Tensor] = {}
        self.bias = None if bias is None else self._channel(bias)

        # the fused fast path's products only, as long as it may apply (a merged BatchNorm with a mixed
        # scale, known later, computes the general path's products then, from the routed input)
        fast = None if engine.dual else rule.fast_keys(self.nonneg, False)
        if fast is not None:
            keys = grad_keys = set(fast)
        else:
            keys = self._physical(self.rule.needed(self.nonneg), None)
            grad_keys = self._physical(self._coefficient_keys(), None)
        needs_z_grad = "Z" in grad_keys
        if engine.dual:
            self.z_true = call(x, weight, bias)
        elif needs_z_grad:
            self.z_true = self.routed_product("Z")
        else:
            with torch.no_grad():
                self.z_true = call(x, weight, bias)
        self.z_value = self.z_true.detach()
        for key in sorted(keys | grad_keys):
            self.routed_product(key)

    # -- products ---------------------------------------------------------------------------------------
    def _channel(self, v: Tensor) -> Tensor:
        shape = [1] * max(self.x_true.dim(), 2)
        shape[self.channel_dim] = -1
        return v.reshape(shape) if self.channel_dim != -1 else v

    def _coefficient_keys(self) -> tuple[str, ...]:
        rule = self.rule
        if isinstance(rule, ZBox):
            return ("Z", "LP", "HN")
        if rule.references:
            return rule.references
        if rule.needs_input_signs:
            return rule.needed(self.nonneg)
        return ("Z",)

    def _physical(self, keys: tuple[str, ...] | set[str], scale: Scale | None) -> set[str]:
        """Physical product keys behind merged keys."""
        out: set[str] = set()
        for key in keys:
            group = {key}
            if scale is not None and scale.mixed and key in _PARTNER:
                group.add(_PARTNER[key])
            for k in group:
                if k in ("C", "D") and self.nonneg:
                    continue  # x- = 0: these products vanish
                if k == "B" and self.nonneg:
                    out |= {"Z", "A"}
                elif k == "D":
                    out |= {"Z", "A", "B", "C"}
                else:
                    out.add(k)
        return out

    def _input(self, kind: str, routed: bool) -> Tensor:
        x = self.x_routed if routed else self.x_true
        if kind == "x+":
            return x if self.nonneg else x.clamp(min=0)
        if kind == "x-":
            return x.clamp(max=0)
        if kind == "|x|":
            return x.abs()
        if kind not in self.references:
            self.references[kind] = self._reference(kind)
        true, leaf = self.references[kind]
        return leaf if routed else true

    def _reference(self, kind: str) -> tuple[Tensor, Tensor]:
        x = self.x_true
        if kind == "ones":
            value = torch.ones_like(x)
        else:
            rule = self.rule
            assert isinstance(rule, ZBox)
            bound = rule.low if kind == "low" else rule.high
            if bound is None:
                flat = x.reshape(x.shape[0], -1)
                bound = (flat.amin(1) if kind == "low" else flat.amax(1)).reshape([-1] + [1] * (x.dim() - 1))
            value = torch.as_tensor(bound, dtype=x.dtype, device=x.device).expand_as(x)
            if not self.engine.dual:
                value = value.detach()
        return value, self.engine.reference(kind, value)

    def _weight(self, kind: str) -> Tensor:
        w = self.weight
        if kind in ("W+", "W-", "|W|"):
            return self.engine.weight_part(w, kind[1])
        if kind == "1":
            return torch.ones_like(w)
        return w * w

    def routed_product(self, key: str) -> Tensor:
        """The product ``key`` on the routed input (differentiable), computed once."""
        hit = self._routed.get(key)
        if hit is None:
            if key == "Z":
                hit = self.call(self.x_routed, self.weight, self._raw_bias())
            else:
                hit = self._product(key, True)
            self._routed[key] = hit
        return hit

    def _product(self, key: str, routed: bool) -> Tensor:
        inp, w = _PRODUCTS[key]
        x = self._input(inp, routed)
        if key == "F":
            flat = self._flat(x)
            if flat is not None:
                return flat
        if w in ("W+", "W-", "|W|") and not self.engine.dual:
            return clamped_product(self.call, x, self.weight, w[1])
        return self.call(x, self._weight(w), None)

    def _flat(self, ones: Tensor) -> Tensor | None:
        """``ones * ones-weights`` is the same for every output channel: one channel, expanded.

        Exact (the gradient of the expansion sums over the channels, as the full product's would), and
        one output channel's cost instead of all; ``None`` where a single-channel weight does not fit
        the call (grouped or transposed convolutions), which then compute the full product.
        """
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

    def value(self, key: str) -> Tensor:
        """The product ``key``'s true value (with its graph in dual mode)."""
        if key == "Z":
            return self.z_true if self.engine.dual else self.z_value
        if not self.engine.dual:
            return self.routed_product(key).detach()
        hit = self._true.get(key)
        if hit is None:
            hit = self._true[key] = self._product(key, False)
        return hit

    def _raw_bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape(-1)

    # -- coefficients -----------------------------------------------------------------------------------
    def _canonical(self, key: str) -> Tensor:
        """Unmerged sign-split product values (``B``/``D`` derived from ``Z``)."""
        if key in ("C", "D") and self.nonneg:
            return torch.zeros_like(self.z_value)
        if key == "B" and self.nonneg or key == "D":
            rest = self.value("Z") - self.value("A")
            if self.bias is not None:
                rest = rest - self.bias
            if key == "D":
                rest = rest - self.value("B") - self.value("C")
            return rest
        return self.value(key)

    def coefficients(
        self, z: Tensor, scale: Scale | None, bias: Tensor | float, keys: list[str]
    ) -> list[Tensor | None]:
        """Coefficients for the physical products ``keys``, for output ``z`` of the (merged) layer."""
        needed = self.rule.needed(self.nonneg)
        products: dict[str, Tensor] = {}
        for key in needed:
            val = self._canonical(key)
            if scale is not None:
                if key == "Q":
                    val = scale.s * scale.s * val
                elif key == "F":
                    pass
                elif scale.mixed:
                    val = scale.pos * val + scale.neg * self._canonical(_PARTNER[key])
                else:
                    val = scale.s * val
            products[key] = val
        merged = self.rule.coefficients(Quantities(z, bias, products), self.nonneg)
        # without a graph, tensors made here (or returned once by the rule) may be changed in place
        uses: dict[int, int] = {}
        for c in merged.values():
            uses[id(c)] = uses.get(id(c), 0) + 1
        fresh = not self.engine.dual
        inputs = {id(z), *(id(v) for v in products.values())}  # a custom rule may hand these back
        mine = {i for i, n in uses.items() if n == 1 and i not in inputs} if fresh else set()
        canon: dict[str, Tensor] = {}

        def new(t: Tensor) -> Tensor:
            if fresh:
                mine.add(id(t))
            return t

        def add(key: str, c: Tensor) -> None:
            if key not in canon:
                canon[key] = c
            elif id(canon[key]) in mine:
                canon[key].add_(c)
            else:
                canon[key] = new(canon[key] + c)

        def sub(key: str, c: Tensor) -> None:
            if key not in canon:
                canon[key] = new(-c)
            elif id(canon[key]) in mine:
                canon[key].sub_(c)
            else:
                canon[key] = new(canon[key] - c)

        def scaled(c: Tensor, factor: Tensor) -> Tensor:
            if id(c) in mine and c.shape == torch.broadcast_shapes(c.shape, factor.shape):
                return c.mul_(factor)
            return new(factor * c)

        for key, c in merged.items():
            if scale is None or key == "F":
                add(key, c)
            elif key in ("Z",):
                add(key, scaled(c, scale.s))
            elif key == "Q":
                add(key, scaled(c, scale.s * scale.s))
            elif scale.mixed:
                add(key, new(scale.pos * c))
                add(_PARTNER[key], new(scale.neg * c))
            else:
                add(key, scaled(c, scale.s))
        # virtual products: B = Z - b - A (input >= 0), D = Z - b - A - B - C
        if self.nonneg:
            canon.pop("C", None)
            canon.pop("D", None)
            if "B" in canon:
                cb = canon.pop("B")
                sub("A", cb)
                add("Z", cb)
        elif "D" in canon:
            cd = canon.pop("D")
            for k in ("A", "B", "C"):
                sub(k, cd)
            add("Z", cd)
        return [canon.get(k) for k in keys]

    # -- outputs ----------------------------------------------------------------------------------------
    def output(self) -> Tensor:
        """The layer's output, routed by the rule (not merged)."""
        bias: Tensor | float = self.bias if self.bias is not None else 0.0
        return self._build(self.z_true, None, bias)

    def merged_output(self, y: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """The output ``y = s * z + t`` of a BatchNorm merged into this layer, routed by the rule."""
        scale = Scale(self._channel(s))
        shift = self._channel(t)
        bias = shift if self.bias is None else scale.s * self.bias + shift
        if self.engine.dual:
            return self._build(y, scale, bias)
        return self._build(y, scale, bias.detach())

    def _build(self, z: Tensor, scale: Scale | None, bias: Tensor | float) -> Tensor:
        routed = None if self.engine.dual else self._fused(z.detach(), scale, bias)
        if routed is not None:
            return self._finish(z, routed)
        keys = sorted(
            self._physical(self._coefficient_keys(), scale)
            | self._physical(self.rule.needed(self.nonneg), scale)
        )
        products = [self.routed_product(k) for k in keys]
        # keep only products the gradient really reaches (B/C/Z may be value-only)
        if self.engine.dual:
            coeffs = self.coefficients(z, scale, bias, keys)
            kept = [(p, c) for p, c in zip(products, coeffs, strict=True) if c is not None]
            routed = route(z, [p for p, _ in kept], [c for _, c in kept])
        else:
            z_value = z.detach()

            def compute() -> list[Tensor | None]:
                return self.coefficients(z_value, scale, bias, keys)

            guard = (z_value, self.z_value, *products)
            routed = route(z_value, products, compute=compute, owned=True, guard=guard)
        return self._finish(z, routed)

    def _fused(self, z: Tensor, scale: Scale | None, bias: Tensor | float) -> Tensor | None:
        """The route of the rule's fused fast path (see :meth:`LinearRule.fast_keys`), else ``None``."""
        rule = self.rule
        fast = rule.fast_keys(self.nonneg, scale is not None and scale.mixed)
        if fast is None:
            return None
        products = [self.routed_product(k) for k in fast]
        values = {k: self.value(k) for k in fast if k != "Z"}
        nonneg = self.nonneg
        s = None if scale is None else scale.s
        if isinstance(bias, Tensor):
            bias = bias.detach()  # a parameter: no graph in the fast path

        def compute() -> list[Tensor]:
            return rule.fast_state(z, values, s, bias)

        def expand(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
            return rule.fast_grads(list(state), s, grad, nonneg)  # type: ignore[arg-type]

        relu = None
        if rule.relu_variant:

            def relu_compute() -> list[Tensor]:
                return rule.relu_state(z, values, s, bias) or []

            def relu_expand(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
                return rule.relu_grads(list(state), z, s, grad, nonneg)  # type: ignore[arg-type]

            relu = (relu_compute, relu_expand)
        if self._cheap(fast):
            # keep nothing: the backward pass recomputes this cheap layer's products (its output is
            # large: a first layer on a few channels, a depthwise convolution), then the state
            recompute = self._recompute(fast, s, bias, z)

            def expand_again(state: Sequence[Tensor | None], grad: Tensor) -> tuple[Tensor, ...]:
                z_again, values_again = recompute()
                return rule.fast_grads(rule.fast_state(z_again, values_again, s, bias), s, grad, nonneg)

            return route(z, products, compute=list, expand=expand_again)  # type: ignore[arg-type]
        guard = (z, *values.values())
        return route(z, products, compute=compute, guard=guard, expand=expand, relu=relu)  # type: ignore[arg-type]

    def _cheap(self, keys: Sequence[str]) -> bool:
        """Whether the fused state is worth recomputing: products of at most :data:`CHEAP_FAN_IN` terms."""
        if "F" in keys or keys == ("Z",):
            return False  # flat keeps one channel, epsilon keeps nothing: no state to save
        return self.weight.dim() > 2 and self.weight[0].numel() <= CHEAP_FAN_IN

    def _recompute(
        self, keys: Sequence[str], s: Tensor | None, bias: Tensor | float, z_kept: Tensor
    ) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        """A closure giving ``(z, products)`` again from the input.

        ``z`` is the layer's output as kept (``z_kept``: the route's own storage, which an in-place ReLU
        may have cut to 0; it is kept anyway, as the ReLU's output or the next layer's input) unless
        the rule needs the uncut value: with inputs of both signs (``M``) the positive part is derived
        from ``z``, so ``z`` is recomputed. Elsewhere a cut unit has gradient 0 and every normaliser of
        the products on ``x+`` or on the references stays away from 0, so its coefficient is finite.
        """
        # the closure lives until the backward pass: it holds the input and the weight (kept anyway), not
        # ``self`` (whose products are output-sized), hence its own small copy of :meth:`_input`
        call, weight, x = self.call, self.weight.detach(), self.x_routed.detach()
        inputs = {kind: true.detach() for kind, (true, _) in self.references.items()}
        nonneg = self.nonneg
        scale = 1.0 if s is None else s

        def product(key: str) -> Tensor:
            kind, part = _PRODUCTS[key]
            if kind == "x+":
                inp = x if nonneg else x.clamp(min=0)
            elif kind == "|x|":
                inp = x.abs()
            else:
                inp = inputs[kind]
                if inp.dim() > 1 and all(st == 0 for st in inp.stride()[1:]):
                    # a bound constant over each case (a number, or the case's min/max): the product is
                    # that constant times one product of ones, computed for one case
                    one = call(torch.ones_like(inp[:1]), clamp_weight(weight, part[1]), None)
                    per_case = inp[(slice(None),) + (0,) * (inp.dim() - 1)]
                    return one * per_case.reshape(-1, *([1] * (one.dim() - 1)))
            return call(inp, clamp_weight(weight, part[1]), None)

        # held only where read: a reference would keep the output alive to the end of the backward pass
        kept = None if "M" in keys else z_kept

        def recompute() -> tuple[Tensor, dict[str, Tensor]]:
            with torch.no_grad():
                z = affine(call(x, weight, None), scale, bias) if kept is None else kept
                return z, {k: product(k) for k in keys if k != "Z"}

        return recompute

    def _finish(self, z: Tensor, routed: Tensor) -> Tensor:
        if self.engine.dual:
            node = self.engine.track(z, routed)
            out = z
        else:
            node = self.engine.track(routed)
            out = routed
        node.linear = self
        return out


def bind_linear(func_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Split a functional linear call into ``(input, weight, bias, rest_args, rest_kwargs)``."""
    args = list(args)
    kwargs = dict(kwargs)
    x = args.pop(0) if args else kwargs.pop("input")
    w = args.pop(0) if args else kwargs.pop("weight")
    b = args.pop(0) if args else kwargs.pop("bias", None)
    return x, w, b, tuple(args), kwargs


def make_call(func: Any, rest: tuple[Any, ...], kw: dict[str, Any]) -> Callable[..., Tensor]:
    """``call(x, w, b)``: the functional op with the layer's other arguments (stride, padding ...)."""

    def call(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return func(x, w, b, *rest, **kw)

    return call


__all__ = ["LinearCall", "Scale", "bind_linear", "make_call"]
