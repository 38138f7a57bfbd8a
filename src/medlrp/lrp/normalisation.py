"""Normalisation layers under LRP: the normaliser (standard deviation, RMS, vector norm) held constant.

One rule for every composite, CNN and transformer alike: a normalisation
``y = (x - mean_G(x)) / std_G(x) * w + b`` (over a group ``G`` of elements) is linear in ``x`` once its
normaliser ``1 / std_G(x)`` is held constant, as AttnLRP (Achtibat et al. 2024) and CP-LRP (Ali et al.
2022) treat layer norm. Relevance then flows through the centring ``x - mean_G(x)`` by its gradient
(the identity rule on the centring, LRP-0 on the scaling), the affine weight is a per-channel scaling
and the affine bias an absorbed bias (as any bias). The rule itself, its vector-Jacobian product and
the fused fast form are :func:`medlrp.lrp.attention.layer_norm_rule` / ``vjp_layer_norm``; here they
are bound to the torch functions that normalise:

* ``F.layer_norm`` over the last dims (ViTs, MambaOut) and channel-first (ConvNeXt's ``LayerNorm2d``
  permutes to channels-last around it); ``F.group_norm`` (groups of channels, per sample);
  ``F.instance_norm`` (per sample and channel: MONAI's default; with running statistics in eval mode it
  is an affine map per channel, treated as BatchNorm); ``F.rms_norm`` (no centring); 1D, 2D and 3D.
* ``F.normalize`` (Swin V2's cosine attention): the vector norm held constant.
* normalisations written by hand (timm's channel-first layer norm and RMS norm, EvoNorm's group
  standard deviation): statistics (``var``, ``std``, ``norm``, ``rsqrt``, ``reciprocal``, the variance of
  ``var_mean``) are held constant, a divisor computed from the input is held constant, and the mean,
  the subtraction, squares and clamps follow their own rules (proportional split, pass rule). For
  ``(x - mean(x)) * rsqrt(var(x) + eps)`` this gives exactly the rule of the fused form (up to the
  stabiliser of the proportional split).

In ``create_graph=True`` mode the held normaliser is computed from the true tensors *with* their graph,
so the relevance has exact derivatives (a constant of the rule, not of the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp import attention as rules
from medlrp.lrp.engine import Engine
from medlrp.lrp.gates import scale
from medlrp.lrp.handlers import HANDLERS, _pass_handler, register_handler, variants

Tensor = torch.Tensor


def _bind(names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def _tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _constant_parameters(engine: Engine, what: str, *params: Any) -> None:
    if any(_tracked(engine, p) for p in params):
        raise engine.unsupported(f"{what} whose weight carries relevance")


def _exact(
    engine: Engine, true: Tensor, x: Tensor, vjp: Callable[[Tensor], Sequence[Tensor | None]]
) -> Tensor:
    """Dual mode: track ``true`` with a routed twin whose gradient to ``x``'s twin is ``vjp(grad)``."""
    engine.track(true, rules.linearised(true, vjp, [engine.routed(x)]))
    return true


# -- layer norm and RMS norm over the last dims
_LN_NAMES = ("input", "normalized_shape", "weight", "bias", "eps")


def layer_norm(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.layer_norm``: standard deviation held constant (identity rule on the centring)."""
    bound = _bind(_LN_NAMES, args, kwargs)
    x, shape = bound["input"], tuple(bound["normalized_shape"])
    weight, bias, eps = bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5)
    _constant_parameters(engine, "layer norm", weight, bias)
    if not engine.dual:
        out = rules.layer_norm_rule(x, shape, weight, bias, eps)
        engine.track(out)
        return out
    rstd = rules.layer_norm_rstd(x, shape, eps)  # with the true graph: exact second order
    true = F.layer_norm(x, shape, weight, bias, eps)
    return _exact(engine, true, x, lambda g: [rules.vjp_layer_norm(g, rstd, weight, shape)])


_RMS_NAMES = ("input", "normalized_shape", "weight", "eps")


def rms_norm(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.rms_norm``: the root mean square held constant."""
    bound = _bind(_RMS_NAMES, args, kwargs)
    x, shape = bound["input"], tuple(bound["normalized_shape"])
    weight, eps = bound.get("weight"), bound.get("eps")
    _constant_parameters(engine, "RMS norm", weight)
    if not engine.dual:
        out = rules.rms_norm_rule(x, shape, weight, eps)
        engine.track(out)
        return out
    rstd = rules.rms_norm_rstd(x, shape, eps)
    true = F.rms_norm(x, shape, weight, eps)
    return _exact(engine, true, x, lambda g: [rules.vjp_layer_norm(g, rstd, weight, shape, centre=False)])


# -- group norm and instance norm: the layer-norm rule over groups of channels, then the affine map
def _channel(v: Tensor | None, x: Tensor) -> Tensor | None:
    return None if v is None else v.reshape(1, -1, *([1] * (x.dim() - 2)))


def grouped_norm(
    engine: Engine, true: Tensor | None, x: Tensor, groups: int, weight: Any, bias: Any, eps: float
) -> Tensor:
    """Normalise ``x`` ``(N, C, *spatial)`` over groups of ``C / groups`` channels, normaliser constant.

    ``true``: the model's own result (dual mode), computed by the fused function with its graph.
    """
    n = x.shape[0]
    size = (x[0].numel() // groups,) if n else (1,)
    w, b = _channel(weight, x), _channel(bias, x)
    if not engine.dual:
        y = rules.layer_norm_rule(x.reshape(n, groups, -1), size, None, None, eps).reshape(x.shape)
        y = y if w is None else y * w
        out = y if b is None else y + b  # the affine bias: absorbed, as every bias
        engine.track(out)
        return out
    rstd = rules.layer_norm_rstd(x.reshape(n, groups, -1), size, eps)

    def vjp(g: Tensor) -> list[Tensor]:
        h = (g if w is None else g * w).reshape(n, groups, -1)
        return [rules.vjp_layer_norm(h, rstd, None, size).reshape(x.shape)]

    return _exact(engine, true, x, vjp)


_GN_NAMES = ("input", "num_groups", "weight", "bias", "eps")


def group_norm(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.group_norm``: per sample and group of channels."""
    bound = _bind(_GN_NAMES, args, kwargs)
    x, weight, bias = bound["input"], bound.get("weight"), bound.get("bias")
    _constant_parameters(engine, "group norm", weight, bias)
    true = func(*args, **kwargs) if engine.dual else None
    return grouped_norm(engine, true, x, int(bound["num_groups"]), weight, bias, bound.get("eps", 1e-5))


_IN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")


def instance_norm(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.instance_norm``: per sample and channel (or, with running statistics, BatchNorm's map)."""
    bound = _bind(_IN_NAMES, args, kwargs)
    x, mean, var = bound["input"], bound.get("running_mean"), bound.get("running_var")
    weight, bias, eps = bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5)
    _constant_parameters(engine, "instance norm", weight, bias)
    if not bound.get("use_input_stats", True):
        batch_norm = HANDLERS[F.batch_norm]
        momentum = bound.get("momentum", 0.1)
        return batch_norm(engine, F.batch_norm, (x, mean, var, weight, bias, False, momentum, eps), {})
    if mean is not None or var is not None:
        raise engine.input_error(
            "InstanceNorm updates its running statistics (model in train mode): call model.eval() before LRP"
        )
    true = func(*args, **kwargs) if engine.dual else None
    return grouped_norm(engine, true, x, x.shape[1], weight, bias, eps)


# -- F.normalize: the vector norm held constant (Swin V2's cosine attention)
_NORMALIZE_NAMES = ("input", "p", "dim", "eps", "out")


def normalize(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.normalize``: ``x / max(||x||_p, eps)`` with the norm held constant."""
    bound = _bind(_NORMALIZE_NAMES, args, kwargs)
    x = bound["input"]
    if bound.get("out") is not None:
        raise engine.unsupported("normalize with out= has no relevance rule")
    p, dim, eps = bound.get("p", 2.0), bound.get("dim", 1), bound.get("eps", 1e-12)
    if engine.dual:
        denom = x.norm(p, dim, keepdim=True).clamp_min(eps).expand_as(x)
        true = func(*args, **kwargs)
        engine.track(true, engine.routed(x) / denom)
        return true
    with torch.no_grad():
        denom = x.norm(p, dim, keepdim=True).clamp_min(eps).expand_as(x)
    out = x / denom  # F.normalize's own computation: the same value
    engine.track(out)
    return out


# -- normalisations written by hand: statistics and divisors held constant
def held(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A statistic of a relevance-carrying tensor (``var``, ``std``, a norm, ``rsqrt``): a constant.

    No relevance flows into it; in dual mode it keeps its true graph (exact derivatives).
    """
    if engine.dual:
        return func(*args, **kwargs)
    with torch.no_grad():
        return func(*args, **kwargs)


def _stat_and_mean(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``var_mean`` / ``std_mean``: the statistic held constant, the mean by the mean's own rule."""
    stat = held(engine, func, args, kwargs)[0]
    x = args[0] if args else kwargs["input"]
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    keepdim = kwargs.get("keepdim", args[3] if len(args) > 3 else False)
    mean = HANDLERS[torch.mean](engine, torch.mean, (x,), {"dim": dim, "keepdim": keepdim})
    return stat, mean


def divide(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``a / b``: a divisor computed from the input is a normaliser, held constant."""
    f = torch.div if func in _INPLACE_DIV else func
    a, b = args[0], args[1]
    if not _tracked(engine, b):
        return scale(engine, f, (a, b), kwargs)
    if not _tracked(engine, a):
        return held(engine, f, (a, b), kwargs)
    if engine.dual:
        true = f(a, b, **kwargs)
        engine.track(true, f(engine.routed(a), b, **kwargs))
        return true
    return scale(engine, f, (a, b.detach()), kwargs)


def _reverse_divide(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``c / b`` (``Tensor.__rtruediv__``) with ``b`` from the input: a constant."""
    return held(engine, func, args, kwargs)


def _power(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``x ** p`` with a constant exponent: the pass rule (relevance passes unchanged)."""
    exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
    if not _tracked(engine, args[0]) or _tracked(engine, exponent):
        raise engine.unsupported("a power whose exponent carries relevance has no relevance rule")
    return _PASS(engine, func, args, kwargs)


_PASS = _pass_handler()
_INPLACE_DIV = tuple(variants("div_", "__itruediv__"))

register_handler(*variants("layer_norm"))(layer_norm)
register_handler(*variants("rms_norm"))(rms_norm)
register_handler(*variants("group_norm"))(group_norm)
register_handler(*variants("instance_norm"))(instance_norm)
register_handler(F.normalize)(normalize)
register_handler(*variants("var", "std", "norm", "rsqrt", "reciprocal"))(held)
register_handler(torch.linalg.vector_norm, torch.linalg.norm)(held)
register_handler(*variants("var_mean", "std_mean"))(_stat_and_mean)
register_handler(*variants("div", "divide", "true_divide", "div_", "__itruediv__"), torch.Tensor.__truediv__)(
    divide
)
register_handler(torch.Tensor.__rtruediv__)(_reverse_divide)
register_handler(*variants("pow", "square"), torch.Tensor.__pow__)(_power)
register_handler(*variants("sqrt", "abs", "clamp", "clamp_min", "clamp_max", "clip"))(_PASS)
for _name, _oop in (
    ("clamp_", torch.clamp),
    ("clamp_min_", torch.clamp_min),
    ("clamp_max_", torch.clamp_max),
):
    register_handler(*variants(_name))(_pass_handler(_oop))

__all__ = [
    "divide",
    "grouped_norm",
    "group_norm",
    "held",
    "instance_norm",
    "layer_norm",
    "normalize",
    "rms_norm",
]
