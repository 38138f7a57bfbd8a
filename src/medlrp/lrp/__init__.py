"""Layer-wise Relevance Propagation: rules, composites, the engine and the ``LRP`` explainer.

Rules are written into the model's forward pass by a per-call ``TorchFunctionMode`` (nothing global,
no hooks), so one ordinary backward yields the relevance as ``input * grad``. See
:mod:`medlrp.lrp.rules` for the rules (and how to add one), :mod:`medlrp.lrp.engine` for the design,
:mod:`medlrp.lrp.handlers` for the extension API.
"""

from medlrp.lrp import gates as _gates  # noqa: F401  (products: gates, gated units)
from medlrp.lrp import normalisation as _normalisation  # noqa: F401  (layer/group/instance/RMS norm)
from medlrp.lrp import recurrent  # noqa: F401  (registers the LSTM/GRU handlers)
from medlrp.lrp import resample as _resample  # noqa: F401  (interpolation, PReLU)
from medlrp.lrp import transformer as _transformer  # noqa: F401  (registers attnlrp and cp-lrp)
from medlrp.lrp.composites import (
    CNN_COMPOSITES,
    Composite,
    default_composite_name,
    looks_like_transformer,
    resolve_composite,
)
from medlrp.lrp.explainer import LRP, STARTS
from medlrp.lrp.handlers import HANDLERS, register_handler
from medlrp.lrp.rules import (
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    LinearRule,
    Product,
    Quantities,
    Rule,
    WSquare,
    ZBox,
    Zero,
    ZPlus,
    register_rule,
    stabilize,
)

__all__ = [
    "CNN_COMPOSITES",
    "HANDLERS",
    "LRP",
    "RULES",
    "STARTS",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LinearRule",
    "Product",
    "Quantities",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "Zero",
    "default_composite_name",
    "looks_like_transformer",
    "register_handler",
    "register_rule",
    "resolve_composite",
    "stabilize",
]
