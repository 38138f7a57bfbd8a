"""Intensity windows: CT presets (brain, lung, bone, soft tissue) and display ranges."""

from __future__ import annotations

import numpy as np

from medlrp.errors import InputError
from medlrp.io.image import Image

#: ``name -> (center, width)`` in Hounsfield units; the usual radiology presets.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "soft-tissue": (50.0, 400.0),
}


def window_preset(name: str) -> tuple[float, float]:
    """``(center, width)`` of a preset; ``soft_tissue`` and ``softtissue`` mean ``soft-tissue``."""
    key = name.strip().lower().replace("_", "-")
    if key == "softtissue":
        key = "soft-tissue"
    if key not in WINDOW_PRESETS:
        known = ", ".join(WINDOW_PRESETS)
        raise InputError(f"unknown window preset {name!r}; known: {known}")
    return WINDOW_PRESETS[key]


def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Clip to ``[center - width/2, center + width/2]`` (values keep their units)."""
    return np.clip(array, center - width / 2, center + width / 2)


def display_range(image: Image, window: tuple[float, float] | None = None) -> tuple[float, float]:
    """Grey-level limits for showing ``image``: the given window, the file's window, else percentiles."""
    if window is None and "window" in image.meta:
        center, width = image.meta["window"]
        window = (float(center), float(width))
    if window is not None and window[1] > 0:
        return window[0] - window[1] / 2, window[0] + window[1] / 2
    lo, hi = np.percentile(image.array, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(image.array.min()), float(image.array.max())
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def to_gray(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` to ``uint8`` 0..255 (clipped)."""
    scaled = (np.asarray(array, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
