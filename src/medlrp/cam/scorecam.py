"""Score-CAM (Wang et al. 2020): channel weights from the model's score on inputs masked by each channel.

Each channel's activation map is upsampled to the input's size, min-max scaled per sample and channel
to ``[0, 1]`` (``(m - min) / (max - min + 1e-8)``), multiplied into the input, and the masked input goes
through the whole model: ``w = softmax_c(target logit of x * mask_c)``. That is pytorch-grad-cam 1.5.7's
definition (raw logit, softmax over channels, no baseline subtraction). Its masks are upsampled with
``align_corners=True`` (``UpsamplingBilinear2d``); here ``align_corners=False`` by default (as in the
authors' code), ``align_corners=True`` reproduces pytorch-grad-cam.

Cost: one forward pass per channel and sample (batched ``batch_size`` at a time, masks made per batch
so memory stays ``O(batch_size * input)``). Scaling is per sample and channel, and the model runs in
eval mode, so a sample's map does not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from medlrp.cam.base import BaseCAM, upsample
from medlrp.cam.guard import logits
from medlrp.errors import InputError
from medlrp.region import Goal


class ScoreCAM(BaseCAM):
    """Score-CAM; ``batch_size`` masked inputs per forward pass; ReLU by default (the paper's)."""

    name = "scorecam"
    uses_gradients = False

    def __init__(
        self,
        model: torch.nn.Module,
        layer: Any = None,
        *,
        batch_size: int = 32,
        align_corners: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(model, layer, **options)
        if int(batch_size) < 1:
            raise InputError(f"scorecam: batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.align_corners = bool(align_corners)

    def options(self, layer_name: str) -> dict[str, Any]:
        """The options, with ``batch_size`` and ``align_corners``."""
        return {
            **super().options(layer_name),
            "batch_size": self.batch_size,
            "align_corners": self.align_corners,
        }

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per channel: softmax over channels of the target score of each masked input."""
        n, c, *spatial = acts.shape
        sample = torch.arange(n, device=acts.device).repeat_interleave(c)
        channel = torch.arange(c, device=acts.device).repeat(n)
        scores = torch.empty(n * c, dtype=acts.dtype, device=acts.device)
        with torch.no_grad():
            for start in range(0, n * c, self.batch_size):
                i = sample[start : start + self.batch_size]
                k = channel[start : start + self.batch_size]
                masks = upsample(acts[i, k][:, None], x.shape[2:], self.align_corners)
                flat = masks.flatten(1)
                lo = flat.min(dim=1).values.view(-1, *[1] * (masks.ndim - 1))
                hi = flat.max(dim=1).values.view(-1, *[1] * (masks.ndim - 1))
                masks = (masks - lo) / (hi - lo + 1e-8)
                out = logits(self.model(x[i] * masks))
                scores[start : start + len(i)] = goal.select(i).score(out).to(scores.dtype)
        return torch.softmax(scores.view(n, c), dim=1).view(n, c, *[1] * len(spatial))
