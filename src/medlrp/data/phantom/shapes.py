"""N-dimensional drawing helpers for the phantoms: coordinate grids, ellipsoids, smooth noise.

Every helper works for 2D and 3D alike; coordinates run over ``[-1, 1]`` along each array axis, and
in-plane rotations act on the last two axes (the "axial" plane of a volume).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter


def grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Broadcastable coordinates in ``[-1, 1]`` for each axis of ``shape`` (pixel centres)."""
    axes = [(np.arange(s, dtype=np.float64) + 0.5) / s * 2.0 - 1.0 for s in shape]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def radius_field(
    coords: list[np.ndarray], center: Sequence[float], radii: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """Normalised ellipsoid radius: ``< 1`` inside the ellipsoid, ``1`` on its surface.

    ``angle`` rotates the ellipsoid in the plane of the last two axes.
    """
    d = [c - m for c, m in zip(coords, center, strict=True)]
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        d[-2], d[-1] = cos * d[-2] - sin * d[-1], sin * d[-2] + cos * d[-1]
    return np.sqrt(sum((di / r) ** 2 for di, r in zip(d, radii, strict=True)))


def directions(coords: list[np.ndarray], center: Sequence[float]) -> list[np.ndarray]:
    """Unit vectors from ``center`` towards each pixel (zero length at the centre itself)."""
    d = [c - m for c, m in zip(coords, center, strict=True)]
    norm = np.sqrt(sum(di**2 for di in d)) + 1e-9
    return [di / norm for di in d]


def lobed_radius(
    rng: np.random.Generator, coords: list[np.ndarray], center: Sequence[float], irregularity: float
) -> np.ndarray:
    """A radius multiplier ``1 + irregularity * f(direction)`` with a smooth random lobed ``f`` in [-1, 1].

    Makes irregular (but star-shaped) lesion outlines in any dimension.
    """
    u = directions(coords, center)
    f = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)))
    for _ in range(3):
        w = rng.normal(size=len(coords))
        w *= rng.uniform(1.5, 3.0) / np.linalg.norm(w)
        f = f + np.sin(np.pi * sum(wi * ui for wi, ui in zip(w, u, strict=True)) + rng.uniform(0, 2 * np.pi))
    return 1.0 + irregularity * f / 3.0


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic in between (exactly 0/1 outside)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def inside(rho: np.ndarray, softness: float = 0.1) -> np.ndarray:
    """Soft indicator of ``rho < 1``: 1 well inside, exactly 0 at and beyond ``rho = 1``."""
    return 1.0 - smoothstep(1.0 - softness, 1.0, rho)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit standard deviation."""
    n = gaussian_filter(rng.normal(size=tuple(shape)), sigma=sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-12)


def bias_field(rng: np.random.Generator, coords: list[np.ndarray], amplitude: float) -> np.ndarray:
    """A smooth multiplicative field ``1 + linear + quadratic`` with peak deviation about ``amplitude``."""
    field = sum(rng.uniform(-1, 1) * c for c in coords) + sum(rng.uniform(-0.5, 0.5) * c**2 for c in coords)
    field = np.broadcast_to(field, np.broadcast_shapes(*(c.shape for c in coords)))
    peak = np.abs(field).max() + 1e-12
    return 1.0 + amplitude * field / peak


def corner_token(
    shape: Sequence[int], present: bool, size: float = 1.0, corner: str = "top-left"
) -> tuple[np.ndarray, np.ndarray]:
    """The confounding "hospital token": a label patch in a corner, bright square when present.

    The patch (intensity 0.5) is drawn in every image, so the token's absence is visible as a mid-grey
    patch rather than as zeros (relevance methods see nothing in an all-zero region).

    Args:
        shape: The image's shape.
        present: Draw the bright square.
        size: Factor on the patch's edge (``0.16`` of the image's edge, at least 4 pixels).
        corner: ``top-left`` (the first corner: index 0 along every axis), ``top-right``, ``bottom-left``
            or ``bottom-right`` (the last two axes; volumes keep the first slices).

    Returns:
        ``(value, region)``: intensities to paste and a boolean map of where to paste them.
    """
    length = shape[-1]
    edge, offset = max(4, round(length * 0.16 * size)), max(1, round(length * 0.03))
    edge = min(edge, min(shape) - offset)
    inner = max(2, round(edge * 0.6))
    region = np.zeros(tuple(shape), dtype=bool)
    value = np.zeros(tuple(shape))
    patch = tuple(slice(offset, offset + edge) for _ in shape)
    region[patch] = True
    value[patch] = 0.5
    if present:
        start = offset + (edge - inner) // 2
        value[tuple(slice(start, start + inner) for _ in shape)] = 1.2
    flip = [axis for axis, side in ((-2, "bottom"), (-1, "right")) if side in corner]
    if flip:
        region, value = np.flip(region, flip), np.flip(value, flip)
    return value, region
