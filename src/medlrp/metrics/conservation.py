"""Conservation of LRP: the relevance sums to the explained logit (up to biases and stabilisers)."""

from __future__ import annotations

import torch

from medlrp.errors import InputError
from medlrp.explanation import Explanation


def conservation_error(explanation: Explanation) -> torch.Tensor:
    """Relative conservation error ``|sum R - logit| / |logit|`` per sample.

    ``logit`` is ``explanation.output`` at ``explanation.target``. A zero logit gives ``inf`` (or NaN when
    the relevance sums to zero too). Meaningful for LRP (and other complete methods such as integrated
    gradients against a zero-output baseline); CAM maps do not conserve anything.

    Returns:
        ``(N,)`` float.
    """
    if not isinstance(explanation, Explanation):
        raise InputError(f"conservation_error takes an Explanation, got {type(explanation).__name__}")
    r = explanation.relevance.detach()
    logit = explanation.output.detach().gather(1, explanation.target.view(-1, 1).to(r.device))[:, 0]
    total = r.reshape(r.shape[0], -1).sum(dim=1).to(logit.dtype)
    return (total - logit).abs() / logit.abs()
