"""Layer-wise Relevance Propagation: rules, composites, the engine and the ``LRP`` explainer.

Rules are written into the model's forward pass by a per-call ``TorchFunctionMode`` (nothing global,
no hooks), so one ordinary backward yields the relevance as ``input * grad``. See
:mod:`medlrp.lrp.engine` for the design, :mod:`medlrp.lrp.handlers` for the extension API.
"""

from medlrp.lrp import gates as _gates  # noqa: F401  (products: gates, gated units)
from medlrp.lrp import normalisation as _normalisation  # noqa: F401  (layer/group/instance/RMS norm)
from medlrp.lrp import recurrent  # noqa: F401  (registers the LSTM/GRU handlers)
from medlrp.lrp import resample as _resample  # noqa: F401  (interpolation, PReLU)
from medlrp.lrp.composites import (
    CNN_COMPOSITES,
    DEFAULT_COMPOSITES,
    Composite,
    default_composite_name,
    looks_like_transformer,
    resolve_composite,
)
from medlrp.lrp.explainer import LRP, STARTS
from medlrp.lrp.handlers import HANDLERS, register_handler
from medlrp.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    LinearRule,
    Norm,
    Pass,
    Rule,
    WSquare,
    ZBox,
    Zero,
    ZPlus,
)

__all__ = [
    "CNN_COMPOSITES",
    "DEFAULT_COMPOSITES",
    "HANDLERS",
    "LRP",
    "STARTS",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LinearRule",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "Zero",
    "default_composite_name",
    "looks_like_transformer",
    "register_handler",
    "resolve_composite",
]
