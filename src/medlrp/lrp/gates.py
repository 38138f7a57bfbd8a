"""Products on the relevance path: multiplicative gates, broadcast factors and gated units.

A product ``a * b`` is the one elementwise operation whose relevance rule needs to know what the two
factors are. The rules of the literature, by case:

* **one factor is a constant** (a parameter, LayerScale, a mask): the product is linear in the other
  factor, and its plain gradient is the rule.
* **a gate times a signal** (squeeze-excitation, ``x * sigmoid(x)`` written by hand, EvoNorm's
  ``x * sigmoid(v x)``, a CBAM spatial map): the gate is a constant weight and all the relevance goes to
  the signal ("signal-take-all", Arras et al. 2017, the rule of LSTM gates). A gate is the output of a
  sigmoid or hard-sigmoid, also reshaped, expanded, concatenated or scaled by a non-negative constant
  (MONAI's ``ChannelSELayer`` views its sigmoid as ``(N, C, 1, 1)``), or, when no factor is marked, the
  factor broadcast over the other (fewer elements: an excitation over channels or over space).
* **two signals of one size** (a gated linear unit such as MambaOut's ``act(g) * cat(i, c)``, ``x * x``):
  the uniform rule of AttnLRP (Achtibat et al. 2024, Prop. 3.3), half the relevance to each factor:
  each factor gets half its gradient. The transformer composites apply the same rule to attention
  products (:mod:`medlrp.lrp.transformer`).

All three are conservative: the relevance of the product is passed on whole.
"""

from __future__ import annotations

from typing import Any

import torch

from medlrp.lrp.engine import Engine
from medlrp.lrp.handlers import register_handler, transparent, variants
from medlrp.lrp.transformer import scaled_op

Tensor = torch.Tensor

_SCALE = transparent()
_SCALE_SIGNED = transparent(sign="unknown")


def _tracked(engine: Engine, t: Any) -> bool:
    return isinstance(t, Tensor) and engine.node(t) is not None


def _nonneg_constant(engine: Engine, c: Any) -> bool:
    """Whether a constant factor is known to be >= 0 (so the product keeps its factor's sign)."""
    if isinstance(c, Tensor):
        return c.numel() == 0 or engine.flag((c >= 0).all())
    return isinstance(c, (int, float)) and c >= 0


def scale(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A product or quotient with one constant factor: linear, its plain gradient is the rule."""
    constant = args[1] if len(args) > 1 and _tracked(engine, args[0]) else args[0]
    handler = _SCALE if _nonneg_constant(engine, constant) else _SCALE_SIGNED
    return handler(engine, func, args, kwargs)


def gate_of(engine: Engine, a: Tensor, b: Tensor) -> int | None:
    """Which factor of ``a * b`` is the gate: 0 (``a``), 1 (``b``) or ``None`` (two signals of one size)."""
    ga, gb = engine.node(a).gate, engine.node(b).gate
    if ga != gb:
        return 0 if ga else 1
    if a.numel() != b.numel():
        return 0 if a.numel() < b.numel() else 1
    return None


def _in_place(engine: Engine, a: Tensor, b: Any) -> bool:
    """``a *= b`` done in place, as the model asked: ``a`` carries relevance, ``b`` is a gate or constant.

    A model may read ``a`` after ``a.mul_(b)`` instead of the result, so the fast path changes ``a``
    too; autograd guards it (a tensor some backward node saved cannot change silently) and where it
    refuses (a leaf, a view made by a rule's own autograd function) the product is made out of place.
    The exact pass (``create_graph=True``) always makes it out of place: its rules keep the true
    tensors for their derivatives.
    """
    if engine.dual:
        return False
    node = engine.node(a)
    try:
        a.mul_(b.detach() if isinstance(b, Tensor) else b)
    except RuntimeError:
        return False
    nonneg = node.nonneg and (engine.node(b).gate if _tracked(engine, b) else _nonneg_constant(engine, b))
    node.linear, node.gate, node.is_input, node.nonneg = None, False, False, nonneg
    return True


def _multiply(out_of_place: Any = None) -> Any:
    def handler(engine: Engine, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        f = out_of_place or func
        a, b = args[0], args[1]
        ta, tb = _tracked(engine, a), _tracked(engine, b)
        if ta != tb:
            g, other = (a, b) if ta else (b, a)
            if isinstance(other, Tensor) and other.is_floating_point() and engine.node(g).gate:
                # a gate times a signal that carries no relevance (a recurrent cell's initial state or
                # bias): the gate takes none either ("signal-take-all"), the product's share is absorbed
                if engine.dual:
                    return f(a, b)  # the true value keeps its graph; it is a constant of the routed one
                return f(a.detach(), b) if ta else f(a, b.detach())
        gate = gate_of(engine, a, b) if ta and tb else None
        in_place = out_of_place is not None and ta and (gate == 1 or not tb)
        if in_place and _in_place(engine, a, b):
            return a
        if not (ta and tb):
            return scale(engine, f, (a, b), kwargs)
        if gate is None:  # the uniform rule: half of the gradient to each factor
            return scaled_op(engine, f, (a, b), kwargs, {0: 0.5, 1: 0.5})
        x, g = (b, a) if gate == 0 else (a, b)
        true = f(a, b)
        if engine.dual:
            # the gate's true value (with its graph) weighs the routed signal: exact derivatives
            engine.track(true, engine.routed(x) * g)
            return true
        out = x * g.detach()
        engine.track(out)
        return out

    return handler


register_handler(*variants("mul", "multiply"), torch.Tensor.__mul__, torch.Tensor.__rmul__)(_multiply())
register_handler(*variants("mul_", "__imul__"))(_multiply(torch.mul))

__all__ = ["gate_of", "scale"]
