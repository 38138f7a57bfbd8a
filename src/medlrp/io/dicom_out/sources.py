"""The source DICOM datasets of an input, in the order of the volume medlrp reads, on a regular grid.

A Parametric Map's frames must sit exactly where the source slices sit. :func:`read_dicom_sources`
returns the source headers sorted as :func:`medlrp.io.read_dicom_series` sorts the slices (so frame ``k``
of the relevance volume belongs to dataset ``k``) and refuses inputs whose slices do not form a regular
grid: mixed orientations, gantry tilt (slices shifted in their own plane), uneven slice spacing, mixed
pixel spacing, or no patient geometry at all. Such a series is never written with a guessed geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medlrp.errors import InputError
from medlrp.io.dicom import _frame_geometries, _read_dataset, _stack_geometry, scan_dicom_folder

# Relative tolerance on slice steps (as the reader's irregular-spacing flag) and on in-plane shifts.
_TOLERANCE = 1e-3


def read_dicom_sources(path: str | Path) -> list[Dataset]:
    """The source headers of a DICOM input, sorted like the slices of the volume medlrp reads from it.

    Args:
        path: A single-frame DICOM file or a folder holding one series of single-frame files.

    Returns:
        One dataset (without pixel data) per slice, in the volume's slice order.

    Raises:
        InputError: not DICOM, several series, a multi-frame file, or slices off a regular grid (one line
            naming the input and the reason).
    """
    source = Path(path)
    if source.is_dir():
        headers = scan_dicom_folder(source)
        if not headers:
            raise InputError(f"{source}: no DICOM images in this folder")
        datasets = [ds for _, ds in headers]
        if len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) > 1:
            raise InputError(f"{source}: holds several DICOM series; pass a folder with one series")
    else:
        datasets = [_read_dataset(source, header_only=True)]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"{source}: multi-frame DICOM is not supported by --dicom (pass single-frame files)")
    geometry = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    for ds in datasets:
        if any(keyword not in ds for keyword in geometry):
            raise InputError(
                f"{source}: no patient geometry (Image Position/Orientation, Pixel Spacing): "
                "a DICOM relevance map cannot be placed on it"
            )
        if "FrameOfReferenceUID" not in ds:
            raise InputError(f"{source}: no Frame of Reference UID: a DICOM relevance map cannot refer to it")
    if len(datasets) == 1:
        return datasets
    return _sorted_regular(datasets, source)


def _sorted_regular(datasets: list[Dataset], source: Path) -> list[Dataset]:
    """Sort as the reader does; refuse anything but evenly spaced, parallel, untilted slices."""
    geometries = [_frame_geometries(ds, 1)[0] for ds in datasets]
    order, _, _ = _stack_geometry(geometries, source)  # refuses mixed orientations, repeated positions
    geometries = [geometries[i] for i in order]
    if len({(int(ds.Rows), int(ds.Columns)) for ds in datasets}) > 1:
        raise InputError(f"{source}: slices of different sizes in one series")
    first = geometries[0]
    if any(not np.allclose(g.spacing, first.spacing, rtol=_TOLERANCE) for g in geometries):
        raise InputError(f"{source}: slices with different pixel spacing: not a regular grid")
    if len({str(ds.FrameOfReferenceUID) for ds in datasets}) > 1:
        raise InputError(f"{source}: slices in different frames of reference")
    steps = np.diff(np.stack([g.origin for g in geometries]), axis=0)  # type: ignore[misc]
    along = steps @ first.normal
    shift = np.linalg.norm(steps - along[:, None] * first.normal, axis=1)
    if np.any(shift > _TOLERANCE * np.abs(along)):
        raise InputError(
            f"{source}: slices shifted {float(shift.max()):.3g} mm in their own plane per slice "
            "(gantry tilt or a sheared stack): not a regular grid; resample the series first"
        )
    if np.ptp(along) > _TOLERANCE * abs(float(along.mean())):
        raise InputError(
            f"{source}: uneven slice spacing ({float(np.abs(along).min()):.4g} to "
            f"{float(np.abs(along).max()):.4g} mm): not a regular grid; resample the series first"
        )
    return [datasets[i] for i in order]
