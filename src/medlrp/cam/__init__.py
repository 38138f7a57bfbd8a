"""Grad-CAM family (N-d, batched, ViT tokens on their own grid). Registers its methods on import.

``medlrp.explain(model, x, method="gradcam", layer="layer4", relu=True)``; every method takes
``layer=`` (module or dotted name, default: last convolutional / transformer block), ``relu=``,
``upsample=`` and ``grid=``; ``scorecam`` also ``batch_size=`` and ``align_corners=``.
"""

from __future__ import annotations

from typing import Any

import torch

from medlrp.cam.base import BaseCAM
from medlrp.cam.layers import default_layer, resolve_layer
from medlrp.cam.scorecam import ScoreCAM
from medlrp.cam.variants import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from medlrp.explanation import Explanation
from medlrp.region import Region
from medlrp.registry import METHODS
from medlrp.targets import Target

CAMS: tuple[type[BaseCAM], ...] = (GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, ScoreCAM)


def _method(cls: type[BaseCAM]) -> Any:
    def explain_cam(
        model: torch.nn.Module, x: torch.Tensor, target: Target = None, region: Region = None, **options: Any
    ) -> Explanation:
        return cls(model, **options)(x, target, region)

    explain_cam.__name__ = cls.name.replace("+", "p").replace("-", "_")
    explain_cam.__doc__ = (
        f"``{cls.name}`` as a registered method: see :class:`{cls.__module__}.{cls.__name__}`."
    )
    return explain_cam


for _cls in CAMS:
    METHODS.register(_cls.name, layer=True)(_method(_cls))

__all__ = [
    "CAMS",
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    "default_layer",
    "resolve_layer",
]
