"""Fused fast forms of the built-in rules, keyed by rule class: the one kernel layer.

A rule is defined by its products and :meth:`~medlrp.lrp.rules.LinearRule.coefficients`; the engine's
general path routes those coefficients to the products. That costs elementwise passes and keeps every
coefficient tensor until the backward pass. The forms here compute the same gradients (up to rounding;
``tests/test_lrp_registry.py`` checks each against the rule's definition) with fewer passes and a
compact state:

* :class:`Fused` (CNN layers, no graph): ``keys`` the physical products it routes to, ``state`` what is
  kept for the backward pass, ``grads`` the products' gradients from it; optionally a smaller
  ``relu_state``/``relu_grads`` pair for an output consumed only by an in-place ReLU.
* token forms (``F.linear`` of a transformer and patch embeddings): one autograd node each.

A rule without an entry in :data:`KERNELS` (a new one, or a subclass) runs on the general path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.reads import on_device
from medlrp.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, LinearRule, Product, ZBox, ZPlus, positive

Tensor = torch.Tensor
P = Product
#: Product values by product, as a fused form reads them.
Values = Mapping[Product, Tensor]
Bias = Tensor | float


def affine(a: Tensor, scale: Tensor | float, shift: Tensor | float) -> Tensor:
    """``shift + scale * a`` as one new tensor (``scale``/``shift``: per channel or scalars)."""
    if isinstance(scale, Tensor) or isinstance(shift, Tensor):
        return torch.addcmul(on_device(shift, a), a, on_device(scale, a))
    return torch.mul(a, scale).add_(shift)


def _positive(z: Tensor, p: Values, s: Tensor | None, bias: Bias, extra: float) -> Tensor:
    """``P + extra`` as a new tensor, ``P = V+ x+ + V- x- + beta+`` (the positive products and bias).

    Inputs >= 0: ``P = s A + beta+``; inputs of both signs: ``V+ x+ + V- x- = (V x + |V| |x|) / 2``, so
    ``P = (z - beta + s M) / 2 + beta+`` with ``M = |W| |x|`` (one product instead of three).
    """
    scale = 1.0 if s is None else s
    if P.A in p:
        return affine(p[P.A], scale, positive(bias) + extra)
    t = affine(p[P.M], scale, -bias)
    return t.add_(z).mul_(0.5).add_(positive(bias) + extra)


class Fused:
    """A rule's fused form on a CNN layer (fast path, no graph).

    ``z``: the (merged) layer output; ``p``: the unmerged product values (``A = W+ x``, ``LP = W+ low``
    ...); ``s``: the merged BatchNorm scale (per channel, ``None`` without one); ``bias``: the merged bias.
    """

    #: Has :meth:`relu_state` / :meth:`relu_grads`.
    relu_variant = False

    def __init__(self, rule: Any) -> None:
        self.rule = rule

    def keys(self, nonneg: bool, mixed: bool) -> tuple[Product, ...] | None:
        """The physical products routed to, or ``None`` (not applicable: the general path).

        Args:
            nonneg: The input is known to be >= 0.
            mixed: The merged scale has entries of both signs.
        """
        return None if mixed else (P.A,) if nonneg else (P.M, P.Z)

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """The state kept for the backward pass (fresh tensors; ``z`` intact)."""
        raise NotImplementedError

    def grads(self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool) -> tuple[Tensor, ...]:
        """The products' gradients (in :meth:`keys` order; consumes ``state``).

        Default: the state holds one coefficient per product, scaled in place by the gradient.
        """
        return tuple(c.mul_(grad) for c in state)

    def relu_state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """A smaller state for an output consumed only by an in-place ReLU (if :attr:`relu_variant`).

        The backward pass then reads ``z`` itself (:meth:`relu_grads`) after the ReLU zeroed its
        negative part: the gradient there is zero, so only the values where ``z > 0`` matter.
        """
        raise NotImplementedError

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """The products' gradients from :meth:`relu_state` and the ReLU's output ``z``."""
        raise NotImplementedError


class _Epsilon(Fused):
    relu_variant = True

    def keys(self, nonneg: bool, mixed: bool) -> tuple[Product, ...] | None:
        """Every input and scale."""
        return (P.Z,)

    def _scaled_ratio(self, z: Tensor, s: Tensor | None) -> Tensor:
        # s / (1 + |eps / z|) = s |z| / (|z| + eps): the scale divides instead of a reciprocal and a product
        t = torch.div(torch.full((), self.rule.epsilon, dtype=z.dtype, device=z.device), z).abs_().add_(1.0)
        return t.reciprocal_() if s is None else torch.div(s, t, out=t)

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[s z / stab(z)]``."""
        return [self._scaled_ratio(z, s)]

    def relu_state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """Nothing: the ratio is computed from the ReLU's output in the backward pass."""
        return []

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``s z / stab(z) g``."""
        return (self._scaled_ratio(z, s).mul_(grad),)


class _ZPlus(Fused):
    relu_variant = True

    def relu_state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[P + eps]``, ``P = V+ x+ + V- x- + beta+ >= 0`` (so ``stab(P) = P + eps``)."""
        return [_positive(z, p, s, bias, self.rule.stabilizer)]

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[s z / (P + eps)]``."""
        (dp,) = self.relu_state(z, p, s, bias)
        c = torch.div(z, dp, out=dp)
        return [c if s is None else c.mul_(s)]

    def grads(self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool) -> tuple[Tensor, ...]:
        """``A``: ``s c g``; inputs of both signs: ``M`` and ``Z``: ``s c g / 2`` each (one tensor)."""
        g = state[0].mul_(grad)
        return (g,) if nonneg else (g.mul_(0.5), g)

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """As :meth:`grads`, the coefficient taken of the ReLU's output."""
        c = torch.div(z, state[0], out=state[0])
        return self.grads([c if s is None else c.mul_(s)], s, grad, nonneg)


class _Signed(Fused):
    """Rules on both ``V+`` and ``V-`` products: ``B = Z - b - A`` is virtual (a scale >= 0)."""

    def keys(self, nonneg: bool, mixed: bool) -> tuple[Product, ...] | None:
        """``A`` and ``Z`` (inputs >= 0), ``M`` and ``Z`` (both signs); ``None`` for a mixed scale."""
        return None if mixed else (P.A, P.Z) if nonneg else (P.M, P.Z)


class _AlphaBeta(_Signed):
    relu_variant = True

    def relu_state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[P + eps]``, ``P = V+ x+ + V- x- + beta+``."""
        return [_positive(z, p, s, bias, self.rule.stabilizer)]

    def _split(self, dp: Tensor, z: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(s (cp - cn), s cn)`` from ``dp = P + eps``.

        ``cp = alpha z / (P + eps)``, ``cn = beta z / (eps + (P - z))``; ``z - P = V- x + beta- <= 0``,
        so ``stab(z - P) = (z - P) - eps`` (the clamp only absorbs rounding where ``V- x + beta-`` is 0,
        whose products vanish anyway).
        """
        rule = self.rule
        q = torch.sub(dp, z).clamp_(min=rule.stabilizer)  # eps + (P - z)
        # the merged scale s is applied here: the products are the unmerged layer's
        cn = torch.div(z, q, out=q).mul_(rule.beta if s is None else rule.beta * s)
        cpn = torch.div(z, dp, out=dp).mul_(rule.alpha if s is None else rule.alpha * s).sub_(cn)
        return cpn, cn

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[s (cp - cn), s cn]``."""
        (dp,) = self.relu_state(z, p, s, bias)
        return list(self._split(dp, z, s))

    def grads(self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool) -> tuple[Tensor, ...]:
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
        """As :meth:`grads`, the coefficients taken of the ReLU's output."""
        return self.grads(list(self._split(state[0], z, s)), s, grad, nonneg)


class _Gamma(_Signed):
    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[w]``, ``w = u - v`` (``u``, ``v`` as in ``Gamma.coefficients``, never both non-zero).

        With ``P = V+ x+ + V- x- + beta+`` (see :func:`_positive`): ``sp = z + gamma P`` and
        ``sn = (1 + gamma) z - gamma P``, so
        ``w = z / (gamma P + eps + max(z, -(1 + gamma) z))`` for either sign of ``z``.
        """
        g = self.rule.gamma
        d = _positive(z, p, s, bias, 0.0).mul_(g).add_(self.rule.stabilizer)
        m = z.mul(-(1.0 + g))
        d.add_(torch.maximum(m, z, out=m))
        del m
        return [torch.div(z, d, out=d)]

    def grads(self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool) -> tuple[Tensor, ...]:
        """``A``: ``s gamma w g``; ``Z``: ``s (u + (1 + gamma) v) g = s max(w, -(1 + gamma) w) g``.

        Inputs of both signs (``ca`` on ``V+x+ + V-x-``, ``cb`` on the rest; ``ca - cb = gamma w``,
        ``ca + cb = (2 + gamma) |w|``): ``M``: ``s gamma w g / 2``, ``Z``: ``s (2 + gamma) |w| g / 2``.
        """
        (w,) = state
        g = self.rule.gamma
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


class _ZBox(Fused):
    def keys(self, nonneg: bool, mixed: bool) -> tuple[Product, ...] | None:
        """A scale >= 0: ``BOX`` (``LP + HN`` on the ones leaf) and ``Z``."""
        return None if mixed else (P.BOX, P.Z)

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[s z / stab(z - s BOX - beta)]``, ``BOX = LP + HN``."""
        d = torch.sub(z, p[P.BOX]) if s is None else torch.addcmul(z, p[P.BOX], s, value=-1.0)
        if not isinstance(bias, float) or bias != 0.0:
            d.sub_(bias)
        # stab(d) = d + eps sign(d), sign(0) = +1; copysign differs only at d = -0.0, which needs z = -0.0
        # and gives the same c = 0
        d.add_(torch.copysign(torch.full((), self.rule.stabilizer, dtype=d.dtype, device=d.device), d))
        c = torch.div(z, d, out=d)
        return [c if s is None else c.mul_(s)]

    def grads(self, state: list[Tensor], s: Tensor | None, grad: Tensor, nonneg: bool) -> tuple[Tensor, ...]:
        """``BOX``: ``-c g``; ``Z``: ``c g``."""
        gz = state[0].mul_(grad)
        return torch.neg(gz), gz


class _Flat(Fused):
    relu_variant = True

    def keys(self, nonneg: bool, mixed: bool) -> tuple[Product, ...] | None:
        """Every input and scale (flat ignores the weights)."""
        return (P.F,)

    def relu_state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[F + eps]`` (``F >= 0`` counts inputs, so ``stab(F) = F + eps``; one channel, expanded)."""
        f = p[P.F]
        if f.dim() > 1 and f.stride(1) == 0:  # one channel expanded over the others: keep one
            f = f.narrow(1, 0, 1)
        return [f + self.rule.stabilizer]

    def state(self, z: Tensor, p: Values, s: Tensor | None, bias: Bias) -> list[Tensor]:
        """``[z / (F + eps)]``."""
        (den,) = self.relu_state(z, p, s, bias)
        return [torch.div(z, den)]

    def relu_grads(
        self, state: list[Tensor], z: Tensor, s: Tensor | None, grad: Tensor, nonneg: bool
    ) -> tuple[Tensor, ...]:
        """``z / (F + eps) g``."""
        return (torch.div(z, state[0]).mul_(grad),)


# -- token forms: ``F.linear`` as one autograd node (transformers: every token passes every layer, so the
#    general path's elementwise work would weigh as much as the matrix products)


def mm(a: Tensor, w: Tensor) -> Tensor:
    """``a @ w`` over the last dim as one 2D product (a strided ``a`` would make ``matmul`` batch it)."""
    return a.reshape(-1, a.shape[-1]).mm(w).reshape(*a.shape[:-1], w.shape[-1])


def epsilon_factor(grad: Tensor, z: Tensor, eps: float) -> Tensor:
    """``grad * z / stab(z)`` in two passes: ``grad - eps * grad / (|z| + eps)``."""
    return torch.addcdiv(grad, grad, z.abs().add_(eps), value=-eps)


class _EpsilonLinear(torch.autograd.Function):
    """Epsilon on ``F.linear``: backward ``(g * z / stab(z)) @ W``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        z = F.linear(x, weight, bias)
        ctx.eps = eps
        ctx.save_for_backward(z, weight)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, weight = ctx.saved_tensors
        return mm(epsilon_factor(grad, z, ctx.eps), weight), None, None, None


class _GammaLinear(torch.autograd.Function):
    """zennit's generalised gamma rule on ``F.linear`` with two matrix products each way.

    The rule (zennit 0.5.1 ``Gamma``, which LXT 2.1 puts on a ViT's linear layers): outputs ``z > 0``
    share their relevance in proportion to ``(W + g W+) x+ + (W + g W-) x- + b + g b+`` (denominator
    ``sp``), outputs ``z < 0`` to ``(W + g W-) x+ + (W + g W+) x- + b + g b-`` (``sn``). Written with
    ``|W|`` (``W+ = (W + |W|) / 2``, ``W- = (W - |W|) / 2``) everything reduces to ``z`` and one extra
    product ``q = |W| |x|``: ``sp, sn = (1 + g/2) z +- (g/2) (q + |b|)``, so both stabilised
    denominators are ``sign(z) * D`` with ``D = (1 + g/2) |z| + (g/2) (q + |b|) + eps > 0``. With
    ``c = grad * |z| / D`` and ``d = grad * z / D``, the gradient at an input ``x > 0`` is
    ``W^T (1 + g/2) c + |W|^T (g/2) d``, at ``x < 0`` the same with ``-|W|^T``, and at ``x == 0`` the
    sum of both branches (as the engine's clamped inputs); an input known to be ``>= 0`` takes the
    ``x > 0`` form everywhere. That is 2 matrix products forward and 2 backward where the four-product
    form takes 3 and 3 (a plain forward+backward: 3). Both scale factors sit in the cached weight
    ``k |W|`` (``k = (g/2) / (1 + g/2)``) and in ``D`` divided by ``1 + g/2``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        w_abs: Tensor,
        gamma: float,
        stabilizer: float,
        flag: Callable[[Tensor], bool],
    ) -> Tensor:
        z = F.linear(x, weight, bias)
        nonneg = flag(x.min() >= 0) if x.numel() else True
        with torch.no_grad():
            grow = 1.0 + 0.5 * gamma
            if nonneg:
                den = mm(x, w_abs.t())
                zeros = False
            else:
                x_abs = x.abs()
                zeros = flag(x_abs.min() == 0) if x.numel() else False
                den = mm(x_abs, w_abs.t())
                del x_abs
            # den = D / (1 + g/2) = |z| + k (q + |b|) + eps / (1 + g/2); w_abs is already k |W|
            shift = stabilizer / grow
            if bias is None:
                den.add_(shift)
            else:
                den.add_(bias.detach().abs().mul(gamma * 0.5 / grow).add_(shift))
            a = z.detach().abs()
            den.add_(a)
            c = a.div_(den)  # (1 + g/2) |z| / D
            d = torch.div(z.detach(), den)  # (1 + g/2) z / D; times k |W| below gives (g/2) z / D
            del den
        ctx.nonneg, ctx.zeros = nonneg, zeros
        ctx.save_for_backward(x if not nonneg else None, c, d, weight, w_abs)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, c, d, weight, w_abs = ctx.saved_tensors
        # c and d are this node's own buffers and the backward runs once: scaled in place (a second
        # backward would fail the saved tensors' version check instead of reading changed values)
        t = mm(c.mul_(grad), weight)
        m = mm(d.mul_(grad), w_abs)
        if ctx.nonneg:
            return t.add_(m), None, None, None, None, None, None
        if ctx.zeros:  # x == 0 takes both branches: 2 t (m cancels)
            sign = x.sign()
            m.mul_(sign)
            t.mul_(sign.abs_().neg_().add_(2.0))
            return t.add_(m), None, None, None, None, None, None
        return t.addcmul_(m, x.sign()), None, None, None, None, None, None


#: ``tokens(rule, x, flat_weight, bias, derived, flag) -> z``; ``derived(k)`` gives ``k |W|`` (cached),
#: ``flag`` reads a value the form branches on (:meth:`Engine.flag <medlrp.lrp.engine.Engine.flag>`).
Tokens = Callable[
    [Any, Tensor, Tensor, Tensor | None, Callable[[float], Tensor], Callable[[Tensor], bool]], Tensor
]


def _epsilon_tokens(rule: Epsilon, x: Tensor, w: Tensor, b: Tensor | None, derived: Any, flag: Any) -> Tensor:
    return _EpsilonLinear.apply(x, w, b, rule.epsilon)


def _gamma_tokens(rule: Gamma, x: Tensor, w: Tensor, b: Tensor | None, derived: Any, flag: Any) -> Tensor:
    k = 0.5 * rule.gamma / (1.0 + 0.5 * rule.gamma)
    return _GammaLinear.apply(x, w, b, derived(k).reshape(w.shape), rule.gamma, rule.stabilizer, flag)


@dataclass(frozen=True)
class Kernel:
    """A rule's fast forms: on CNN layers (``fused``) and on token-wise ``F.linear`` (``tokens``)."""

    fused: type[Fused] | None = None
    tokens: Tokens | None = None


#: Rule class -> its fast forms. Exact classes only: a subclass may change the equation.
KERNELS: dict[type[LinearRule], Kernel] = {
    Epsilon: Kernel(_Epsilon, _epsilon_tokens),
    ZPlus: Kernel(_ZPlus),
    AlphaBeta: Kernel(_AlphaBeta),
    Gamma: Kernel(_Gamma, _gamma_tokens),
    ZBox: Kernel(_ZBox),
    Flat: Kernel(_Flat),
}


def kernel(rule: Any) -> Kernel:
    """The fast forms of ``rule`` (an empty :class:`Kernel` where there are none)."""
    return KERNELS.get(type(rule), _NONE)


_NONE = Kernel()
