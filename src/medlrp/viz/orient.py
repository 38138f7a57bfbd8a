"""Slices of a volume shown the way radiologists expect, whatever the array's axis order.

Each array axis is matched to the world axis (RAS) it runs along most. A slice shows the other two axes,
the more superior-inferior (then anterior-posterior) one vertically; both displayed axes run from high to
low world coordinate, so superior and anterior are at the top and the patient's right is on the left
(radiological convention).
"""

from __future__ import annotations

import numpy as np

_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


def world_axes(affine: np.ndarray) -> list[int]:
    """For each of the three array axes, the world axis (0=x, 1=y, 2=z) it follows; a permutation."""
    weights = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    assigned = [-1, -1, -1]
    # Greedy on the largest entries so oblique volumes still get a one-to-one assignment.
    for flat in np.argsort(weights, axis=None)[::-1]:
        world, array_axis = divmod(int(flat), 3)
        if assigned[array_axis] < 0 and world not in assigned:
            assigned[array_axis] = world
    return assigned


def slice_axis(affine: np.ndarray, plane: str = "axial") -> int:
    """The array axis to step through to see ``plane`` slices (``axial``, ``coronal`` or ``sagittal``)."""
    world = {v: k for k, v in _PLANES.items()}[plane]
    return world_axes(affine).index(world)


def plane_name(affine: np.ndarray, axis: int) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the plane seen when stepping through array ``axis``."""
    return _PLANES[world_axes(affine)[axis]]


def _layout(affine: np.ndarray, axis: int) -> tuple[int, int, bool, bool]:
    """(row axis, column axis, flip rows, flip columns) of the slices across ``axis``."""
    world = world_axes(affine)
    a, b = [i for i in range(3) if i != axis]
    # Vertical: superior-inferior if in plane, else anterior-posterior.
    rank = {2: 0, 1: 1, 0: 2}
    rows, cols = (a, b) if rank[world[a]] <= rank[world[b]] else (b, a)
    flip_rows = affine[world[rows], rows] > 0
    flip_cols = affine[world[cols], cols] > 0
    return rows, cols, bool(flip_rows), bool(flip_cols)


def _orient(plane: np.ndarray, rows: int, cols: int, axis: int, flips: tuple[bool, bool]) -> np.ndarray:
    # After taking the slice, the remaining axes keep their order; transpose when rows come after cols.
    out = plane if rows < cols else plane.T
    if flips[0]:
        out = out[::-1]
    if flips[1]:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def oriented_slice(volume: np.ndarray, affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` across array ``axis`` of a ``(D, H, W)`` volume, in display orientation."""
    rows, cols, flip_rows, flip_cols = _layout(affine, axis)
    return _orient(np.take(volume, index, axis=axis), rows, cols, axis, (flip_rows, flip_cols))


def oriented_mip(volume: np.ndarray, affine: np.ndarray, axis: int, signed: bool = False) -> np.ndarray:
    """Maximum intensity projection across ``axis``; ``signed`` keeps the value of largest ``|v|``."""
    if signed:
        pick = np.expand_dims(np.abs(volume).argmax(axis=axis), axis)
        projection = np.take_along_axis(volume, pick, axis=axis).squeeze(axis)
    else:
        projection = volume.max(axis=axis)
    rows, cols, flip_rows, flip_cols = _layout(affine, axis)
    return _orient(projection, rows, cols, axis, (flip_rows, flip_cols))


def display_spacing(spacing: tuple[float, ...], affine: np.ndarray, axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of the slices across ``axis`` (for the aspect ratio)."""
    rows, cols, _, _ = _layout(affine, axis)
    return spacing[rows], spacing[cols]
