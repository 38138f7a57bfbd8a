"""Composites: which rule each layer gets. Named composites mean what zennit 0.5.1's mean.

A :class:`Composite` maps module names, then module types, then the layer kind (dense or
convolution) to a rule; a *first-layer* rule may replace the rule of the first layer (zennit's rule:
the first module of ``model.named_modules()`` that is an instance of the first-layer types).
Operations without parameters follow zennit's ``layer_map_base``: activations pass relevance
through, sums and average pooling split it proportionally (``Norm``, stabiliser 1e-6), a BatchNorm
after a linear layer is merged into it and any other BatchNorm passes relevance through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medlrp.errors import InputError
from medlrp.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, LinearRule, Rule, ZBox, ZPlus
from medlrp.registry import COMPOSITES

CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_TYPES)


@dataclass
class Composite:
    """A mapping from layers to rules.

    Attributes:
        dense: Rule for ``nn.Linear`` (and any ``F.linear`` call).
        conv: Rule for convolutions and transposed convolutions.
        first: Rule for the first layer (``None``: no special first layer).
        first_types: Module types that count as "first layer" (zennit: all linear layers for the flat
            composites, convolutions for ``epsilon-gamma-box``).
        name_map: Module dotted name -> rule; takes precedence over everything else.
        type_map: ``(module types, rule)`` pairs, first match wins; before ``first``/``dense``/``conv``.
        handlers: Extra operation handlers (torch function -> handler) taking precedence over the
            built-in ones (see :mod:`medlrp.lrp.handlers`); how transformer composites add their rules.
        name: The registered name, if any.
        kind: ``"cnn"`` or ``"transformer"``.
    """

    dense: LinearRule = field(default_factory=Epsilon)
    conv: LinearRule = field(default_factory=Epsilon)
    first: LinearRule | None = None
    first_types: tuple[type[nn.Module], ...] = LINEAR_TYPES
    name_map: Mapping[str, Rule] = field(default_factory=dict)
    type_map: Sequence[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule]] = ()
    handlers: Mapping[Any, Any] = field(default_factory=dict)
    name: str | None = None
    kind: str = "cnn"

    def first_layer(self, model: nn.Module) -> str | None:
        """Dotted name of the first layer of ``model`` (``None`` if no first-layer rule applies)."""
        if self.first is None:
            return None
        for name, module in model.named_modules():
            if isinstance(module, self.first_types):
                return name
        return None

    def selector(self, model: nn.Module) -> Callable[[str, str, nn.Module | None], Rule]:
        """``select(kind, name, module) -> rule`` for layers of ``model``; ``kind``: linear/conv/..."""
        first = self.first_layer(model)
        cache: dict[tuple[str, str], Rule] = {}

        def select(kind: str, name: str, module: nn.Module | None) -> Rule:
            key = (kind, name)
            rule = cache.get(key)
            if rule is None:
                rule = cache[key] = self._select(kind, name, module, first)
            return rule

        return select

    def _select(self, kind: str, name: str, module: nn.Module | None, first: str | None) -> Rule:
        if name in self.name_map:
            return self.name_map[name]
        if module is not None:
            for types, rule in self.type_map:
                if isinstance(module, types):
                    return rule
        if first is not None and name == first and module is not None and self.first is not None:
            return self.first
        return self.dense if kind == "linear" else self.conv

    def options(self) -> dict[str, Any]:
        """JSON-friendly description (for ``Explanation.options``)."""
        out: dict[str, Any] = {"dense": repr(self.dense), "conv": repr(self.conv)}
        if self.first is not None:
            out["first"] = repr(self.first)
        if self.name_map:
            out["name_map"] = {k: repr(v) for k, v in self.name_map.items()}
        return out


def _eps(epsilon: float) -> Epsilon:
    return Epsilon(epsilon)


def epsilon(epsilon: float = 1e-6) -> Composite:
    """``epsilon``: LRP-epsilon on every linear layer, convolutions included (the conservation check)."""
    return Composite(dense=_eps(epsilon), conv=_eps(epsilon), name="epsilon")


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon-plus``: epsilon on dense layers, z+ on convolutions."""
    return Composite(dense=_eps(epsilon), conv=ZPlus(stabilizer), name="epsilon-plus")


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon-plus-flat``: as ``epsilon-plus``, with the flat rule on the first linear layer."""
    return Composite(
        dense=_eps(epsilon),
        conv=ZPlus(stabilizer),
        first=Flat(stabilizer),
        first_types=LINEAR_TYPES,
        name="epsilon-plus-flat",
    )


def epsilon_gamma_box(
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
) -> Composite:
    """``epsilon-gamma-box``: epsilon dense, gamma convolutions, z-box on the first convolution.

    ``low``/``high``: the input's bounds (float or tensor broadcastable to the input); ``None``: each
    sample's own minimum and maximum.
    """
    return Composite(
        dense=_eps(epsilon),
        conv=Gamma(gamma, stabilizer),
        first=ZBox(low, high, stabilizer),
        first_types=CONV_TYPES,
        name="epsilon-gamma-box",
    )


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon-alpha2-beta1``: epsilon dense, alpha=2 beta=1 on convolutions."""
    return Composite(dense=_eps(epsilon), conv=AlphaBeta(2.0, 1.0, stabilizer), name="epsilon-alpha2-beta1")


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon-alpha2-beta1-flat``: as ``epsilon-alpha2-beta1``, flat rule on the first linear layer."""
    return Composite(
        dense=_eps(epsilon),
        conv=AlphaBeta(2.0, 1.0, stabilizer),
        first=Flat(stabilizer),
        first_types=LINEAR_TYPES,
        name="epsilon-alpha2-beta1-flat",
    )


CNN_COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon": epsilon,
    "epsilon-plus": epsilon_plus,
    "epsilon-plus-flat": epsilon_plus_flat,
    "epsilon-gamma-box": epsilon_gamma_box,
    "epsilon-alpha2-beta1": epsilon_alpha2_beta1,
    "epsilon-alpha2-beta1-flat": epsilon_alpha2_beta1_flat,
}
for _name, _factory in CNN_COMPOSITES.items():
    if not COMPOSITES.registered(_name):
        COMPOSITES.add(_name, _factory)


#: Names ``composite=None`` picks: for CNNs, for transformers (registered by :mod:`medlrp.lrp.transformer`)
#: and for recurrent models (epsilon everywhere, the paper's rules: a flat first-layer rule would land on
#: the first ``nn.Linear``, the classifier head behind the recurrent layer).
CNN_DEFAULT = "epsilon-plus-flat"
TRANSFORMER_DEFAULT = "attnlrp"
RECURRENT_DEFAULT = "epsilon"

_TRANSFORMER_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def looks_like_transformer(model: nn.Module) -> bool:
    """Whether ``model`` computes attention, judged from its modules, not from a list of classes.

    True for an attention module, or a module named ``*attn*`` / ``*attention*`` beside a layer norm
    (``nn.LayerNorm``, ``nn.RMSNorm`` or a module normalising a ``normalized_shape``, as timm's
    ``RmsNorm``).
    """
    has_norm = False
    has_attention = False
    for name, module in model.named_modules():
        if isinstance(module, _TRANSFORMER_MODULES):
            return True
        has_norm |= isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or hasattr(module, "normalized_shape")
        leaf = name.rsplit(".", 1)[-1].lower()
        has_attention |= "attn" in leaf or "attention" in leaf
    return has_norm and has_attention


def default_composite_name(model: nn.Module) -> str:
    """The composite ``composite=None`` picks for ``model``."""
    if looks_like_transformer(model):
        return TRANSFORMER_DEFAULT
    if any(isinstance(m, (nn.LSTM, nn.GRU)) for m in model.modules()):
        return RECURRENT_DEFAULT
    return CNN_DEFAULT


def resolve_composite(model: nn.Module, composite: str | Composite | None, **options: Any) -> Composite:
    """Turn ``composite`` (a name, a :class:`Composite` or ``None``) into a :class:`Composite`."""
    if isinstance(composite, Composite):
        if options:
            raise InputError("composite options apply to named composites only")
        return composite
    if composite is None:
        composite = default_composite_name(model)
    if not isinstance(composite, str):
        raise InputError(
            f"composite must be a name or a medlrp.lrp.Composite, not {type(composite).__name__}"
        )
    factory = COMPOSITES.get(composite)
    try:
        result = factory(**options)
    except TypeError as err:
        raise InputError(f"composite {composite!r}: {err}") from None
    if not isinstance(result, Composite):
        raise InputError(f"composite {composite!r} did not produce a Composite")
    if result.kind == "cnn" and looks_like_transformer(model):
        raise InputError(
            f"composite {composite!r} is for CNNs but this model is a transformer; use a transformer "
            "composite (attnlrp, cp-lrp)"
        )
    if result.name is None:
        result.name = composite
    return result
