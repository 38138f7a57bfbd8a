"""The input preprocessing a checkpoint carries: resize to the model's grid, then normalise."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlrp.errors import InputError


@dataclass
class Preprocessing:
    """How an :class:`~medlrp.io.Image` array becomes a model input.

    Attributes:
        dims: 1 (signals: leads x samples), 2 or 3 spatial dimensions the model takes.
        channels: Input channels the model takes.
        size: Spatial size the model takes (``[H, W]`` or ``[D, H, W]``).
        intensity: ``"zscore"`` (per image: subtract mean, divide by std), ``"minmax"`` (per image to
            ``[0, 1]``), or ``"none"``.
        window: Optional ``[center, width]`` applied (clip) before the intensity normalisation.
    """

    dims: int = 2
    channels: int = 1
    size: list[int] = field(default_factory=lambda: [64, 64])
    intensity: str = "zscore"
    window: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def __call__(self, array: np.ndarray | torch.Tensor, source: str = "input") -> torch.Tensor:
        """Turn ``(C, *spatial)`` into a float32 model input ``(C, *size)``; bad input is an InputError."""
        t = torch.as_tensor(np.asarray(array, dtype=np.float32))
        if t.ndim - 1 != self.dims:
            raise InputError(
                f"{source}: {t.ndim - 1}D input {tuple(t.shape[1:])}, but the model takes {self.dims}D input"
            )
        if not torch.isfinite(t).all():
            raise InputError(f"{source}: contains NaN or infinite values")
        if t.shape[0] != self.channels:
            if self.channels == 1 and t.shape[0] == 3:
                t = t.mean(dim=0, keepdim=True)
            else:
                raise InputError(f"{source}: {t.shape[0]} channels, but the model takes {self.channels}")
        if self.window is not None:
            center, width = self.window
            t = t.clamp(center - width / 2, center + width / 2)
        if list(t.shape[1:]) != list(self.size):
            mode = {1: "linear", 2: "bilinear"}.get(self.dims, "trilinear")
            t = F.interpolate(t[None], size=tuple(self.size), mode=mode, align_corners=False)[0]
        return normalise(t, self.intensity)


def normalise(t: torch.Tensor, intensity: str) -> torch.Tensor:
    """Per-image intensity normalisation (``zscore``, ``minmax`` or ``none``)."""
    if intensity == "zscore":
        return (t - t.mean()) / t.std().clamp_min(1e-6)
    if intensity == "minmax":
        lo, hi = t.min(), t.max()
        return (t - lo) / (hi - lo).clamp_min(1e-6)
    if intensity == "none":
        return t
    raise InputError(f"unknown intensity normalisation {intensity!r}")
