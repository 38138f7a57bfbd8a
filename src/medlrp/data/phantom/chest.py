"""Chest-X-ray-like phantoms: two lung fields with or without an opacity (the disease).

Anatomy: the torso (soft tissue), two dark lung fields cut by the diaphragm domes, the heart shadow and
the spine (bright), ribs crossing the lungs, an exposure (gain) variation and noise. Class ``opacity``
adds one or two fuzzy consolidations inside the lungs; class ``normal`` has none. The mask is the lung
fields (every opacity lies inside them). 3D gives a CT-like volume with the same structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlrp.data.phantom import confounds, shapes
from medlrp.data.phantom.case import PhantomCase, rngs
from medlrp.data.phantom.confounds import Confound

#: Class folder names; sorted order gives the labels (0: normal, 1: opacity).
CLASSES = ("normal", "opacity")
NORMAL, OPACITY = 0, 1


def chest_case(
    seed: Sequence[int],
    shape: Sequence[int],
    label: int,
    token: bool,
    with_lesion: bool = True,
    confound: Confound | None = None,
) -> PhantomCase:
    """Draw one chest case.

    Args:
        seed: Integers seeding this case (the same seed gives the same case).
        shape: ``(H, W)`` or ``(D, H, W)``.
        label: ``NORMAL`` (0) or ``OPACITY`` (1).
        token: Draw the confound (the shortcut).
        with_lesion: ``False`` draws the same case without its opacity (for tests).
        confound: Which shortcut ``token`` draws (``None``: the corner token); see
            :mod:`medlrp.data.phantom.confounds`.

    Returns:
        The case; ``mask`` is the lung fields, ``lesion`` the opacity (zero for normal cases).
    """
    r_anat, r_lesion, r_noise, r_confound = rngs(seed, 4)
    coords = shapes.grid(shape)
    image, lungs = _anatomy(r_anat, coords, shape)
    lesion = np.zeros(tuple(shape))
    meta: dict[str, float] = {"opacities": 0}
    if label == OPACITY and with_lesion:
        lesion, meta = _opacity(r_lesion, coords, shape, lungs)
    level = meta.get("level", 0.0)
    image = image * (1.0 - lesion) + (image + level) * lesion
    image = image * r_noise.uniform(0.9, 1.1)  # exposure
    tok, paste, area = confounds.draw(confound, shape, lungs > 0, token, r_confound)
    image = np.where(paste, tok, image)
    image = image + 0.03 * r_noise.normal(size=image.shape)
    return PhantomCase(
        image=image.astype(np.float32),
        mask=(lungs > 0).astype(np.uint8),
        label=label,
        token=token,
        lesion=lesion.astype(np.float32),
        meta=meta,
        region=(lungs > 0).astype(np.uint8),
        token_area=area,
    )


def _anatomy(
    rng: np.random.Generator, coords: list[np.ndarray], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Torso, lungs, heart, spine and ribs; returns the image and the lung-field opacity map."""
    dims = len(shape)
    y, x = coords[-2], coords[-1]
    body = shapes.inside(shapes.radius_field(coords, [0.0] * dims, [0.9, 1.0, 0.92][-dims:]), 0.1)
    image = 0.08 + 0.47 * body
    lungs = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)))
    for side in (-1.0, 1.0):
        center = [0.0] * dims
        center[-2] = rng.uniform(-0.12, -0.02)
        center[-1] = side * rng.uniform(0.34, 0.42)
        radii = [0.6, 0.58, 0.26][-dims:]
        radii = [r * rng.uniform(0.92, 1.08) for r in radii]
        lung = shapes.inside(shapes.radius_field(coords, center, radii, -side * 0.12), 0.15)
        dome = center[-2] + radii[-2] * rng.uniform(0.55, 0.75) - 0.25 * (x - center[-1]) ** 2 * 4
        lung = lung * (1.0 - shapes.smoothstep(dome - 0.08, dome, y))
        lungs = np.maximum(lungs, lung)
    heart_c = [0.0] * dims
    heart_c[-2], heart_c[-1] = rng.uniform(0.18, 0.28), rng.uniform(0.05, 0.12)
    heart = shapes.inside(shapes.radius_field(coords, heart_c, [0.3, 0.3, 0.27][-dims:]), 0.3)
    lungs = lungs * (1.0 - heart)
    spine = shapes.inside(np.abs(x) / 0.07 + 0 * y, 0.4) * body
    ribs_phase = rng.uniform(0, 2 * np.pi)
    ribs = shapes.smoothstep(0.55, 0.9, np.sin(np.pi * 4.5 * (y + 0.6 * x**2) + ribs_phase))
    texture = shapes.smooth_noise(rng, shape, max(0.7, shape[-1] / 64))
    lung_value = 0.2 + 0.04 * texture + 0.1 * ribs
    image = image * (1.0 - lungs) + lung_value * lungs
    image = np.maximum(image, 0.7 * heart * body)
    image = np.maximum(image, 0.8 * spine)
    return image, lungs


def _opacity(
    rng: np.random.Generator, coords: list[np.ndarray], shape: Sequence[int], lungs: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """One or two fuzzy consolidations, confined to the lung fields."""
    dims = len(shape)
    inner = np.argwhere(np.broadcast_to(lungs, tuple(shape)) > 0.9)
    count = int(rng.integers(1, 3))
    lesion = np.zeros(tuple(shape))
    for _ in range(count):
        pick = inner[rng.integers(len(inner))]
        center = [(p + 0.5) / s * 2.0 - 1.0 for p, s in zip(pick, shape, strict=True)]
        radius = rng.uniform(0.1, 0.2)
        outline = shapes.lobed_radius(rng, coords, center, 0.25)
        rho = shapes.radius_field(coords, center, [radius] * dims) / outline
        lesion = np.maximum(lesion, shapes.inside(rho, softness=0.6))
    # Confined to the lungs: the lung mask covers every voxel the opacity changes.
    lesion = lesion * np.broadcast_to(lungs, tuple(shape))
    level = rng.uniform(0.15, 0.3)
    return lesion, {"opacities": count, "level": level}
