"""medlrp: explain medical image classifiers with LRP, CAMs and gradients; measure and train with it.

The public facade::

    import medlrp
    e = medlrp.explain(model, x, target=None, method="lrp", composite="epsilon-gamma-box")
    lrp = medlrp.LRP(model, composite="epsilon-plus-flat")
    r = lrp.relevance(x, target, create_graph=True)
"""

from medlrp import methods as _methods  # noqa: F401  (registers every method)
from medlrp import metrics
from medlrp.api import explain
from medlrp.errors import InputError, MedlrpError, UnsupportedLayerError
from medlrp.explanation import Explanation
from medlrp.lrp import LRP
from medlrp.models import load_model
from medlrp.registry import ARCHITECTURES, COMPOSITES, METHODS

__version__ = "0.1.0"

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
