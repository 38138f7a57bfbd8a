"""Fast-path forms of the rules a ViT calls most: epsilon on ``F.linear``, stabilised sums, activations.

In a transformer the elementwise work of the generic engine (coefficient tensors routed to products)
weighs as much as the matrix products, because every token passes every linear layer. Here the three
hottest rules are single autograd functions with the same values as the engine's:

* epsilon rule on ``F.linear``: backward ``(g * z / stab(z)) @ W``, computed as
  ``g - eps * g / (|z| + eps)`` (equal: ``z / stab(z) == |z| / (|z| + eps)``, 0 at ``z == 0``);
* proportional split of a sum (zennit's ``Norm``, stabiliser 1e-6): the same factor on the sum;
* zennit's gamma rule on ``F.linear`` with three matrix products each way (see :class:`_GammaLinear`);
* identity rule of GELU / SiLU / tanh (``f(0) = 0``): ``g * f(x) / x``, 0 where ``x == 0``.

They apply in the fast path (``create_graph=False``) only; the exact second-order path and every
other case (other rules, BatchNorm merges, broadcasting sums, ``alpha=``) go to the engine's handlers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.engine import Engine, Handler
from medlrp.lrp.handlers import HANDLERS, NORM_STABILIZER, variants
from medlrp.lrp.rules import Epsilon, Gamma

Tensor = torch.Tensor


def _mm(a: Tensor, w: Tensor) -> Tensor:
    """``a @ w`` over the last dim as one 2D product (a strided ``a`` would make ``matmul`` batch it)."""
    return a.reshape(-1, a.shape[-1]).mm(w).reshape(*a.shape[:-1], w.shape[-1])


def _epsilon_factor(grad: Tensor, z: Tensor, eps: float) -> Tensor:
    """``grad * z / stab(z)`` in two passes: ``grad - eps * grad / (|z| + eps)``."""
    return torch.addcdiv(grad, grad, z.abs().add_(eps), value=-eps)


class _EpsilonLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        z = F.linear(x, weight, bias)
        ctx.eps = eps
        ctx.save_for_backward(z, weight)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, weight = ctx.saved_tensors
        return _mm(_epsilon_factor(grad, z, ctx.eps), weight), None, None, None


class _NormSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, grads: tuple[bool, bool]) -> Tensor:
        s = a + b
        ctx.grads = grads
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (s,) = ctx.saved_tensors
        g = _epsilon_factor(grad, s, NORM_STABILIZER)
        return (g if ctx.grads[0] else None), (g if ctx.grads[1] else None), None


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, fn: Any, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        y = fn(x, **kwargs)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y = ctx.saved_tensors
        # y / x with 0 where x == 0 (there y == 0 too: 0 / 0 -> nan -> 0)
        return None, (grad * y).div_(x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0), None


def _stabilize(x: Tensor, eps: float) -> Tensor:
    return torch.where(x >= 0, x + eps, x - eps)


class _GammaLinear(torch.autograd.Function):
    """zennit's generalised gamma rule on ``F.linear`` with three matrix products each way.

    With ``A = W+ x+``, ``D = W- x-`` (and ``B``, ``C`` the cross terms), the rule's denominators are
    ``sp = z + g (A + D + b+)`` and ``sn = z + g (B + C + b-)`` with ``B + C = z - b - (A + D)``, so
    only ``P = A + D = W+ |x| + W x-`` is needed beside ``z``. As ``P >= 0`` and ``B + C <= 0``,
    ``sp >= z`` where ``z > 0`` and ``sn <= z`` where ``z < 0``: the stabiliser's sign is known.
    Backward, with ``u``/``v`` the incoming gradient times the ratios of positive and negative outputs:
    ``x > 0`` gets ``W+^T (g (u - v)) + W^T (u + (1 + g) v)``, ``x < 0``
    ``W^T ((1 + g) u + v) - W+^T (g (u - v))`` and ``x == 0`` both (as the engine's clamped inputs);
    an input known to be ``>= 0`` takes the first form everywhere (one product less each way).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        w_pos: Tensor,
        gamma: float,
        stabilizer: float,
    ) -> Tensor:
        z = F.linear(x, weight, bias)
        nonneg = bool((x.min() >= 0).item()) if x.numel() else True
        with torch.no_grad():
            if nonneg:
                p = _mm(x, w_pos.t())
            else:
                p = _mm(x.abs(), w_pos.t()).add_(_mm(x.clamp(max=0), weight.t()))
        ctx.gamma, ctx.stabilizer, ctx.nonneg = gamma, stabilizer, nonneg
        ctx.save_for_backward(x, z, p, weight, w_pos, bias)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, z, p, weight, w_pos, bias = ctx.saved_tensors
        gamma, eps = ctx.gamma, ctx.stabilizer
        # torch.where is ~10x slower than arithmetic on CPU: masks by clamping instead.
        # sp >= z > 0 where z > 0 and sn <= z < 0 where z < 0, so clamping them leaves those entries
        # alone and keeps the other denominators away from 0 (where the numerator is 0).
        if bias is None:
            sp = torch.add(z, p, alpha=gamma)
            sn = torch.add(z, z - p, alpha=gamma)
        else:
            sp = torch.add(z, p + bias.clamp(min=0), alpha=gamma)
            sn = torch.add(z, z - bias - p + bias.clamp(max=0), alpha=gamma)
        u = (grad * z.clamp(min=0)).div_(sp.clamp_(min=0).add_(eps))
        v = (grad * z.clamp(max=0)).div_(sn.clamp_(max=0).sub_(eps))
        m = _mm((u - v).mul_(gamma), w_pos)
        t = _mm(torch.add(u, v, alpha=1.0 + gamma), weight)
        if ctx.nonneg:
            return m.add_(t), None, None, None, None, None
        s = _mm(torch.add(v, u, alpha=1.0 + gamma), weight)
        # x > 0: m + t; x < 0: s - m; x == 0: s + t (both clamped branches, as the engine)
        above = (x > 0).to(x.dtype)
        below = (x < 0).to(x.dtype)
        out = (s + t).add_(above * (m - s)).sub_(below * (m + t))
        return out, None, None, None, None, None


def _tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _linear(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not engine.dual and len(args) >= 2 and not kwargs and _tracked(engine, args[0]):
        weight = args[1]
        bias = args[2] if len(args) > 2 else None
        if not (_tracked(engine, weight) or _tracked(engine, bias)):
            name, module = engine.layer_of(weight)
            rule = engine.select_rule("linear", name, module)
            if type(rule) is Epsilon:
                out = _EpsilonLinear.apply(args[0], weight, bias, rule.epsilon)
                engine.track(out)
                return out
            if type(rule) is Gamma:
                w_pos = weight.detach().clamp(min=0)
                out = _GammaLinear.apply(args[0], weight, bias, w_pos, rule.gamma, rule.stabilizer)
                engine.track(out)
                return out
    return HANDLERS[func](engine, func, args, kwargs)


def _add(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not engine.dual and len(args) == 2 and not kwargs:
        a, b = args
        if (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.is_floating_point()
            and b.is_floating_point()
        ):
            ta, tb = _tracked(engine, a), _tracked(engine, b)
            shape = torch.broadcast_shapes(a.shape, b.shape)
            if (not ta or a.shape == shape) and (not tb or b.shape == shape):
                out = _NormSum.apply(a, b, (ta, tb))
                engine.track(out)
                return out
    return HANDLERS[func](engine, func, args, kwargs)


def _activation(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not engine.dual and len(args) == 1 and _tracked(engine, args[0]):
        # run out of place (nn.SiLU(inplace=True)): a tracked tensor is never modified
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        out = _Identity.apply(func, args[0], kwargs)
        engine.track(out)
        return out
    return HANDLERS[func](engine, func, args, kwargs)


def fast_handlers(stabilised_sums: bool) -> dict[Any, Handler]:
    """Handlers for ``Composite.handlers`` (``stabilised_sums``: the ``Norm`` rule on additions)."""
    table: dict[Any, Handler] = {}
    for f in variants("linear"):
        if f in HANDLERS:
            table[f] = _linear
    if stabilised_sums:
        for f in [*variants("add"), torch.Tensor.__add__, torch.Tensor.__radd__]:
            if f in HANDLERS:
                table[f] = _add
    for f in variants("gelu", "silu", "tanh"):
        if f in HANDLERS:
            table[f] = _activation
    return table
