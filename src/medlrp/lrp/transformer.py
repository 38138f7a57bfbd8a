"""Transformer composites ``attnlrp`` and ``cp-lrp``: the engine's handlers for attention operations.

The rules themselves are in :mod:`medlrp.lrp.attention`; this module binds them to the torch functions
a Vision Transformer calls (softmax, matmul / bmm / einsum, ``scaled_dot_product_attention``,
``multi_head_attention_forward``) through the engine's extension API (``Composite.handlers``), so they
apply to one LRP call of one model only. Elementwise products (:mod:`medlrp.lrp.gates`) and
normalisation (:mod:`medlrp.lrp.normalisation`) have one rule for every composite, CNN and
transformer.

What each part of a ViT gets (both composites unless said):

* **patch embedding** (the first linear layer in ``named_modules()`` order, a convolution or a
  linear map of flattened patches): the first-layer rule ``first=`` (default: the linear rule).
* **linear layers** (qkv / out projections, MLP, head): ``linear="epsilon"`` (default, with
  ``epsilon=``), ``"gamma"`` (with ``gamma=``), ``"zero"`` (LRP-0, gradient times input) or any
  registered rule (the CNN composites' rules, the same registry). The gamma
  rule is zennit's generalised one (four sign-split products), the rule LXT 2.1 uses for ViTs (its
  ``examples/vit_torch.py`` puts ``zennit.rules.Gamma`` on every linear layer); its fast form needs
  one extra matrix product each way (see :class:`medlrp.lrp.kernels._GammaLinear`).
* **class token and position embedding**: constants added to (or concatenated with) the tokens.
  Relevance flows only into tensors computed from the image, so the share of the class token and of the
  position embedding is absorbed like a bias's: ``sum(relevance) < logit`` by that share. The class
  token, once mixed with the patches by attention, carries relevance back to the patches as usual.
* **residual sums**: the engine's proportional split (zennit's ``Norm``); **GELU / SiLU / tanh**: the
  identity rule (the engine's pass rule); **dropout**: identity (eval mode required).
* **softmax**: AttnLRP's rule (the plain gradient); CP-LRP holds it constant.
* **products of two relevance-carrying tensors** (attention scores, ``A @ v``, gated units): the uniform
  rule, 1/n of the gradient to each of the n factors.
* **layer norm / RMS norm** (and Swin V2's ``F.normalize``): the normaliser held constant (identity
  rule on the centring; :mod:`medlrp.lrp.normalisation`).

With ``linear="epsilon"`` and the position embedding's and biases' shares set aside, CP-LRP is
conservative; AttnLRP gives part of the relevance to the softmax's implicit bias by design.

Per-token relevance at any block: :func:`token_relevance` (``(N, tokens)`` at a block's output, read
in the same call as the input relevance). The hottest rules (epsilon/gamma on ``F.linear``, stabilised
sums, GELU) have single-node fast forms in :mod:`medlrp.lrp.transformer_fast`. Matching LXT 2.1's
CP-LRP for torchvision ViTs: ``LRP(model, "cp-lrp", linear="zero", residual="plain")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlrp.errors import InputError
from medlrp.lrp import attention as rules
from medlrp.lrp.composites import Composite
from medlrp.lrp.engine import Engine, Handler
from medlrp.lrp.handlers import transparent, variants
from medlrp.lrp.rules import RULES, LinearRule
from medlrp.lrp.transformer_fast import fast_handlers
from medlrp.registry import COMPOSITES

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------------
# generic pieces


def _is_tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _vjp(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    true: Tensor,
    positions: Sequence[int],
    scales: Sequence[float | None],
) -> Callable[[Tensor], list[Tensor | None]]:
    """Vector-Jacobian product of ``func`` at its true inputs (positions in ``args``), times ``scales``.

    The op is recomputed in the backward on fresh aliases of its inputs (leaves where an input has no
    graph), so the result is the op's local product and carries the graph of everything it reads.
    """

    def vjp(grad: Tensor) -> list[Tensor | None]:
        # recomputed on fresh aliases: the gradient to each factor is the op's own, also when one
        # factor is computed from another (a gated unit ``act(W x) * x``), and it keeps their graph
        ins = [
            t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
            for t in (args[p] for p in positions)
        ]
        local = list(args)
        for p, t in zip(positions, ins, strict=True):
            local[p] = t
        with torch.enable_grad():
            out = func(*local, **kwargs)
        wanted = [t for t, s in zip(ins, scales, strict=True) if s is not None]
        grads = iter(
            torch.autograd.grad(out, wanted, grad, create_graph=True, retain_graph=True, allow_unused=True)
        )
        result: list[Tensor | None] = []
        for t, s in zip(ins, scales, strict=True):
            if s is None:
                result.append(None)
                continue
            g = next(grads)
            result.append(torch.zeros_like(t) if g is None else g * s)
        return result

    return vjp


def _flatten_args(args: tuple[Any, ...]) -> tuple[list[Any], Callable[[list[Any]], tuple[Any, ...]]]:
    """Flatten one level of list/tuple arguments (``einsum(eq, [a, b])``) and give the inverse."""
    flat: list[Any] = []
    shape: list[int | None] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            flat.extend(a)
            shape.append(len(a))
        else:
            flat.append(a)
            shape.append(None)

    def rebuild(values: list[Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        i = 0
        for n in shape:
            if n is None:
                out.append(values[i])
                i += 1
            else:
                out.append(list(values[i : i + n]))
                i += n
        return tuple(out)

    return flat, rebuild


def scaled_op(
    engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], scales: dict[int, float | None]
) -> Tensor:
    """Run ``func`` with the gradient to flat argument ``i`` multiplied by ``scales[i]`` (None: stopped).

    Arguments not in ``scales`` are constants (untracked). The output is tracked.
    """
    flat, rebuild = _flatten_args(args)
    if not engine.dual:
        local = list(flat)
        for i, s in scales.items():
            local[i] = local[i].detach() if s is None else rules.scale_grad(local[i], s)
        out = func(*rebuild(local), **kwargs)
        engine.track(out)
        return out
    true = func(*args, **kwargs)
    positions = list(scales)

    def flat_func(*values: Any, **kw: Any) -> Any:
        return func(*rebuild(list(values)), **kw)

    vjp = _vjp(flat_func, flat, kwargs, true, positions, [scales[p] for p in positions])
    routed = rules.linearised(true, vjp, [engine.routed(flat[p]) for p in positions])
    engine.track(true, routed)
    return true


# ---------------------------------------------------------------------------------------------------
# handlers


def _multilinear(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Matmul / bmm / einsum: the uniform rule over the relevance-carrying factors (1/n each)."""
    flat, _ = _flatten_args(args)
    tracked = [i for i, a in enumerate(flat) if _is_tracked(engine, a)]
    share = 1.0 / len(tracked)
    return scaled_op(engine, func, args, kwargs, dict.fromkeys(tracked, share))


def _softmax(conservative: bool) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if conservative:  # CP-LRP: the attention weights are constants (no relevance flows through them)
            if engine.dual:
                return func(*args, **kwargs)
            with torch.no_grad():
                return func(*args, **kwargs)
        # AttnLRP: the softmax's own gradient is its rule
        return scaled_op(engine, func, args, kwargs, {0: 1.0})

    return handler


_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _sdpa(conservative: bool) -> Handler:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = dict(zip(_SDPA_NAMES, args, strict=False))
        bound.update(kwargs)
        if bound.get("dropout_p", 0.0):
            raise engine.input_error("attention dropout is active (model in train mode): call model.eval()")
        if _is_tracked(engine, bound.get("attn_mask")):
            raise engine.unsupported("attention mask computed from the input")
        q, k, v = bound.pop("query"), bound.pop("key"), bound.pop("value")
        if conservative:
            scales = {0: None, 1: None, 2: 1.0}
        else:
            scales = {0: 0.25, 1: 0.25, 2: 0.5}
        scales = {i: s for i, s in scales.items() if _is_tracked(engine, (q, k, v)[i])}
        return scaled_op(engine, func, (q, k, v), bound, scales)

    return handler


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _multi_head_attention(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``), run as its parts.

    The projections go to the linear-layer rule, the attention to the ``scaled_dot_product_attention``
    handler; the parts are dispatched by the engine again (it is re-entered for them).
    """
    a = _MHA_SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    p = a.arguments
    for name in ("bias_k", "bias_v", "static_k", "static_v", "key_padding_mask"):
        if p[name] is not None:
            raise engine.unsupported(f"multi-head attention with {name} has no relevance rule here")
    if p["add_zero_attn"]:
        raise engine.unsupported("multi-head attention with add_zero_attn has no relevance rule here")
    if p["training"] and p["dropout_p"] > 0:
        raise engine.input_error("attention dropout is active (model in train mode): call model.eval()")
    query, key, value = p["query"], p["key"], p["value"]
    batched = query.dim() == 3
    heads, mask = p["num_heads"], p["attn_mask"]
    with engine:  # re-enter: the projections and the attention below are dispatched to their handlers
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        length, n, dim = query.shape
        if p["use_separate_proj_weight"]:
            weights = (p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"])
        else:
            weights = p["in_proj_weight"].chunk(3)
        b = p["in_proj_bias"]
        biases = (None, None, None) if b is None else b.chunk(3)
        if query is key and key is value and not p["use_separate_proj_weight"]:
            q, k, v = F.linear(query, p["in_proj_weight"], b).chunk(3, dim=-1)
        else:
            q, k, v = (
                F.linear(t, w, bb) for t, w, bb in zip((query, key, value), weights, biases, strict=True)
            )

        def heads_first(t: Tensor) -> Tensor:  # (L, N, E) -> (N, H, L, E / H)
            return t.reshape(t.shape[0], n, heads, dim // heads).permute(1, 2, 0, 3)

        if mask is not None and mask.dim() == 3:
            mask = mask.reshape(n, heads, *mask.shape[1:])
        out = F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), attn_mask=mask, is_causal=p["is_causal"]
        )
        out = out.permute(2, 0, 1, 3).reshape(length, n, dim)
        out = F.linear(out, p["out_proj_weight"], p["out_proj_bias"])
        if not batched:
            out = out.squeeze(1)
    weights_out = None
    if p["need_weights"]:  # the attention map itself carries no relevance: a plain constant
        with torch.no_grad():
            _, weights_out = func(*args, **kwargs)
    return out, weights_out


_SUMS = (
    [(f, None) for f in variants("add", "sub", "subtract")]
    + [(f, None) for f in (torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__sub__)]
    + [(f, torch.add) for f in variants("add_", "__iadd__")]
    + [(f, torch.sub) for f in variants("sub_", "__isub__")]
)


def transformer_handlers(conservative: bool, residual: str = "norm") -> dict[Any, Handler]:
    """The handler table of ``attnlrp`` (``conservative=False``) or ``cp-lrp`` (``True``).

    ``residual="plain"`` gives sums the plain gradient (the exact proportional split, LXT's choice)
    instead of the engine's epsilon-stabilised one (zennit's ``Norm``, the default).
    """
    table: dict[Any, Handler] = fast_handlers(stabilised_sums=residual == "norm")
    if residual == "plain":
        for f, out_of_place in _SUMS:
            table[f] = transparent(out_of_place)
    elif residual != "norm":
        raise InputError(f"residual rule {residual!r} unknown; known: norm, plain")
    for f in variants("matmul", "bmm", "einsum") + [torch.Tensor.__matmul__, torch.Tensor.__rmatmul__]:
        table[f] = _multilinear
    for f in variants("softmax"):
        table[f] = _softmax(conservative)
    table[F.scaled_dot_product_attention] = _sdpa(conservative)
    table[F.multi_head_attention_forward] = _multi_head_attention
    return table


# ---------------------------------------------------------------------------------------------------
# composites


def linear_rule(rule: str | LinearRule, **options: Any) -> LinearRule:
    """``rule`` itself, or the registered rule of that name made with the ``options`` it takes.

    Names: :data:`medlrp.lrp.rules.RULES` (the same rules the CNN composites use).
    """
    if isinstance(rule, LinearRule):
        return rule
    cls = RULES.get(rule)
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})


def transformer_composite(
    name: str,
    conservative: bool,
    linear: str | LinearRule = "epsilon",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    first: str | LinearRule | None = None,
    stabilizer: float = 1e-6,
    low: float | Tensor | None = None,
    high: float | Tensor | None = None,
    residual: str = "norm",
) -> Composite:
    """A transformer composite: ``attnlrp`` (``conservative=False``) or ``cp-lrp`` (``True``).

    Args:
        name: The composite's name.
        conservative: Hold the softmax and the layer-norm scale constant (CP-LRP).
        linear: Rule on linear layers (projections, MLP, head, patch embedding): a registered rule name
            (``medlrp.lrp.RULES``: ``"epsilon"``, ``"gamma"``, ``"zero"``, ``"zplus"``, ...) or a rule.
        epsilon: Epsilon of the epsilon rule.
        gamma: Gamma of the gamma rule.
        first: Rule on the first layer (the patch embedding): ``None`` (same as ``linear``), a rule
            name (``"zbox"`` with ``low``/``high``, default each sample's own min/max; ``"flat"``,
            ``"wsquare"``, ...) or a rule.
        stabilizer: Stabiliser of gamma and the first-layer rules.
        low: Lower input bound for ``first="zbox"``.
        high: Upper input bound for ``first="zbox"``.
        residual: Rule on sums (residual connections, position embedding): ``"norm"`` (the engine's
            proportional split stabilised with 1e-6, as zennit) or ``"plain"`` (unstabilised, as LXT).
    """
    options = {"epsilon": epsilon, "gamma": gamma, "stabilizer": stabilizer, "low": low, "high": high}
    rule = linear_rule(linear, **options)
    return Composite(
        dense=rule,
        conv=rule,
        first=None if first is None else linear_rule(first, **options),
        handlers=transformer_handlers(conservative, residual),
        name=name,
        kind="transformer",
    )


@COMPOSITES.register("attnlrp")
def attnlrp(**options: Any) -> Composite:
    """``attnlrp`` (Achtibat et al., ICML 2024) for ViTs; options: :func:`transformer_composite`."""
    return transformer_composite("attnlrp", False, **options)


@COMPOSITES.register("cp-lrp")
def cp_lrp(**options: Any) -> Composite:
    """``cp-lrp`` (Ali et al., ICML 2022): softmax and layer-norm scale held constant (options as attnlrp)."""
    return transformer_composite("cp-lrp", True, **options)


# ---------------------------------------------------------------------------------------------------
# per-token relevance


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks, in order (``(dotted name, module)``).

    They are the longest run of same-class children of one ``nn.Sequential`` / ``nn.ModuleList`` that
    contain a layer norm (or attention).
    """
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)) or len(module) == 0:
            continue
        children = list(module.named_children())
        kinds = {type(c) for _, c in children}
        if len(kinds) != 1 or len(children) <= len(best):
            continue
        first = children[0][1]
        if any(isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) for m in first.modules()):
            prefix = f"{name}." if name else ""
            best = [(prefix + n, c) for n, c in children]
    return best


def _block(model: nn.Module, block: int | str) -> tuple[str, nn.Module]:
    if isinstance(block, str):
        modules = dict(model.named_modules())
        if block not in modules:
            raise InputError(f"no module named {block!r} in the model")
        return block, modules[block]
    blocks = transformer_blocks(model)
    if not blocks:
        raise InputError("no transformer blocks found: give the block's dotted module name")
    if not -len(blocks) <= block < len(blocks):
        raise InputError(f"block {block} out of range: the model has {len(blocks)} blocks")
    return blocks[block]


def token_relevance(lrp: Any, x: Tensor, target: Any = None, block: int | str = -1) -> tuple[Tensor, Any]:
    """Relevance of each token at the output of a transformer block.

    Args:
        lrp: A :class:`medlrp.LRP` built with a transformer composite.
        x: The input batch.
        target: As for ``lrp(x, target)``.
        block: Index into :func:`transformer_blocks` (negative counts from the end) or a dotted module
            name; the block's output ``(N, T, D)`` (the residual stream) is read.

    Returns:
        ``(tokens, explanation)``: ``tokens`` is ``(N, T)``, the relevance of each token (summed over
        the width; with a class token it is token 0), and the input explanation of the same call.
    """
    name, module = _block(lrp.model, block)
    store: dict[str, Tensor] = {}

    def grab(grad: Tensor) -> None:
        store["grad"] = grad

    def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
        h = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(h, Tensor) and h.requires_grad:
            store["value"] = h
            h.register_hook(grab)

    handle = module.register_forward_hook(hook)
    try:
        explanation = lrp(x, target)
    finally:
        handle.remove()
    if "grad" not in store:
        raise InputError(f"block {name!r} does not carry relevance to the output")
    value, grad = store["value"].detach(), store["grad"]
    if value.dim() != 3 or value.shape[0] != x.shape[0]:
        raise InputError(f"block {name!r} output has shape {tuple(value.shape)}, expected (N, tokens, width)")
    return (value * grad).sum(-1), explanation
