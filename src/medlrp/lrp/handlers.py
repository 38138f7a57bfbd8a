"""Handlers: what each torch operation on relevance-carrying tensors becomes under LRP.

The extension API. ``HANDLERS`` maps a torch function (as it reaches ``__torch_function__``:
``torch.conv2d``, ``torch.nn.functional.relu``, ``torch.Tensor.add_`` ...) to a handler::

    def handler(engine: Engine, func, args: tuple, kwargs: dict) -> result

A handler is called only when at least one tensor argument is tracked (carries relevance); it runs
with the mode disabled, so torch calls inside it are ordinary. It must

* compute the true result (``func(*args, **kwargs)``; what the model sees),
* build the routed twin from ``engine.routed(arg)`` of its inputs, using
  :func:`medlrp.lrp.route.route` for a modified gradient, and
* mark the result with ``engine.track(true, routed)`` (in fast mode ``engine.dual`` is false, the true
  tensor *is* the routed one and ``track(result)`` suffices).

It may look up the running module (``engine.current_module()`` -> ``(dotted name, module)``), the
module owning a parameter (``engine.layer_of(weight)``), the composite's rule for a layer
(``engine.select_rule(kind, name, module)``) and raise ``engine.unsupported(...)`` (an
:class:`~medlrp.errors.UnsupportedLayerError` naming the module). Register with
:func:`register_handler`; a composite may also carry its own table (``Composite.handlers``), which
takes precedence, so transformer rules (softmax, matmul, attention) live in their own module. Rules
for every composite registered from other modules: :mod:`medlrp.lrp.gates` (products),
:mod:`medlrp.lrp.normalisation` (layer, group, instance, RMS norm, statistics, divisions). The shared
pieces a new handler builds on: :func:`transparent` (the plain gradient is the rule),
:func:`identity_route` (relevance passes unchanged, ``R_x = R_y``), :func:`split_route` (proportional
split of a sum) and :func:`~medlrp.lrp.route.route`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medlrp.lrp.engine import Engine, Handler, _tensors, deferring
from medlrp.lrp.linear import LinearCall, bind_linear, make_call
from medlrp.lrp.pooling import compact_max_pool, pool_arguments
from medlrp.lrp.route import route, settle
from medlrp.lrp.rules import LinearRule, identity_ratio, stabilize, stabilized_ratio

Tensor = torch.Tensor

HANDLERS: dict[Any, Handler] = {}

#: Stabiliser of the proportional split (zennit's ``Norm`` on sums and average pooling).
NORM_STABILIZER = 1e-6


def register_handler(*funcs: Any) -> Callable[[Handler], Handler]:
    """Register the decorated handler for each torch function in ``funcs`` (``None`` entries skipped)."""

    def deco(handler: Handler) -> Handler:
        for f in funcs:
            if f is not None:
                HANDLERS[f] = handler
        return handler

    return deco


def variants(*names: str) -> list[Any]:
    """All torch callables of the given names: ``torch.X``, ``torch.nn.functional.X``, ``Tensor.X``."""
    out = []
    for name in names:
        for ns in (torch, F, torch.Tensor, torch._C._nn):
            f = getattr(ns, name, None)
            if f is not None and f not in out:
                out.append(f)
    return out


#: Position of the ``inplace`` flag in functionals that have one (in-place ops run out of place here:
#: a tracked tensor is never modified, so autograd views and version counters stay simple).
_INPLACE_AT = {
    1: "relu relu6 silu hardswish selu mish hardsigmoid",
    2: "elu celu leaky_relu",
    3: "hardtanh threshold",
}
_INPLACE_POS = {getattr(F, name): pos for pos, names in _INPLACE_AT.items() for name in names.split()}


def _strip_inplace(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    pos = _INPLACE_POS.get(func)
    if pos is not None and len(args) > pos:
        args = args[:pos]
    return args, {k: v for k, v in kwargs.items() if k != "inplace"}


def _both(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Run ``func`` on the true and on the routed inputs (the same call in fast mode)."""
    true = func(*args, **kwargs)
    if not engine.dual:
        return true, true
    routed = func(*engine.routed(args), **{k: engine.routed(v) for k, v in kwargs.items()})
    return true, routed


def _track_all(
    engine: Engine, true: Any, routed: Any, is_input: bool = False, nonneg: bool = False, gate: bool = False
) -> None:
    for t, r in zip(_tensors(true), _tensors(routed), strict=True):
        if t.is_floating_point():
            node = engine.track(t, r)
            node.is_input = is_input
            node.nonneg = nonneg
            node.gate = gate


def _all_nonneg(engine: Engine, args: Any, flag: str = "nonneg") -> bool:
    """Whether every tracked tensor among ``args`` (lists included) is known to be >= 0.

    ``flag="gate"``: whether every one is a gate (a view or copy of a sigmoid's output).
    """
    found = False
    for t in _tensors(list(args)):
        node = engine.node(t)
        if node is not None:
            if not getattr(node, flag):
                return False
            found = True
    return found


def _input_like(engine: Engine, args: tuple[Any, ...], out: Any) -> bool:
    first = args[0] if args else None
    return (
        isinstance(first, Tensor)
        and engine.is_model_input(first)
        and isinstance(out, Tensor)
        and out.shape == first.shape
    )


# -- transparent operations: each output element is a copy of one input element (or a constant scale),
#    so the plain gradient is the exact LRP message (relevance x * grad is conserved)
def transparent(out_of_place: Any = None, keeps_input: bool = False, sign: str = "keep") -> Handler:
    """A handler running ``func`` (or ``out_of_place``) on both twins: the plain gradient is exact.

    ``sign``: ``"keep"`` (the output is >= 0 when the inputs are), ``"nonneg"`` (always >= 0, ReLU)
    or ``"unknown"``.
    """

    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        f = out_of_place or func
        args, kwargs = _strip_inplace(func, args, kwargs)
        nonneg = sign == "nonneg" or (sign == "keep" and _all_nonneg(engine, args))
        gate = sign == "keep" and _all_nonneg(engine, args, "gate")  # a gate reshaped or scaled is still one
        true, routed = _both(engine, f, args, kwargs)
        _track_all(engine, true, routed, keeps_input and _input_like(engine, args, true), nonneg, gate)
        return true

    return handler


_VIEWS = (
    "view view_as reshape reshape_as flatten unflatten permute transpose swapaxes t squeeze unsqueeze "
    "contiguous expand expand_as repeat narrow select split chunk unbind tensor_split movedim moveaxis "
    "cat concat concatenate stack hstack vstack flip roll index_select gather take_along_dim "
    "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
    "max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices "
    "pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle "
    "amax amin max min maximum minimum"
).split()
for _f in variants(*_VIEWS) + [torch.Tensor.__getitem__]:
    register_handler(_f)(transparent())
for _f in variants("neg", "leaky_relu", "constant_pad_nd", "pad") + [torch.Tensor.__neg__]:
    register_handler(_f)(transparent(sign="unknown"))
for _f in variants("contiguous", "clone", "to", "float", "double", "type", "type_as", "identity"):
    register_handler(_f)(transparent(keeps_input=True))


def _max_pool(dims: int) -> Handler:
    """Max pooling: autograd's node in dual mode; in the fast path one that keeps no indices."""
    plain = transparent()

    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = args[0] if args else kwargs.get("input")
        p = None if engine.dual or not isinstance(x, Tensor) else pool_arguments(dims, args[1:], kwargs)
        if p is None or x.dim() < dims + 1 or engine.node(x) is None:
            return plain(engine, func, args, kwargs)
        out = compact_max_pool(x, dims, p)
        _track_all(engine, out, out, nonneg=_all_nonneg(engine, (x,)))
        return out

    return handler


for _dims in (1, 2, 3):
    register_handler(*variants(f"max_pool{_dims}d"))(_max_pool(_dims))


def _relu(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """ReLU; done in place (as the model asked) on a route's output in the fast path.

    The route's coefficients are settled first, while its value is intact; the in-place ReLU then
    saves the model's own allocation (and keeps one activation less alive), as in a plain pass.
    """
    x = args[0] if args else kwargs.get("input")
    inplace = func in _RELU_INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
    if not engine.dual and isinstance(x, Tensor):
        if inplace and settle(x, relu=True):
            torch.relu_(x)
            node = engine.node(x)
            node.linear, node.gate, node.nonneg, node.is_input = None, False, True, False
            return x
        settle(x)
    return _RELU_OUT_OF_PLACE(engine, torch.relu, (x,), {})


_RELU_OUT_OF_PLACE = transparent(torch.relu, sign="nonneg")
_RELU_INPLACE = set(variants("relu_"))
register_handler(*variants("relu", "relu_"))(deferring(_relu))  # settles its input itself
register_handler(*variants("leaky_relu_"))(transparent(F.leaky_relu))


_DROPOUTS = "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout feature_dropout"


@register_handler(*variants(*_DROPOUTS.split()))
def _dropout(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    if training and p > 0:
        raise engine.input_error("dropout is active (model in train mode): call model.eval() before LRP")
    return args[0] if args else kwargs["input"]  # identity in eval mode: the tensor keeps its node


# -- constants derived from a tracked tensor's shape carry no relevance
_CONSTANTS = (
    "zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones new_empty new_full"
)


@register_handler(*variants(*_CONSTANTS.split(), "new_tensor", "size", "dim", "numel"))
@deferring
def _constant(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


# -- linear layers
def _linear_layer(kind: str, channel_dim: int) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x, w, b, rest, kw = bind_linear(kind, args, kwargs)
        if engine.node(x) is None:
            raise engine.unsupported(f"{kind} whose weight carries relevance (weights from the input)")
        name, module = engine.layer_of(w)
        rule = engine.select_rule(kind, name, module)
        if not isinstance(rule, LinearRule):
            raise engine.unsupported(f"rule {rule!r} does not apply to a {kind} layer")
        call = LinearCall(engine, make_call(func, rest, kw), x, w, b, rule, channel_dim)
        return call.output()

    return handler


register_handler(*variants("linear"))(_linear_layer("linear", -1))
for _n in ("conv1d", "conv2d", "conv3d"):
    register_handler(*variants(_n))(_linear_layer("conv", 1))
for _n in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
    register_handler(*variants(_n))(_linear_layer("conv_transpose", 1))


# -- proportional split (zennit's Norm): sums, averages, average pooling
def split_route(engine: Engine, true: Tensor, routed_in: Tensor, nonneg: bool = False) -> Tensor:
    """``true`` (a sum of its inputs' terms) whose relevance goes to the terms in proportion to them.

    The gradient is scaled by ``true / stab(true)`` (stabiliser :data:`NORM_STABILIZER`), so that
    ``term * grad`` splits the output's relevance among the terms. ``routed_in``: the op's output on the
    routed inputs (``true`` itself in the fast path). Returns what the model sees, tracked.
    """
    if engine.dual:  # the ratio with its graph: second order through z / stab(z)
        routed = route(true, [routed_in], [true / stabilize(true, NORM_STABILIZER)])
        engine.track(true, routed).nonneg = nonneg
        return true
    value = true.detach()

    def after_relu(state: Any, grad: Tensor) -> tuple[Tensor]:
        # read by an in-place ReLU only: nothing kept, the ratio is taken of the ReLU's output
        return (stabilized_ratio(value, NORM_STABILIZER).mul_(grad),)

    routed = route(
        value,
        [true],
        compute=lambda: [stabilized_ratio(value, NORM_STABILIZER)],
        owned=True,
        guard=(value,),
        relu=(list, after_relu),
    )
    engine.track(routed).nonneg = nonneg
    return routed


def _norm_handler(out_of_place: Any = None, keeps_sign: bool = False) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        nonneg = keeps_sign and _all_nonneg(engine, args)
        true, routed_in = _both(engine, out_of_place or func, args, kwargs)
        if not isinstance(true, Tensor) or not true.is_floating_point():
            return true
        out = split_route(engine, true, routed_in, nonneg)
        engine.node(out).gate = _all_nonneg(engine, args, "gate")  # 1 - sigmoid(z) is a gate too (GRU)
        return out

    return handler


#: The proportional split as a handler factory, for any parameter-free linear map with non-negative
#: weights (``keeps_sign=True``) or any weights (see :mod:`medlrp.lrp.resample`).
proportional_split = _norm_handler


_POOLS = "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d mean"
for _f in variants(*_POOLS.split()):
    register_handler(_f)(_norm_handler(keeps_sign=True))
_SUMS = [torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__sub__, torch.Tensor.__rsub__]
for _f in variants("sum", "add", "sub", "subtract") + _SUMS:
    register_handler(_f)(_norm_handler())
register_handler(*variants("add_", "__iadd__"))(_norm_handler(torch.add))
register_handler(*variants("sub_", "__isub__"))(_norm_handler(torch.sub))


# -- identity rule: elementwise activations (and BatchNorm not preceded by a linear layer)
def identity_route(engine: Engine, x: Tensor, y: Tensor) -> Tensor:
    """``y = f(x)`` under the identity rule: relevance passes unchanged (``R_x = R_y``).

    See :func:`~medlrp.lrp.rules.identity_ratio`; ``y`` is computed by the caller (with its graph in
    dual mode, without one in the fast path).
    """
    if engine.dual:
        routed = route(y, [engine.routed(x)], [identity_ratio(x, y)])
        engine.track(y, routed)
        return y
    xv, yv = x.detach(), y.detach()
    routed = route(yv, [x], compute=lambda: [identity_ratio(xv, yv)], owned=True, guard=(xv, yv))
    engine.track(routed)
    return routed


def _pass_handler(out_of_place: Any = None, gate: bool = False) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        f = out_of_place or func
        args, kwargs = _strip_inplace(func, args, kwargs)
        x = args[0]
        if engine.dual:
            y = f(*args, **kwargs)
        else:
            with torch.no_grad():
                y = f(*args, **kwargs)
        out = identity_route(engine, x, y)
        engine.node(out).gate = gate
        return out

    return handler


_ACTIVATIONS = (
    "silu gelu hardswish relu6 hardtanh elu selu celu softplus mish tanh logsigmoid softsign tanhshrink"
)
for _f in variants(*_ACTIVATIONS.split()):
    register_handler(_f)(_pass_handler())
for _name in "silu hardswish hardtanh elu selu celu mish tanh".split():  # in place: run out of place
    register_handler(*variants(_name + "_"))(_pass_handler(getattr(F, _name)))
register_handler(*variants("sigmoid", "hardsigmoid"))(_pass_handler(gate=True))
register_handler(*variants("sigmoid_"))(_pass_handler(torch.sigmoid, gate=True))
register_handler(*variants("hardsigmoid_"))(_pass_handler(F.hardsigmoid, gate=True))


# -- BatchNorm: merged into the linear layer feeding it, otherwise the pass rule (zennit's composites)
@register_handler(*variants("batch_norm"))
@deferring
def _batch_norm(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    x = bound["input"]
    mean, var = bound.get("running_mean"), bound.get("running_var")
    if bound.get("training", False) or mean is None or var is None:
        raise engine.input_error(
            "BatchNorm uses batch statistics (model in train mode), which couples the samples of a batch: "
            "call model.eval() before LRP"
        )
    weight, bias, eps = bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5)
    s = torch.rsqrt(var + eps)
    if weight is not None:
        s = s * weight
    t = -mean * s
    if bias is not None:
        t = t + bias
    if not engine.dual:
        s, t = s.detach(), t.detach()
    with torch.set_grad_enabled(engine.dual):
        if not (mean.requires_grad or var.requires_grad):
            # the model's own call: its value bit for bit (the affine form below differs by an ulp where
            # the CPU's vectorised kernel fuses its own coefficients, measured on an Intel Xeon)
            y = F.batch_norm(x, mean, var, weight, bias, training=False, momentum=0.0, eps=eps)
        else:
            # statistics with a graph (guided training explains with a training batch's own), which
            # torch's batch_norm refuses as running statistics: the affine map y = s x + t as its affine
            # part, with mean 0 and variance 1
            mean0, var1 = torch.zeros_like(s), torch.ones_like(s)
            y = F.batch_norm(x, mean0, var1, s, t, training=False, momentum=0.0, eps=0.0)
    node = engine.node(x)
    linear: LinearCall | None = node.linear if node is not None else None
    if linear is None:
        return identity_route(engine, x, y)
    return linear.merged_output(y, s, t)
