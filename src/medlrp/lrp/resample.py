"""Resampling (``F.interpolate``, ``nn.Upsample``, ``upsample_*``) and PReLU under LRP.

Every interpolation mode is a parameter-free linear map ``y = W x`` (no bias): nearest copies, linear,
bilinear, trilinear and area average with fixed non-negative weights, bicubic weighs with a kernel that
has negative lobes. Its rule is LRP-epsilon on that map, ``R_x = x * W^T (R_y / (W x + eps sign))``,
the proportional split the engine uses for average pooling (zennit's ``Norm``): one interpolation
forward, its ordinary backward, and one ratio per output element; the map's weights are never formed.
Nearest modes copy, so their plain gradient is already the exact message. ``align_corners`` and
``antialias`` only change ``W``, so every variant is handled alike. Relevance is conserved exactly up to
the stabiliser (sum of ``R_x`` = sum of ``R_y``).

PReLU (``y = x`` for ``x > 0``, ``a x`` otherwise, ``a`` learned) is an elementwise activation: like
LeakyReLU, relevance passes through it (``R_x = R_y``), which its plain gradient gives exactly
(``x * a * g = y * g``). In the fast path that gradient is computed without autograd's PReLU node,
whose backward also reduces the gradient of ``a`` (nobody asks for it there) and costs about 25 times a
LeakyReLU backward on CPU: one slope is LeakyReLU's own backward kernel, one per channel a ``where``.

Registered through :func:`medlrp.lrp.handlers.register_handler` on import (by :mod:`medlrp.lrp`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.engine import Engine, Handler
from medlrp.lrp.handlers import proportional_split, register_handler, transparent, variants

#: Modes whose weights are non-negative (a non-negative input gives a non-negative output).
_NONNEG_MODES = {"nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"}
_COPYING_MODES = {"nearest", "nearest-exact"}

_copy = transparent()
_split_keeping_sign = proportional_split(keeps_sign=True)
_split = proportional_split()


def _resample(mode: str, engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if mode in _COPYING_MODES:
        return _copy(engine, func, args, kwargs)
    if mode in _NONNEG_MODES:
        return _split_keeping_sign(engine, func, args, kwargs)
    if mode == "bicubic":
        return _split(engine, func, args, kwargs)
    raise engine.unsupported(f"interpolation mode {mode!r} has no relevance rule")


def _interpolate(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.interpolate`` / ``F.upsample`` (``nn.Upsample``): the mode is the fourth argument."""
    mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
    return _resample(str(mode), engine, func, args, kwargs)


def _fixed_mode(mode: str) -> Handler:
    """A handler for an ``upsample_<mode>Nd`` kernel called directly."""

    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _resample(mode, engine, func, args, kwargs)

    return handler


register_handler(F.interpolate, F.upsample)(_interpolate)
for _name, _mode in (
    ("upsample_nearest1d", "nearest"),
    ("upsample_nearest2d", "nearest"),
    ("upsample_nearest3d", "nearest"),
    ("_upsample_nearest_exact1d", "nearest-exact"),
    ("_upsample_nearest_exact2d", "nearest-exact"),
    ("_upsample_nearest_exact3d", "nearest-exact"),
    ("upsample_linear1d", "linear"),
    ("upsample_bilinear2d", "bilinear"),
    ("_upsample_bilinear2d_aa", "bilinear"),
    ("upsample_trilinear3d", "trilinear"),
    ("upsample_bicubic2d", "bicubic"),
    ("_upsample_bicubic2d_aa", "bicubic"),
):
    register_handler(*variants(_name))(_fixed_mode(_mode))
register_handler(F.upsample_nearest)(_fixed_mode("nearest"))
register_handler(F.upsample_bilinear)(_fixed_mode("bilinear"))

_prelu_plain = transparent(sign="unknown")


class _PReLUGrad(torch.autograd.Function):
    """``prelu(x, a)`` whose backward is ``g`` where ``x > 0``, else ``a g`` (the input's gradient only)."""

    @staticmethod
    def forward(ctx: Any, func: Any, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, slope)
        return func(x, slope)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, slope = ctx.saved_tensors
        if slope.numel() == 1:
            return None, torch.ops.aten.leaky_relu_backward(grad, x, float(slope), False), None
        shape = [1] * x.dim()
        shape[1] = -1
        return None, torch.where(x > 0, grad, grad * slope.reshape(shape)), None


def _prelu(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """PReLU: relevance passes (the plain gradient is exact); the output's sign is unknown."""
    x = args[0] if args else kwargs.get("input")
    slope = args[1] if len(args) > 1 else kwargs.get("weight")
    fast = (
        not engine.dual
        and isinstance(x, torch.Tensor)
        and isinstance(slope, torch.Tensor)
        and engine.node(slope) is None
        and x.dtype == slope.dtype
        and (slope.numel() == 1 or (x.dim() > 1 and slope.dim() == 1 and slope.numel() == x.shape[1]))
    )
    if not fast or len(args) + len(kwargs) != 2:
        return _prelu_plain(engine, func, args, kwargs)
    out = _PReLUGrad.apply(func, x, slope.detach())
    engine.track(out)
    return out


# PReLU: relevance passes (the plain gradient is exact); the output's sign is unknown
register_handler(*variants("prelu", "_prelu_kernel"))(_prelu)
