"""Fast-path forms of the rules a ViT calls most: epsilon on ``F.linear``, stabilised sums, activations.

In a transformer the elementwise work of the generic engine (coefficient tensors routed to products)
weighs as much as the matrix products, because every token passes every linear layer. Here the three
hottest rules are single autograd functions with the same values as the engine's:

* epsilon rule on ``F.linear``: backward ``(g * z / stab(z)) @ W``, computed as
  ``g - eps * g / (|z| + eps)`` (equal: ``z / stab(z) == |z| / (|z| + eps)``, 0 at ``z == 0``);
* proportional split of a sum (zennit's ``Norm``, stabiliser 1e-6): the same factor on the sum;
* zennit's gamma rule on ``F.linear`` with two matrix products each way (see :class:`_GammaLinear`);
* identity rule of GELU / SiLU / tanh (``f(0) = 0``): ``g * f(x) / x``, 0 where ``x == 0``;
* a patch embedding (convolution with stride == kernel, no padding) under epsilon or gamma: the same
  linear fast forms on the patches laid out as tokens.

They apply in the fast path (``create_graph=False``) only; the exact second-order path and every
other case (other rules, BatchNorm merges, broadcasting sums, ``alpha=``) go to the engine's handlers.
"""

from __future__ import annotations

import weakref
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
    ) -> Tensor:
        z = F.linear(x, weight, bias)
        nonneg = bool((x.min() >= 0).item()) if x.numel() else True
        with torch.no_grad():
            grow = 1.0 + 0.5 * gamma
            if nonneg:
                den = _mm(x, w_abs.t())
                zeros = False
            else:
                x_abs = x.abs()
                zeros = bool((x_abs.min() == 0).item()) if x.numel() else False
                den = _mm(x_abs, w_abs.t())
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
        t = _mm(c.mul_(grad), weight)
        m = _mm(d.mul_(grad), w_abs)
        if ctx.nonneg:
            return t.add_(m), None, None, None, None, None
        if ctx.zeros:  # x == 0 takes both branches: 2 t (m cancels)
            sign = x.sign()
            m.mul_(sign)
            t.mul_(sign.abs_().neg_().add_(2.0))
            return t.add_(m), None, None, None, None, None
        return t.addcmul_(m, x.sign()), None, None, None, None, None


class _AbsWeights:
    """``k |W|`` per weight and ``k``, kept between the passes of one explainer (as the engine's cache).

    Valid while the weight object, its version counter and its storage address are unchanged.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[int, float], tuple[weakref.ref[Tensor], tuple[int, int], Tensor]] = {}

    def get(self, weight: Tensor, k: float) -> Tensor:
        key = (id(weight), k)
        entry = self.entries.get(key)
        version = (weight._version, weight.data_ptr())
        if entry is not None and entry[0]() is weight and entry[1] == version:
            return entry[2]
        value = weight.detach().abs().mul_(k)
        self.entries[key] = (weakref.ref(weight), version, value)
        return value


# one store per explainer (its WeightCache token): it lives and dies with the explainer
_ABS_WEIGHTS: weakref.WeakKeyDictionary[Any, _AbsWeights] = weakref.WeakKeyDictionary()


def _scaled_abs_weight(engine: Engine, weight: Tensor, k: float) -> Tensor:
    owner = engine.weights
    if owner is None:
        return weight.detach().abs().mul_(k)
    store = _ABS_WEIGHTS.get(owner)
    if store is None:
        store = _ABS_WEIGHTS[owner] = _AbsWeights()
    return store.get(weight, k)


def _tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _fast_linear(engine: Engine, x: Tensor, weight: Tensor, bias: Tensor | None, rule: Any) -> Tensor | None:
    """``x @ W^T + b`` under the epsilon or gamma rule as one node (``None``: another rule)."""
    flat = weight if weight.dim() == 2 else weight.reshape(weight.shape[0], -1)  # a patch embedding's kernel
    if type(rule) is Epsilon:
        return _EpsilonLinear.apply(x, flat, bias, rule.epsilon)
    if type(rule) is Gamma:
        k = 0.5 * rule.gamma / (1.0 + 0.5 * rule.gamma)
        w_abs = _scaled_abs_weight(engine, weight, k).reshape(flat.shape)  # cached per parameter object
        return _GammaLinear.apply(x, flat, bias, w_abs, rule.gamma, rule.stabilizer)
    return None


def _linear(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not engine.dual and len(args) >= 2 and not kwargs and _tracked(engine, args[0]):
        weight = args[1]
        bias = args[2] if len(args) > 2 else None
        if not (_tracked(engine, weight) or _tracked(engine, bias)):
            name, module = engine.layer_of(weight)
            out = _fast_linear(engine, args[0], weight, bias, engine.select_rule("linear", name, module))
            if out is not None:
                engine.track(out)
                return out
    return HANDLERS[func](engine, func, args, kwargs)


_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _as_tuple(v: Any, n: int) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _patch_conv(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A patch embedding (convolution with stride == kernel, no padding): a linear map of the patches.

    The non-overlapping patches are laid out as tokens and go through the linear fast forms (2 matrix
    products each way for gamma, 2 in all for epsilon) instead of the engine's convolution products,
    whose backward (a strided transposed convolution) is several times slower on CPU. As for
    ``F.linear`` here, a BatchNorm right after the layer is not merged into it (no ViT has one).
    """
    bound = dict(zip(_CONV_NAMES, args, strict=False))
    bound.update(kwargs)
    x, weight, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
    if (
        not engine.dual
        and isinstance(weight, Tensor)
        and _tracked(engine, x)
        and set(bound) <= set(_CONV_NAMES)
    ):
        dims = weight.dim() - 2
        kernel = tuple(weight.shape[2:])
        padding = bound.get("padding", 0)
        plain = (
            x.dim() == dims + 2
            and bound.get("groups", 1) == 1
            and _as_tuple(bound.get("stride", 1), dims) == kernel
            and _as_tuple(bound.get("dilation", 1), dims) == (1,) * dims
            and (padding == "valid" or _as_tuple(padding, dims) == (0,) * dims)
            and not (_tracked(engine, weight) or _tracked(engine, bias))
        )
        if plain:
            name, module = engine.layer_of(weight)
            rule = engine.select_rule("conv", name, module)
            if type(rule) in (Epsilon, Gamma):
                out = _fast_linear(engine, _patches(x, kernel), weight, bias, rule)
                assert out is not None
                # (N, *grid, out) -> (N, out, *grid), contiguous as the convolution's output
                out = out.movedim(-1, 1).contiguous()
                engine.track(out)
                return out
    return HANDLERS[func](engine, func, args, kwargs)


def _patches(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """``(N, C, *spatial)`` -> ``(N, *grid, C * prod(kernel))``, patches flattened as the kernel is."""
    n, c = x.shape[:2]
    grid = [s // k for s, k in zip(x.shape[2:], kernel, strict=True)]
    x = x[(slice(None), slice(None), *(slice(0, g * k) for g, k in zip(grid, kernel, strict=True)))]
    shape = [n, c] + [v for g, k in zip(grid, kernel, strict=True) for v in (g, k)]
    d = len(kernel)
    # (N, C, g1, k1, g2, k2, ...) -> (N, g1, g2, ..., C, k1, k2, ...)
    perm = [0, *range(2, 2 + 2 * d, 2), 1, *range(3, 3 + 2 * d, 2)]
    return x.reshape(shape).permute(perm).reshape(n, *grid, -1)


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
    for f in variants("conv1d", "conv2d", "conv3d"):
        if f in HANDLERS:
            table[f] = _patch_conv
    return table
