"""Conservation of LRP: the relevance sums to the explained logit (up to biases and stabilisers)."""

from __future__ import annotations

from copy import deepcopy

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


#: Parameters that are additive constants like biases (set to zero by :func:`conservation_copy`).
_SHIFTS = ("bias", "cls_token", "class_token", "reg_token", "dist_token")
_EMBEDDINGS = ("pos_embed", "pos_embedding", "position_embedding")


def conservation_copy(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """A float64 eval copy of ``model`` on which conservative LRP must sum to the logit.

    Every additive constant is set to zero: biases (normalisation shifts included), class / register
    tokens and position embeddings; BatchNorm means are zero and its variances calibrated on ``x`` (one
    train-mode pass with momentum 1, so a deep random network neither vanishes nor explodes), its scales
    random in [0.5, 1.5]. The model itself is not changed. The check of issue 15's zoo: ``epsilon``
    (CNNs) and ``cp-lrp`` (transformers) relevance of the copy sums to the target logit.

    Args:
        model: The model (any float dtype; train or eval mode).
        x: A float64 input batch (at least two samples where BatchNorm sees 1x1 maps).
        seed: Seed of the random BatchNorm scales.
    """
    copy = deepcopy(model).double()
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in copy.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, p in copy.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in _SHIFTS or leaf.endswith("_bias") or any(e in leaf for e in _EMBEDDINGS):
                p.zero_()
        for m in norms:
            m.momentum = 1.0
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
        if norms:
            copy.train()(x)
        for m in norms:
            if m.running_mean is not None:
                m.running_mean.zero_()
    return copy.eval()
