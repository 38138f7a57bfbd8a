"""LRP rules for linear layers (Linear, Conv1d/2d/3d, ConvTranspose): each rule is its equation, once.

A linear layer computes ``z = V x + beta``. Every rule here is the rule of zennit 0.5.1 of the same name,
written on *products* of that layer: the same call with a modified input and a modified weight
(:class:`Product`), so one formula serves Linear and every convolution, merged with a following
BatchNorm or not. A rule names the products it reads (``reads``) and those the gradient flows to
(``carries``), and :meth:`LinearRule.coefficients` returns, for each carrying product, a coefficient
tensor ``c`` (output-shaped): in the backward pass the gradient ``g`` arriving at ``z`` becomes ``g * c``
at that product. Relevance is carried as ``R = z * g`` (the gradient-times-input identity), so ``c`` is the
LRP message divided by the upper relevance, times ``z``; the lower relevance is ``input * grad`` (plus
``low * grad_low`` etc. for products on reference inputs).

That is all a new rule needs (see docs/lrp.md, "Adding a rule"). Fused fast forms of the built-in rules
live in :mod:`medlrp.lrp.kernels`, keyed by rule class and tested against :meth:`coefficients`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import torch

from medlrp.registry import Registry

Tensor = torch.Tensor

#: ``name -> rule class`` (constructible with defaults): the rules composites and tests draw from.
RULES: Registry[type[LinearRule]] = Registry("linear rule")


def register_rule(cls: type[LinearRule]) -> type[LinearRule]:
    """Class decorator: register a rule under its ``name`` (tests then cover it on every composite)."""
    RULES.add(cls.name, cls)
    return cls


class Product(Enum):
    """A product of a linear layer: its call on a modified input with a modified weight.

    Inputs: ``x`` (as is), ``x+``/``x-`` (clamped), ``|x|``, and the references ``low``, ``high``
    (a rule's input bounds) and ``ones``. Weights: ``W``, ``W+``, ``W-``, ``|W|``, ``1`` (ones where the
    layer connects) and ``W2`` (squared). ``Z`` is the layer's own output, bias included. ``BOX`` is
    ``LP + HN`` carried by the ones leaf (z-box's fused form: one product instead of two).
    """

    Z = ("x", "W")  # the layer itself

    # on the input's signs (``M = |W| |x|`` stands for all four in the fused forms)
    A, B, C, D, M = ("x+", "W+"), ("x+", "W-"), ("x-", "W+"), ("x-", "W-"), ("|x|", "|W|")

    # on references: z-box's bounds, flat and w-square's ones
    LP, LN, HP, HN = ("low", "W+"), ("low", "W-"), ("high", "W+"), ("high", "W-")
    F, Q = ("ones", "1"), ("ones", "W2")
    # z-box's fused form: ``LP + HN`` as one product on the ones leaf (``products.Products.box``)
    BOX = ("ones", "box")

    @property
    def input(self) -> str:
        """The input modifier."""
        return self.value[0]

    @property
    def weight(self) -> str:
        """The weight modifier."""
        return self.value[1]


#: Inputs standing for something other than the layer input (on leaves of their own).
REFERENCES = ("low", "high", "ones")
#: Products on ``x-``: they vanish for inputs known to be >= 0.
NEGATIVE_INPUT = (Product.C, Product.D)


def stabilize(x: Tensor, eps: float) -> Tensor:
    """Return ``x + eps * sign(x)`` with ``sign(0) = +1`` (zennit's ``stabilize``), for safe division."""
    # three kernels (compare, select, add) instead of four; x + (-eps) is bitwise x - eps
    e = torch.full((), eps, dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, e, -e).add_(x)


def stabilized_ratio(z: Tensor, eps: float) -> Tensor:
    """Return ``z / stabilize(z, eps)`` with a single new tensor (the proportional split's factor).

    For ``z > 0`` it is ``z / (z + eps)``, for ``z < 0`` ``z / (z - eps) = |z| / (|z| + eps)``, and ``0``
    at ``z == 0``. Without a graph it is computed in place as ``1 / (1 + |eps / z|)`` (equal up to
    rounding): on a CPU a fresh output-sized tensor costs more than an elementwise pass over it.
    """
    if z.requires_grad:
        a = z.abs()
        return a / (a + eps)
    # |z| / (|z| + eps) = 1 / (1 + |eps / z|): one new tensor, the rest in place (eps / 0 = inf gives 0)
    return torch.div(torch.full((), eps, dtype=z.dtype, device=z.device), z).abs_().add_(1.0).reciprocal_()


def identity_ratio(x: Tensor, y: Tensor, grad: Tensor | None = None) -> Tensor:
    """The identity rule ``y = f(x)``, ``R_x = R_y``: the gradient factor ``y / x`` (0 where ``x == 0``).

    With ``grad``: ``grad * y / x``, computed in place on one new tensor (no graph).
    """
    if grad is None and (x.requires_grad or y.requires_grad):
        zero = x == 0
        return torch.where(zero, 0.0, y / torch.where(zero, 1.0, x))
    t = y.mul(1.0) if grad is None else grad * y
    # 0 / 0 -> nan and y / 0 -> inf both become 0 (where x == 0, f(x) carries no relevance of x)
    return t.div_(x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class Quantities:
    """What a rule sees of one layer call: product values (of the merged layer) and the output.

    Attributes:
        z: The layer's output value (after a merged BatchNorm, if any).
        bias: The layer's bias, broadcastable to ``z`` (``0.0`` when the layer has none).
        products: The values of the products the rule reads (``0.0`` for those on ``x-`` when the input
            is >= 0).
    """

    z: Tensor
    bias: Tensor | float
    products: Mapping[Product, Tensor]

    def __getitem__(self, key: Product) -> Tensor:
        return self.products[key]


def positive(b: Tensor | float) -> Tensor | float:
    """``max(b, 0)`` for a tensor or a number."""
    return b.clamp(min=0) if isinstance(b, Tensor) else max(b, 0.0)


def negative(b: Tensor | float) -> Tensor | float:
    """``min(b, 0)`` for a tensor or a number."""
    return b.clamp(max=0) if isinstance(b, Tensor) else min(b, 0.0)


class Rule:
    """Base class of all rules. ``name`` is the rule's short name, ``params`` its JSON-friendly options."""

    name = "rule"

    def params(self) -> dict[str, float]:
        """The rule's parameters (for ``Explanation.options`` and ``repr``): its float attributes."""
        return {k: v for k, v in vars(self).items() if isinstance(v, float)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class LinearRule(Rule):
    """A rule for linear layers: the products it reads and carries, and :meth:`coefficients`.

    Attributes:
        reads: Products whose values :meth:`coefficients` reads.
        carries: Products the gradient flows to (the keys :meth:`coefficients` returns). Products on
            ``x-`` are dropped by the engine for inputs known to be >= 0.
    """

    reads: tuple[Product, ...] = ()
    carries: tuple[Product, ...] = (Product.Z,)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """Return ``{product: coefficient}`` for the products that carry the gradient.

        ``nonneg``: the input is known to be >= 0 (products on ``x-`` are zero and need no coefficient).
        """
        raise NotImplementedError

    def reference(self, kind: str, x: Tensor) -> Tensor | float:
        """The value of reference input ``kind`` (``"low"``, ``"high"``) for layer input ``x``."""
        raise NotImplementedError(f"{type(self).__name__} defines no reference input {kind!r}")

    def uses(self, nonneg: bool) -> tuple[Product, ...]:
        """Every product the rule touches (read or carried), those on ``x-`` dropped when ``nonneg``."""
        keys = dict.fromkeys(self.reads + self.carries)
        return tuple(k for k in keys if not (nonneg and k in NEGATIVE_INPUT))

    @property
    def needs_signs(self) -> bool:
        """Whether a product is on a clamped input (the engine then checks the input's sign)."""
        return any(k.input in ("x+", "x-") for k in self.reads + self.carries)

    @property
    def needs_reference(self) -> bool:
        """Whether a product is on a reference input: then only valid on a layer reading the model input."""
        return any(k.input in REFERENCES for k in self.reads + self.carries)


@register_rule
class Epsilon(LinearRule):
    """LRP-epsilon: ``R_in = x * W^T (R / stab(z))``, with ``stab(z) = z + epsilon * sign(z)``."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {Product.Z: stabilized_ratio(q.z, self.epsilon)}


@register_rule
class Zero(LinearRule):
    """LRP-0: ``R_in = x * W^T (R / z)``, i.e. gradient times input (no division, so no 0/0 at z = 0)."""

    name = "zero"

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {Product.Z: torch.ones_like(q.z)}


class Stabilized(LinearRule):
    """A rule whose only parameter is the stabiliser of its denominator."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)


@register_rule
class ZPlus(Stabilized):
    """LRP-z+ (zennit's ``ZPlus``: alpha=1, beta=0 with negative inputs allowed).

    ``R_in = x+ * (V+)^T (R / s) + x- * (V-)^T (R / s)``, ``s = stab(V+ x+ + V- x- + beta+)``.
    """

    name = "zplus"
    reads = carries = (Product.A, Product.D)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        den = q[Product.A] + positive(q.bias) + q[Product.D]
        c = q.z / stabilize(den, self.stabilizer)
        return {Product.A: c, Product.D: c}


@register_rule
class AlphaBeta(LinearRule):
    """LRP-alpha-beta: positive and negative contributions normalised separately.

    ``R_in = alpha * [x+ V+^T (R/sp) + x- V-^T (R/sp)] - beta * [x+ V-^T (R/sn) + x- V+^T (R/sn)]`` with
    ``sp = stab(V+ x+ + V- x- + beta+)`` and ``sn = stab(V- x+ + V+ x- + beta-)``.
    """

    name = "alpha-beta"
    reads = carries = (Product.A, Product.B, Product.C, Product.D)

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError("alpha-beta needs alpha, beta >= 0 and alpha - beta = 1")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        p = Product
        cp = q.z * (self.alpha / stabilize(q[p.A] + q[p.D] + positive(q.bias), self.stabilizer))
        cn = q.z * (-self.beta / stabilize(q[p.B] + q[p.C] + negative(q.bias), self.stabilizer))
        return {p.A: cp, p.B: cn, p.C: cn, p.D: cp}


@register_rule
class Gamma(LinearRule):
    """Generalised LRP-gamma (zennit's ``Gamma``), four products split by the sign of the true output.

    With ``g = gamma`` and ``(V + g V+)``, ``(V + g V-)`` the modified weights:
    positive outputs use ``sp = stab((V+gV+) x+ + (V+gV-) x- + beta + g beta+)``,
    negative outputs ``sn = stab((V+gV-) x+ + (V+gV+) x- + beta + g beta-)``; biases enter only the
    products on ``x+`` (as in zennit).
    """

    name = "gamma"
    reads = carries = (Product.A, Product.B, Product.C, Product.D)

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        g1, z, eps, p = 1.0 + self.gamma, q.z, self.stabilizer, Product
        # the bias terms are per channel: combined before touching output-sized tensors
        sp = q[p.B] + g1 * q[p.A] + (q[p.C] + g1 * q[p.D]) + (q.bias + self.gamma * positive(q.bias))
        sn = q[p.A] + g1 * q[p.B] + (q[p.D] + g1 * q[p.C]) + (q.bias + self.gamma * negative(q.bias))
        # sp - z = gamma * (V+ x+ + V- x- + beta+) >= 0, so sp > 0 wherever z > 0 and stab(sp) = sp + eps
        # there (likewise sn < 0 where z < 0): clamping keeps the denominators away from 0 elsewhere
        u = z.clamp(min=0) / (sp.clamp(min=0) + eps)
        v = z.clamp(max=0) / (sn.clamp(max=0) - eps)
        ca, cb = v + g1 * u, u + g1 * v
        return {p.A: ca, p.B: cb, p.C: cb, p.D: ca}


@register_rule
class ZBox(LinearRule):
    """LRP-z^B (bounded input): ``R_in = x W^T m - low V+^T m - high V-^T m``.

    ``m = R / stab(z - V+ low - V- high)``.

    Only valid on a layer that reads the model input. ``low``/``high``: a float, a tensor broadcastable
    to the input, or ``None`` for each sample's own minimum / maximum (samples stay independent).
    """

    name = "zbox"
    reads = (Product.LP, Product.HN)
    carries = (Product.Z, Product.LP, Product.HN)

    def __init__(
        self, low: float | Tensor | None = None, high: float | Tensor | None = None, stabilizer: float = 1e-6
    ) -> None:
        number = (int, float)
        self.low = float(low) if isinstance(low, number) else low
        self.high = float(high) if isinstance(high, number) else high
        self.stabilizer = float(stabilizer)

    def reference(self, kind: str, x: Tensor) -> Tensor | float:
        """``low``/``high`` as given, or each sample's own minimum / maximum."""
        bound = self.low if kind == "low" else self.high
        if bound is not None:
            return bound
        flat = x.reshape(x.shape[0], -1)
        return (flat.amin(1) if kind == "low" else flat.amax(1)).reshape([-1] + [1] * (x.dim() - 1))

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        # zennit: out1 = V+ low + beta+, out2 = V- high + beta-, so the biases cancel: z - out1 - out2
        c = q.z / stabilize(q.z - q[Product.LP] - q[Product.HN] - q.bias, self.stabilizer)
        return {Product.Z: c, Product.LP: -c, Product.HN: -c}


@register_rule
class Flat(Stabilized):
    """LRP-flat: every input in the receptive field gets an equal share, ``R_in = 1^T (R / stab(1^T 1))``."""

    name = "flat"
    reads = carries = (Product.F,)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {Product.F: q.z / stabilize(q[Product.F], self.stabilizer)}


@register_rule
class WSquare(Stabilized):
    """LRP-w^2: ``R_in = (V**2)^T (R / stab(V**2 1 + beta**2))`` (zennit squares the bias too)."""

    name = "wsquare"
    reads = carries = (Product.Q,)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[Product, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {Product.Q: q.z / stabilize(q[Product.Q] + q.bias * q.bias, self.stabilizer)}
