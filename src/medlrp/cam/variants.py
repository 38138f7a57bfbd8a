"""Gradient-weighted CAMs: each one only says how the gradient ``G`` and activation ``A`` make weights.

Formulas follow pytorch-grad-cam 1.5.7 (the reference the tests compare with) and the papers:

- Grad-CAM (Selvaraju et al. 2017): ``w_c = mean_spatial G_c``; ReLU by default (the paper's).
- Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 closed form on the logit's gradient):
  ``a = G^2 / (2 G^2 + sum_spatial(A) G^3 + 1e-6)`` (0 where ``G == 0``),
  ``w_c = sum_spatial relu(G_c) a_c``; ReLU by default.
- XGrad-CAM (Fu et al. 2020): ``w_c = sum_spatial G_c A_c / (sum_spatial A_c + 1e-7)``; ReLU by default.
- HiResCAM (Draelos & Carin 2020): element-wise ``sum_c G_c A_c``; signed by default (its definition
  has no ReLU; pytorch-grad-cam applies one to every CAM: use ``relu=True`` for its maps).
- LayerCAM (Jiang et al. 2021): element-wise ``sum_c relu(G_c) A_c``; ReLU by default (the paper's).
"""

from __future__ import annotations

import torch

from medlrp.cam.base import BaseCAM, spatial_dims
from medlrp.region import Goal


class GradCAM(BaseCAM):
    """Grad-CAM: channel weights are the spatial mean of the gradient."""

    name = "gradcam"

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per channel: ``mean_spatial G``."""
        assert grads is not None
        return grads.mean(dim=spatial_dims(grads), keepdim=True)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted by the closed-form ``alpha`` of the paper's eq. 19."""

    name = "gradcam++"

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per channel: ``sum_spatial relu(G) * alpha``."""
        assert grads is not None
        dims = spatial_dims(acts)
        g2 = grads.pow(2)
        alpha = g2 / (2 * g2 + acts.sum(dim=dims, keepdim=True) * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp_min(0) * alpha).sum(dim=dims, keepdim=True)


class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients weighted by the activation's share of its channel's sum."""

    name = "xgradcam"

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per channel: ``sum_spatial G A / (sum_spatial A + 1e-7)``."""
        assert grads is not None
        dims = spatial_dims(acts)
        return (grads * acts / (acts.sum(dim=dims, keepdim=True) + 1e-7)).sum(dim=dims, keepdim=True)


class HiResCAM(BaseCAM):
    """HiResCAM: the element-wise product of gradient and activation, summed over channels."""

    name = "hirescam"
    default_relu = False

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per position: ``G``."""
        assert grads is not None
        return grads


class LayerCAM(BaseCAM):
    """LayerCAM: positive gradients as per-position weights."""

    name = "layercam"

    def weights(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, goal: Goal
    ) -> torch.Tensor:
        """Per position: ``relu(G)``."""
        assert grads is not None
        return grads.clamp_min(0)
