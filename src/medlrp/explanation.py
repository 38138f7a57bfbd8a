"""The :class:`Explanation` returned by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Explanation:
    """One explanation of a batch.

    Attributes:
        relevance: Attribution methods: same shape as the input. CAM methods: ``(N, 1, *spatial)``.
            Raw and signed: never clamped or rescaled (normalisation happens only in visualisation).
        output: The model's logits for the input, detached.
        target: ``LongTensor (N,)``, the explained class of each sample.
        method: The method's registered name (``"lrp"``, ``"gradcam"``, ...).
        options: The options the method ran with (composite, layer, steps, ...), JSON-friendly.
        region: Segmentation models: the explained region's weights ``(N, 1, *spatial of the output)``
            (1 inside, 0 outside; the explained quantity is class ``target``'s logit sum over it);
            ``None`` for classifiers.
    """

    relevance: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    region: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.relevance.shape[0])

    def to(self, device: str | torch.device) -> Explanation:
        """Return a copy with all tensors on ``device``."""
        return Explanation(
            self.relevance.to(device),
            self.output.to(device),
            self.target.to(device),
            self.method,
            self.options,
            None if self.region is None else self.region.to(device),
        )
