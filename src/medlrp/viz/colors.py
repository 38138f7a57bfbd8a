"""Signed relevance to colour: a diverging map centred on zero with symmetric limits."""

from __future__ import annotations

import functools

import numpy as np

#: Matplotlib's blue-white-red map: negative relevance blue, zero white, positive red.
CMAP = "bwr"


@functools.lru_cache(maxsize=4)
def _lut(name: str = CMAP) -> np.ndarray:
    from matplotlib import colormaps

    # An odd number of entries puts zero exactly on the middle one (white), not between two.
    return (colormaps[name].resampled(257)(np.linspace(0.0, 1.0, 257))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def symmetric_limit(relevance: np.ndarray) -> float:
    """``max |R|`` over the map (1.0 for an all-zero map), the colour limit used as ``[-limit, +limit]``.

    The limit is never taken from the minimum and maximum separately: zero stays white and the sign of
    relevance stays readable.
    """
    finite = np.abs(np.asarray(relevance, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0.0 else 1.0


def diverging_rgba(relevance: np.ndarray, limit: float) -> np.ndarray:
    """Colour ``relevance`` on ``[-limit, limit]``; alpha grows with ``|R| / limit`` (zero is transparent)."""
    r = np.nan_to_num(np.asarray(relevance, dtype=np.float64)) / limit
    index = np.clip(np.rint((r + 1.0) * 128.0), 0, 256).astype(np.intp)
    rgba = np.empty((*r.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _lut()[index]
    rgba[..., 3] = (np.clip(np.abs(r), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgba


def blend(gray: np.ndarray, rgba: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """Lay ``rgba`` over a ``uint8`` grey image; returns ``uint8 (H, W, 3)``."""
    base = np.repeat(np.asarray(gray, dtype=np.float64)[..., None], 3, axis=-1)
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0 * opacity
    out = base * (1.0 - alpha) + rgba[..., :3].astype(np.float64) * alpha
    return (out + 0.5).astype(np.uint8)


def relevance_peak(relevances: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The voxel of strongest evidence for the class over all methods (each scaled to its own limit).

    Positive relevance first (what a reader looks for); a map without any takes ``|R|``.
    """
    total = sum(np.clip(np.nan_to_num(r), 0, None) / symmetric_limit(r) for r in relevances.values())
    if not np.any(total > 0):
        total = sum(np.abs(np.nan_to_num(r)) / symmetric_limit(r) for r in relevances.values())
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(total)), np.shape(total)))
