"""Checks every image passes once read: finite values and a usable voxel-to-world matrix."""

from __future__ import annotations

import numpy as np

from medlrp.errors import InputError
from medlrp.io.image import Image

# A spatial matrix whose condition number exceeds this maps distinct voxels onto (nearly) one point.
_MAX_CONDITION = 1e8


def check_image(image: Image) -> Image:
    """Refuse an image with NaN or infinite values or a non-finite or singular affine; return it.

    A singular affine (all zeros, a zero voxel size, two axes in one direction) cannot place the voxels
    in space, and copying it into the relevance NIfTI would write a map no viewer aligns.

    Raises:
        InputError: one line naming the file and the problem.
    """
    source = image.source
    if not np.isfinite(image.array).all():
        bad = int(np.size(image.array) - np.count_nonzero(np.isfinite(image.array)))
        raise InputError(f"{source}: {bad} pixel value(s) are NaN or infinite")
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{source}: the voxel-to-world matrix (affine) is not a finite 4x4 matrix")
    spatial = affine[:3, :3]
    singular = np.linalg.svd(spatial, compute_uv=False)
    if singular[-1] <= 0 or singular[0] / singular[-1] > _MAX_CONDITION:
        raise InputError(
            f"{source}: singular voxel-to-world matrix (affine) {_rows(spatial)}: a zero voxel size or "
            "axes that coincide; the scan cannot be placed in space (fix its header)"
        )
    return image


def _rows(matrix: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:g}" for v in row) for row in matrix) + "]"
