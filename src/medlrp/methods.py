"""Import every module that registers a method, so ``METHODS`` is complete once medlrp is imported."""

from medlrp import cam as _cam  # noqa: F401
from medlrp import gradients as _gradients  # noqa: F401
from medlrp import lrp as _lrp  # noqa: F401
from medlrp.lrp import transformer as _transformer  # noqa: F401  (attnlrp, cp-lrp)
