"""Fast-path handlers of the operations a ViT calls most: linear layers, stabilised sums, activations.

In a transformer the elementwise work of the generic engine (coefficient tensors routed to products)
weighs as much as the matrix products, because every token passes every linear layer. Here the hottest
operations are single autograd functions with the same values as the engine's:

* ``F.linear`` under a rule with a token form (:data:`medlrp.lrp.kernels.KERNELS`: epsilon, gamma);
* proportional split of a sum (zennit's ``Norm``, stabiliser 1e-6): the same factor on the sum;
* identity rule of GELU / SiLU / tanh (``f(0) = 0``): ``g * f(x) / x``, 0 where ``x == 0``;
* a patch embedding (convolution with stride == kernel, no padding) under such a rule: the same
  token forms on the patches laid out as tokens.

They apply in the fast path (``create_graph=False``) only; the exact second-order path and every
other case (other rules, BatchNorm merges, broadcasting sums, ``alpha=``) go to the engine's handlers.
"""

from __future__ import annotations

from typing import Any

import torch

from medlrp.lrp.engine import Engine, Handler
from medlrp.lrp.handlers import HANDLERS, NORM_STABILIZER, variants
from medlrp.lrp.kernels import epsilon_factor, kernel
from medlrp.lrp.rules import identity_ratio

Tensor = torch.Tensor


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
        g = epsilon_factor(grad, s, NORM_STABILIZER)
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
        return None, identity_ratio(x, y, grad), None


def _tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _fast_linear(engine: Engine, x: Tensor, weight: Tensor, bias: Tensor | None, rule: Any) -> Tensor | None:
    """``x @ W^T + b`` under the rule's token form as one node (``None``: the rule has none)."""
    tokens = kernel(rule).tokens
    if tokens is None:
        return None
    flat = weight if weight.dim() == 2 else weight.reshape(weight.shape[0], -1)  # a patch embedding's kernel
    return tokens(rule, x, flat, bias, lambda k: engine.derived_weight(weight, k), engine.flag)


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
        size = tuple(weight.shape[2:])
        padding = bound.get("padding", 0)
        plain = (
            x.dim() == dims + 2
            and bound.get("groups", 1) == 1
            and _as_tuple(bound.get("stride", 1), dims) == size
            and _as_tuple(bound.get("dilation", 1), dims) == (1,) * dims
            and (padding == "valid" or _as_tuple(padding, dims) == (0,) * dims)
            and not (_tracked(engine, weight) or _tracked(engine, bias))
        )
        if plain:
            name, module = engine.layer_of(weight)
            rule = engine.select_rule("conv", name, module)
            if kernel(rule).tokens is not None:
                out = _fast_linear(engine, _patches(x, size), weight, bias, rule)
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
