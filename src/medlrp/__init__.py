"""medlrp: explain medical image classifiers with LRP, CAMs and gradients; measure and train with it.

The public facade::

    import medlrp
    e = medlrp.explain(model, x, target=None, method="lrp", composite="epsilon-gamma-box")
    lrp = medlrp.LRP(model, composite="epsilon-plus-flat")
    r = lrp.relevance(x, target, create_graph=True)

The names are imported on first use (PEP 562), so ``import medlrp`` and ``medlrp --help`` stay fast;
the registries import the methods and architectures on their first lookup.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medlrp.errors import InputError, MedlrpError, UnsupportedLayerError
from medlrp.registry import ARCHITECTURES, COMPOSITES, METHODS

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "explain": "medlrp.api",
    "Explanation": "medlrp.explanation",
    "LRP": "medlrp.lrp",
    "load_model": "medlrp.models",
}

if TYPE_CHECKING:
    from medlrp import metrics
    from medlrp.api import explain
    from medlrp.explanation import Explanation
    from medlrp.lrp import LRP
    from medlrp.models import load_model

__all__ = [
    "ARCHITECTURES",
    "COMPOSITES",
    "LRP",
    "METHODS",
    "Explanation",
    "InputError",
    "MedlrpError",
    "UnsupportedLayerError",
    "explain",
    "load_model",
    "metrics",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "metrics":
        value = importlib.import_module("medlrp.metrics")
    else:
        raise AttributeError(f"module 'medlrp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
