"""Bringing a relevance map from the model's grid back to the input's grid."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_input_grid(relevance: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Resample a ``(*spatial)`` relevance map to ``shape`` keeping its total.

    Relevance is an amount per voxel, so after interpolation it is scaled by the ratio of voxel counts:
    the sum over the map (the explained logit for LRP) stays the same. Shrinking on every axis uses area
    averaging (exact for integer factors); otherwise (bi/tri)linear interpolation with the same
    ``align_corners=False`` convention as :class:`~medlrp.models.Preprocessing`.
    """
    r = torch.as_tensor(np.asarray(relevance, dtype=np.float64))
    if tuple(r.shape) == tuple(shape):
        return r.numpy().copy()
    if r.ndim not in (2, 3) or len(shape) != r.ndim:
        raise ValueError(f"cannot resample a map of shape {tuple(r.shape)} to {tuple(shape)}")
    if all(t <= s for t, s in zip(shape, r.shape, strict=True)):
        out = (
            F.adaptive_avg_pool2d(r[None, None], shape)
            if r.ndim == 2
            else F.adaptive_avg_pool3d(r[None, None], shape)
        )
    else:
        mode = "bilinear" if r.ndim == 2 else "trilinear"
        out = F.interpolate(r[None, None], size=tuple(shape), mode=mode, align_corners=False)
    scale = math.prod(r.shape) / math.prod(shape)
    return (out[0, 0] * scale).numpy()
