"""Conservation of LRP: the relevance sums to the explained logit (up to biases and stabilisers)."""

from __future__ import annotations

import torch

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.region import Goal


def conservation_error(explanation: Explanation) -> torch.Tensor:
    """Relative conservation error ``|sum R - logit| / |logit|`` per sample.

    ``logit`` is ``explanation.output`` at ``explanation.target`` (a segmentation explanation: that class's
    logit sum over ``explanation.region``, the quantity explained). A zero logit gives ``inf`` (or NaN when
    the relevance sums to zero too). Meaningful for LRP (and other complete methods such as integrated
    gradients against a zero-output baseline); CAM maps do not conserve anything.

    Returns:
        ``(N,)`` float.
    """
    if not isinstance(explanation, Explanation):
        raise InputError(f"conservation_error takes an Explanation, got {type(explanation).__name__}")
    r = explanation.relevance.detach()
    goal = Goal(explanation.target.to(r.device), explanation.region)
    logit = goal.score(explanation.output.detach().to(r.device))
    total = r.reshape(r.shape[0], -1).sum(dim=1).to(logit.dtype)
    return (total - logit).abs() / logit.abs()
