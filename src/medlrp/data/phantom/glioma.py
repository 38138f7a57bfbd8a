"""Brain-MRI-like glioma phantoms (2D slices, 3D volumes): low-grade vs high-grade tumours.

Anatomy: scalp (bright), skull (dark), cortex and white matter with smooth texture, two ventricles
(dark), a multiplicative bias field and Rician noise. Each case has one tumour:

* low-grade-like (class ``low_grade``): small, roundish, homogeneous, faintly hyperintense;
* high-grade-like (class ``high_grade``): larger, irregular outline, an enhancing rim around a dark
  necrotic core.

In volumes the tumours are 1.5 times larger (:data:`RADIUS_SCALE_3D`). Sizes, contrasts and rims
overlap between the classes on purpose, so the class is learnable but clearly
harder to read than the corner token of a confounded dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlrp.data.phantom import confounds, shapes
from medlrp.data.phantom.case import PhantomCase, rician, rngs
from medlrp.data.phantom.confounds import Confound

#: Class folder names; sorted order gives the labels (0: high_grade, 1: low_grade).
CLASSES = ("high_grade", "low_grade")
HIGH_GRADE, LOW_GRADE = 0, 1
#: Tumour radius factor for volumes: 3D phantoms default to a coarser grid (32^3 against 64x64), and a
#: rim around a necrotic core needs a few voxels to be drawn at all.
RADIUS_SCALE_3D = 1.5


def glioma_case(
    seed: Sequence[int],
    shape: Sequence[int],
    label: int,
    token: bool,
    with_lesion: bool = True,
    confound: Confound | None = None,
) -> PhantomCase:
    """Draw one glioma case.

    Args:
        seed: Integers seeding this case (the same seed gives the same case).
        shape: ``(H, W)`` or ``(D, H, W)``.
        label: ``HIGH_GRADE`` (0) or ``LOW_GRADE`` (1).
        token: Draw the confound (the shortcut).
        with_lesion: ``False`` draws the same case without its tumour (for tests).
        confound: Which shortcut ``token`` draws (``None``: the corner token); see
            :mod:`medlrp.data.phantom.confounds`.

    Returns:
        The case; ``mask`` is the tumour (every voxel the tumour changes), ``region`` the head.
    """
    r_anat, r_lesion, r_noise, r_confound = rngs(seed, 4)
    coords = shapes.grid(shape)
    image, brain, head = _anatomy(r_anat, coords, shape)
    lesion, value, meta = _tumour(r_lesion, coords, shape, label)
    lesion = lesion * brain  # a glioma grows in the brain, never into the skull
    if not with_lesion:
        lesion = np.zeros_like(lesion)
    image = image * (1.0 - lesion) + value * lesion
    image = image * shapes.bias_field(r_noise, coords, 0.15)
    tok, paste, area = confounds.draw(confound, shape, head, token, r_confound)
    image = np.where(paste, tok, image)
    image = rician(r_noise, image, sigma=0.04)
    return PhantomCase(
        image=image.astype(np.float32),
        mask=(lesion > 0).astype(np.uint8),
        label=label,
        token=token,
        lesion=lesion.astype(np.float32),
        meta=meta,
        region=head.astype(np.uint8),
        token_area=area,
    )


def _anatomy(
    rng: np.random.Generator, coords: list[np.ndarray], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scalp, skull, brain (cortex + white matter + texture) and ventricles, no noise.

    Returns:
        The image, the brain's soft opacity map (exactly 0 at the skull) and the head (inside the
        scalp's outline) as a boolean map.
    """
    dims = len(shape)
    radii = [0.78, 0.86, 0.72][-dims:]
    radii = [r * rng.uniform(0.94, 1.04) for r in radii]
    angle = rng.uniform(-0.15, 0.15)
    center = [rng.uniform(-0.03, 0.03) for _ in range(dims)]
    rho = shapes.radius_field(coords, center, radii, angle)
    sigma = max(1.0, shape[-1] / 32)
    image = np.zeros(tuple(shape))
    image = np.where(rho < 1.0, 0.85, image)  # scalp
    image = np.where(rho < 0.93, 0.12, image)  # skull
    brain = rho < 0.87
    texture = 0.04 * shapes.smooth_noise(rng, shape, sigma)
    tissue = np.where(rho < 0.72, 0.62, 0.45) + texture  # white matter inside cortex
    image = np.where(brain, tissue, image)
    for side in (-1.0, 1.0):
        vc = list(center)
        vc[-1] += side * rng.uniform(0.09, 0.13)
        vc[-2] += rng.uniform(-0.12, -0.04)
        vr = [0.28, 0.22, 0.07][-dims:]
        vr = [r * rng.uniform(0.8, 1.2) for r in vr]
        vent = shapes.inside(shapes.radius_field(coords, vc, vr, angle + side * 0.2), 0.3)
        image = image * (1 - vent) + 0.15 * vent
    return image, shapes.inside(rho / 0.87, 0.05), rho < 1.0


def _tumour(
    rng: np.random.Generator, coords: list[np.ndarray], shape: Sequence[int], label: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The tumour's opacity map, its intensities, and the drawn parameters."""
    dims = len(shape)
    direction = rng.normal(size=dims)
    direction /= np.linalg.norm(direction)
    # Volumes draw larger tumours (RADIUS_SCALE_3D); their centres stay nearer the middle.
    center = list(direction * (rng.uniform(0.25, 0.45) if dims == 2 else rng.uniform(0.15, 0.35)))
    high = label == HIGH_GRADE
    # The size ranges overlap: size alone does not give the class away.
    radius = rng.uniform(0.15, 0.27) if high else rng.uniform(0.11, 0.21)
    radius *= RADIUS_SCALE_3D if dims == 3 else 1.0
    irregularity = rng.uniform(0.12, 0.3) if high else rng.uniform(0.0, 0.12)
    outline = shapes.lobed_radius(rng, coords, center, irregularity)
    rho = shapes.radius_field(coords, center, [radius] * dims) / outline
    lesion = shapes.inside(rho, softness=0.35)
    sigma = max(0.7, shape[-1] / 64)
    texture = shapes.smooth_noise(rng, shape, sigma)
    if high:
        rim = rng.uniform(0.7, 1.0)
        core = rng.uniform(0.2, 0.4)
        thickness = rng.uniform(0.3, 0.5)
        ring = shapes.smoothstep(1.0 - thickness - 0.15, 1.0 - thickness, rho)
        value = core + (rim - core) * ring + 0.05 * texture
        meta = {"radius": radius, "irregularity": irregularity, "rim": rim, "core": core}
    else:
        level = rng.uniform(0.72, 0.85)
        value = level + 0.02 * texture
        meta = {"radius": radius, "irregularity": irregularity, "level": level}
    return lesion, value, meta
