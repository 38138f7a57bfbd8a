"""Training losses behind one seam: ``loss_fn(model, batch) -> (loss, parts)``.

``parts`` holds the named terms (floats) for logging; the loop sums nothing itself, so an
explanation-guided loss (cross-entropy plus a relevance penalty outside the mask) plugs in unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medlrp.data.folder import Batch

LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


def cross_entropy_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain classification loss: mean cross-entropy of the logits against the labels."""
    logits = model(batch.x)
    loss = F.cross_entropy(logits, batch.label)
    accuracy = (logits.detach().argmax(dim=1) == batch.label).float().mean()
    return loss, {"ce": float(loss.detach()), "acc": float(accuracy)}
