"""LRP rules for linear layers (Linear, Conv1d/2d/3d, ConvTranspose), written as gradient coefficients.

A linear layer computes ``z = V x + beta``. Every rule here is the rule of zennit 0.5.1 of the same name
and is expressed on *sign-split products* of that layer, so one formula serves Linear and every
convolution, merged with a following BatchNorm or not:

=====  ====================  =====  ======================
key    product               key    product
=====  ====================  =====  ======================
``A``  ``V+ x+``             ``LP`` ``V+ low``
``B``  ``V- x+``             ``HN`` ``V- high``
``C``  ``V+ x-``             ``F``  ``ones-weights * ones``
``D``  ``V- x-``             ``Q``  ``V**2 * ones``
``Z``  ``V x + beta`` (= z)
=====  ====================  =====  ======================

A rule returns, for each product it uses, a coefficient tensor ``c`` (output-shaped): in the backward
pass the gradient ``g`` arriving at ``z`` becomes ``g * c`` at that product. Relevance is carried as
``R = z * g`` (the gradient-times-input identity), so ``c`` is the LRP message divided by the upper
relevance, times ``z``. The engine then obtains the lower relevance as ``input * grad`` (plus
``low * grad_low`` etc. for rules whose reference is not the input).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def stabilize(x: Tensor, eps: float) -> Tensor:
    """Return ``x + eps * sign(x)`` with ``sign(0) = +1`` (zennit's ``stabilize``), for safe division."""
    # three kernels (compare, select, add) instead of four; x + (-eps) is bitwise x - eps
    e = torch.full((), eps, dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, e, -e).add_(x)


def stabilized_ratio(z: Tensor, eps: float) -> Tensor:
    """Return ``z / stabilize(z, eps)`` with a single new tensor.

    For ``z > 0`` it is ``z / (z + eps)``, for ``z < 0`` ``z / (z - eps) = |z| / (|z| + eps)``, and ``0``
    at ``z == 0``. Without a graph it is computed in place as ``1 / (1 + |eps / z|)`` (equal up to
    rounding): on a CPU a fresh output-sized tensor costs more than an elementwise pass over it.
    """
    if z.requires_grad:
        a = z.abs()
        return a / (a + eps)
    # |z| / (|z| + eps) = 1 / (1 + |eps / z|): one new tensor, the rest in place (eps / 0 = inf gives 0)
    return torch.div(torch.full((), eps, dtype=z.dtype, device=z.device), z).abs_().add_(1.0).reciprocal_()


@dataclass(frozen=True)
class Quantities:
    """What a rule sees of one layer call: product values (of the merged layer) and the output.

    Attributes:
        z: The layer's output value (after a merged BatchNorm, if any).
        bias: The layer's bias, broadcastable to ``z`` (``0.0`` when the layer has none).
        products: Product values by key (see the module docstring); only the keys the rule asked for.
    """

    z: Tensor
    bias: Tensor | float
    products: Mapping[str, Tensor]

    def __getitem__(self, key: str) -> Tensor:
        return self.products[key]


def _pos(b: Tensor | float) -> Tensor | float:
    return b.clamp(min=0) if isinstance(b, Tensor) else max(b, 0.0)


def _neg(b: Tensor | float) -> Tensor | float:
    return b.clamp(max=0) if isinstance(b, Tensor) else min(b, 0.0)


def _positive(
    z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float, extra: float
) -> Tensor:
    """``P + extra`` as a new tensor, ``P = V+ x+ + V- x- + beta+`` (the positive products and bias).

    Inputs >= 0: ``P = s A + beta+``; inputs of both signs: ``V+ x+ + V- x- = (V x + |V| |x|) / 2``, so
    ``P = (z - beta + s M) / 2 + beta+`` with ``M = |W| |x|`` (one product instead of three).
    """
    scale = 1.0 if s is None else s
    if "A" in p:
        return affine(p["A"], scale, _pos(bias) + extra)
    t = affine(p["M"], scale, -bias)
    return t.add_(z).mul_(0.5).add_(_pos(bias) + extra)


def affine(a: Tensor, scale: Tensor | float, shift: Tensor | float) -> Tensor:
    """``shift + scale * a`` as one new tensor (``scale``/``shift``: per channel or scalars)."""
    if isinstance(scale, Tensor) or isinstance(shift, Tensor):
        scale_t = torch.as_tensor(scale, dtype=a.dtype, device=a.device)
        shift_t = torch.as_tensor(shift, dtype=a.dtype, device=a.device)
        return torch.addcmul(shift_t, a, scale_t)
    return torch.mul(a, scale).add_(shift)


class Rule:
    """Base class of all rules. ``name`` is the rule's short name, ``params`` its JSON-friendly options."""

    name = "rule"

    def params(self) -> dict[str, float]:
        """The rule's parameters (for ``Explanation.options`` and ``repr``)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Stabilized:
    """Mixin of the rules whose only parameter is the stabiliser of their denominator."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def params(self) -> dict[str, float]:
        """See :meth:`Rule.params`."""
        return {"stabilizer": self.stabilizer}


class LinearRule(Rule):
    """A rule for linear layers.

    Subclasses set ``needs_input_signs`` (uses ``A``..``D``), ``references`` (reference inputs other
    than the layer input: ``"low"``, ``"high"``, ``"ones"``) and implement :meth:`coefficients`.
    """

    #: Uses the sign-split products A, B, C, D.
    needs_input_signs = False
    #: Keys of reference products (LP, HN, F, Q) this rule uses; non-empty only for input-layer rules.
    references: tuple[str, ...] = ()

    def needed(self, nonneg: bool) -> tuple[str, ...]:
        """Product keys whose values :meth:`coefficients` reads (``nonneg``: the input is >= 0)."""
        if self.needs_input_signs:
            return ("A", "B") if nonneg else ("A", "B", "C", "D")
        return self.references

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """Return ``{product key: coefficient}`` for the products that carry the gradient."""
        raise NotImplementedError

    # -- fused fast path (no graph): few elementwise passes, a compact state kept for the backward pass.
    #    ``z``: the (merged) layer output; ``p``: the unmerged product values by key (``A = W+ x``,
    #    ``LP = W+ low`` ...); ``s``: the merged BatchNorm scale
    #    (per channel, ``None`` without one); ``bias``: the merged bias. Equal to :meth:`coefficients`
    #    up to rounding.
    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """Sorted physical product keys of the fused path, or ``None`` (no fused path here).

        Args:
            nonneg: The input is known to be >= 0.
            mixed: The merged scale has entries of both signs.
        """
        return None

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """The state kept for the backward pass (fresh tensors; ``z`` intact)."""
        raise NotImplementedError

    def fast_grads(
        self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """The products' gradients (in :meth:`fast_keys` order; consumes ``state``).

        Default: the state holds one coefficient per product, scaled in place by the gradient.
        """
        return tuple(c.mul_(grad) for c in state)

    #: Has :meth:`relu_state` / :meth:`relu_grads`.
    relu_variant = False

    def relu_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor] | None:
        """A smaller state for an output consumed only by an in-place ReLU (if :attr:`relu_variant`).

        The backward pass then reads ``z`` itself (:meth:`relu_grads`) after the ReLU zeroed its
        negative part: the gradient there is zero, so only the values where ``z > 0`` matter.
        """
        return None

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """The products' gradients from :meth:`relu_state` and the ReLU's output ``z``."""
        raise NotImplementedError


class Epsilon(LinearRule):
    """LRP-epsilon: ``R_in = x * W^T (R / stab(z))``, with ``stab(z) = z + epsilon * sign(z)``."""

    name = "epsilon"
    relu_variant = True

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, float]:
        """See :meth:`Rule.params`."""
        return {"epsilon": self.epsilon}

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {"Z": stabilized_ratio(q.z, self.epsilon)}

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: every input and scale."""
        return ("Z",)

    def _scaled_ratio(self, z: Tensor, s: Tensor | None) -> Tensor:
        if s is None:
            return stabilized_ratio(z, self.epsilon)
        # s / (1 + |eps / z|) = s |z| / (|z| + eps): the scale divides instead of a reciprocal and a product
        t = torch.div(torch.full((), self.epsilon, dtype=z.dtype, device=z.device), z).abs_().add_(1.0)
        return torch.div(s, t, out=t)

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[s z / stab(z)]``."""
        return [self._scaled_ratio(z, s)]

    def relu_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor] | None:
        """Nothing: the ratio is computed from the ReLU's output in the backward pass."""
        return []

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """See :meth:`LinearRule.relu_grads`."""
        return (self._scaled_ratio(z, s).mul_(grad),)


class Zero(LinearRule):
    """LRP-0: ``R_in = x * W^T (R / z)``, i.e. gradient times input (no division, so no 0/0 at z = 0)."""

    name = "zero"

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {"Z": torch.ones_like(q.z)}


class ZPlus(Stabilized, LinearRule):
    """LRP-z+ (zennit's ``ZPlus``: alpha=1, beta=0 with negative inputs allowed).

    ``R_in = x+ * (V+)^T (R / s) + x- * (V-)^T (R / s)``, ``s = stab(V+ x+ + V- x- + beta+)``.
    """

    name = "zplus"
    needs_input_signs = True
    relu_variant = True

    def needed(self, nonneg: bool) -> tuple[str, ...]:
        """See :meth:`LinearRule.needed`."""
        return ("A",) if nonneg else ("A", "D")

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        bias = _pos(q.bias)
        den = q["A"] if isinstance(bias, float) and bias == 0.0 else q["A"] + bias
        if not nonneg:
            den = den + q["D"]
        c = q.z / stabilize(den, self.stabilizer)
        return {"A": c} if nonneg else {"A": c, "D": c}

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: a scale >= 0."""
        if mixed:
            return None
        return ("A",) if nonneg else ("M", "Z")

    def relu_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor] | None:
        """``[P + eps]``, ``P = V+ x+ + V- x- + beta+ >= 0`` (so ``stab(P) = P + eps``)."""
        return [_positive(z, p, s, bias, self.stabilizer)]

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[s z / (P + eps)]``."""
        (dp,) = self.relu_state(z, p, s, bias) or []
        c = torch.div(z, dp, out=dp)
        return [c if s is None else c.mul_(s)]

    def fast_grads(
        self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``A``: ``s c g``; inputs of both signs: ``M`` and ``Z``: ``s c g / 2`` each (one tensor)."""
        g = state[0].mul_(grad)
        return (g,) if nonneg else (g.mul_(0.5), g)

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """See :meth:`LinearRule.relu_grads`."""
        c = torch.div(z, state[0], out=state[0])
        return self.fast_grads([c if s is None else c.mul_(s)], s, grad, nonneg)


class AlphaBeta(LinearRule):
    """LRP-alpha-beta: positive and negative contributions normalised separately.

    ``R_in = alpha * [x+ V+^T (R/sp) + x- V-^T (R/sp)] - beta * [x+ V-^T (R/sn) + x- V+^T (R/sn)]`` with
    ``sp = stab(V+ x+ + V- x- + beta+)`` and ``sn = stab(V- x+ + V+ x- + beta-)``.
    """

    name = "alpha-beta"
    needs_input_signs = True
    relu_variant = True

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError("alpha-beta needs alpha, beta >= 0 and alpha - beta = 1")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def params(self) -> dict[str, float]:
        """See :meth:`Rule.params`."""
        return {"alpha": self.alpha, "beta": self.beta, "stabilizer": self.stabilizer}

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        dp = q["A"] + _pos(q.bias)
        dn = q["B"] + _neg(q.bias)
        if not nonneg:
            dp, dn = dp + q["D"], dn + q["C"]
        if nonneg:
            # dp = V+ x+ + beta+ is a sum of terms >= 0, so stab(dp) = dp + eps exactly (dp is a new tensor)
            cp = q.z * (self.alpha / dp.add_(self.stabilizer))
        else:
            cp = q.z * (self.alpha / stabilize(dp, self.stabilizer))
        cn = q.z * (-self.beta / stabilize(dn, self.stabilizer))
        return {"A": cp, "B": cn} if nonneg else {"A": cp, "B": cn, "C": cn, "D": cp}

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: a scale >= 0 (``B = Z - b - A`` is virtual)."""
        if mixed:
            return None
        return ("A", "Z") if nonneg else ("M", "Z")

    def relu_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor] | None:
        """``[P + eps]``, ``P = V+ x+ + V- x- + beta+``."""
        return [_positive(z, p, s, bias, self.stabilizer)]

    def _split(self, dp: Tensor, z: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(s (cp - cn), s cn)`` from ``dp = P + eps``.

        ``cp = alpha z / (P + eps)``, ``cn = beta z / (eps + (P - z))``; ``z - P = V- x + beta- <= 0``,
        so ``stab(z - P) = (z - P) - eps`` (the clamp only absorbs
        rounding where ``V- x + beta-`` is 0, whose products vanish anyway).
        """
        q = torch.sub(dp, z).clamp_(min=self.stabilizer)  # eps + (P - z)
        # the merged scale s is applied here: the products are the unmerged layer's
        cn = torch.div(z, q, out=q).mul_(self.beta if s is None else self.beta * s)
        cpn = torch.div(z, dp, out=dp).mul_(self.alpha if s is None else self.alpha * s).sub_(cn)
        return cpn, cn

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[s (cp - cn), s cn]``."""
        (dp,) = self.relu_state(z, p, s, bias) or []
        return list(self._split(dp, z, s))

    def fast_grads(
        self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``A``: ``s (cp - cn) g``; ``Z`` (standing for ``B = Z - b - A``): ``s cn g``.

        Inputs of both signs (``cp`` on ``V+x+ + V-x-``, ``cn`` on the rest): ``M``: ``s (cp - cn) g / 2``,
        ``Z``: ``s (cp + cn) g / 2``.
        """
        cpn, cn = state
        if not nonneg:
            cn.add_(cpn, alpha=0.5)
            cpn.mul_(0.5)
        return cpn.mul_(grad), cn.mul_(grad)

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """See :meth:`LinearRule.relu_grads`."""
        return self.fast_grads(list(self._split(state[0], z, s)), s, grad, nonneg)


class Gamma(LinearRule):
    """Generalised LRP-gamma (zennit's ``Gamma``), four products split by the sign of the true output.

    With ``g = gamma`` and ``(V + g V+)``, ``(V + g V-)`` the modified weights:
    positive outputs use ``sp = stab((V+gV+) x+ + (V+gV-) x- + beta + g beta+)``,
    negative outputs ``sn = stab((V+gV-) x+ + (V+gV+) x- + beta + g beta-)``; biases enter only the
    products on ``x+`` (as in zennit).
    """

    name = "gamma"
    needs_input_signs = True

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def params(self) -> dict[str, float]:
        """See :meth:`Rule.params`."""
        return {"gamma": self.gamma, "stabilizer": self.stabilizer}

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        g = self.gamma
        g1 = 1.0 + g
        a, b, bias = q["A"], q["B"], q.bias
        # the bias terms are per channel: combine them before touching output-sized tensors
        bias_p = bias + g * _pos(bias)
        bias_n = bias + g * _neg(bias)
        sp = torch.add(b, a, alpha=g1)
        sn = torch.add(a, b, alpha=g1)
        if not nonneg:
            c, d = q["C"], q["D"]
            sp = sp.add_(c).add_(d, alpha=g1)
            sn = sn.add_(d).add_(c, alpha=g1)
        if not isinstance(bias_p, float) or bias_p != 0.0:
            sp = sp.add_(bias_p)
        if not isinstance(bias_n, float) or bias_n != 0.0:
            sn = sn.add_(bias_n)
        z = q.z
        # sp - z = gamma * (V+ x+ + V- x- + beta+) >= 0, so sp > 0 wherever z > 0 and stab(sp) = sp + eps
        # there (likewise sn < 0 where z < 0): clamping keeps the denominators away from 0 elsewhere
        eps = self.stabilizer
        if z.requires_grad or sp.requires_grad or sn.requires_grad:  # create_graph: no in-place on the graph
            u = z.clamp(min=0) / (sp.clamp(min=0) + eps)
            v = z.clamp(max=0) / (sn.clamp(max=0) - eps)
        else:
            u = z.clamp(min=0).div_(sp.clamp_(min=0).add_(eps))
            v = z.clamp(max=0).div_(sn.clamp_(max=0).sub_(eps))
        ca, cb = torch.add(v, u, alpha=g1), torch.add(u, v, alpha=g1)
        return {"A": ca, "B": cb} if nonneg else {"A": ca, "B": cb, "C": cb, "D": ca}

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: a scale >= 0 (``B = Z - b - A`` is virtual)."""
        if mixed:
            return None
        return ("A", "Z") if nonneg else ("M", "Z")

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[w]``, ``w = u - v`` (``u``, ``v`` as in :meth:`coefficients`, never both non-zero).

        With ``P = V+ x+ + V- x- + beta+`` (see :func:`_positive`): ``sp = z + gamma P`` and
        ``sn = (1 + gamma) z - gamma P``, so
        ``w = z / (gamma P + eps + max(z, -(1 + gamma) z))`` for either sign of ``z``.
        """
        g = self.gamma
        d = _positive(z, p, s, bias, 0.0).mul_(g).add_(self.stabilizer)
        m = z.mul(-(1.0 + g))
        d.add_(torch.maximum(m, z, out=m))
        del m
        return [torch.div(z, d, out=d)]

    def fast_grads(
        self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``A``: ``s gamma w g``; ``Z``: ``s (u + (1 + gamma) v) g = s max(w, -(1 + gamma) w) g``.

        Inputs of both signs (``ca`` on ``V+x+ + V-x-``, ``cb`` on the rest; ``ca - cb = gamma w``,
        ``ca + cb = (2 + gamma) |w|``): ``M``: ``s gamma w g / 2``, ``Z``: ``s (2 + gamma) |w| g / 2``.
        """
        (w,) = state
        g = self.gamma
        if nonneg:
            t = w.mul(-(1.0 + g))
            torch.maximum(t, w, out=t)
        else:
            t = w.abs().mul_(1.0 + 0.5 * g)
            w.mul_(0.5)
        if s is not None:
            t.mul_(s)
            w.mul_(s)
        return w.mul_(g).mul_(grad), t.mul_(grad)


class ZBox(LinearRule):
    """LRP-z^B (bounded input): ``R_in = x W^T m - low V+^T m - high V-^T m``.

    ``m = R / stab(z - V+ low - V- high)``.

    Only valid on a layer that reads the model input. ``low``/``high``: a float, a tensor broadcastable
    to the input, or ``None`` for each sample's own minimum / maximum (samples stay independent).
    """

    name = "zbox"
    references = ("LP", "HN")

    def __init__(
        self, low: float | Tensor | None = None, high: float | Tensor | None = None, stabilizer: float = 1e-6
    ) -> None:
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def params(self) -> dict[str, float]:
        """See :meth:`Rule.params`."""
        out: dict[str, float] = {"stabilizer": self.stabilizer}
        for key in ("low", "high"):
            val = getattr(self, key)
            if isinstance(val, (int, float)):
                out[key] = float(val)
        return out

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        # zennit: out1 = V+ low + beta+, out2 = V- high + beta-, so the biases cancel: z - out1 - out2
        den = q.z - q["LP"] - q["HN"] - q.bias
        c = q.z / stabilize(den, self.stabilizer)
        return {"Z": c, "LP": -c, "HN": -c}

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: a scale >= 0."""
        return None if mixed else ("HN", "LP", "Z")

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[s z / stab(z - s LP - s HN - beta)]``."""
        d = torch.add(p["LP"], p["HN"])
        if s is not None:
            d.mul_(s)
        d = torch.sub(z, d, out=d)
        if not isinstance(bias, float) or bias != 0.0:
            d.sub_(bias)
        # stab(d) = d + eps sign(d), sign(0) = +1; copysign differs only at d = -0.0, which needs z = -0.0
        # and gives the same c = 0
        d.add_(torch.copysign(torch.full((), self.stabilizer, dtype=d.dtype, device=d.device), d))
        c = torch.div(z, d, out=d)
        return [c if s is None else c.mul_(s)]

    def fast_grads(
        self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``HN`` and ``LP``: ``-c g`` (one tensor for both); ``Z``: ``c g``."""
        gz = state[0].mul_(grad)
        gn = torch.neg(gz)
        return gn, gn, gz


class Flat(Stabilized, LinearRule):
    """LRP-flat: every input in the receptive field gets an equal share, ``R_in = 1^T (R / stab(1^T 1))``."""

    name = "flat"
    references = ("F",)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        return {"F": q.z / stabilize(q["F"], self.stabilizer)}

    relu_variant = True

    def fast_keys(self, nonneg: bool, mixed: bool) -> tuple[str, ...] | None:
        """See :meth:`LinearRule.fast_keys`: every input and scale (flat ignores the weights)."""
        return ("F",)

    def relu_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor] | None:
        """``[F + eps]`` (``F >= 0`` counts inputs, so ``stab(F) = F + eps``; one channel, expanded)."""
        f = p["F"]
        if f.dim() > 1 and f.stride(1) == 0:  # one channel expanded over the others: keep one
            f = f.narrow(1, 0, 1)
        return [f + self.stabilizer]

    def fast_state(
        self, z: Tensor, p: Mapping[str, Tensor], s: Tensor | None, bias: Tensor | float
    ) -> list[Tensor]:
        """``[z / (F + eps)]``."""
        (den,) = self.relu_state(z, p, s, bias) or []
        return [torch.div(z, den)]

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """See :meth:`LinearRule.relu_grads`."""
        return (torch.div(z, state[0]).mul_(grad),)


class WSquare(Stabilized, LinearRule):
    """LRP-w^2: ``R_in = (V**2)^T (R / stab(V**2 1 + beta**2))`` (zennit squares the bias too)."""

    name = "wsquare"
    references = ("Q",)

    def coefficients(self, q: Quantities, nonneg: bool) -> dict[str, Tensor]:
        """See :meth:`LinearRule.coefficients`."""
        bias = q.bias
        return {"Q": q.z / stabilize(q["Q"] + bias * bias, self.stabilizer)}


class Pass(Rule):
    """Relevance passes unchanged through an elementwise operation (activations, standalone BatchNorm)."""

    name = "pass"


class Norm(Stabilized, Rule):
    """Proportional split for sums, averages and pooling: ``R_i = x_i * R / stab(sum)`` (no weights)."""

    name = "norm"


#: Rules that read a reference instead of (or besides) the layer input; only on input layers.
REFERENCE_RULES = (ZBox, Flat, WSquare)
