"""Readers and writers: DICOM, NIfTI, PNG/JPEG; every reader returns an :class:`Image`."""

from __future__ import annotations

from pathlib import Path

from medlrp.errors import InputError
from medlrp.io.dicom import is_dicom_file, read_dicom_file, read_dicom_series
from medlrp.io.dicom_out import (
    Deidentifier,
    DicomFiles,
    DicomWriter,
    MapDescription,
    read_dicom_sources,
    write_dicom_explanation,
)
from medlrp.io.formats import FORMATS, IMAGE_SUFFIXES, SIGNAL_SUFFIXES, InputFormat, format_of
from medlrp.io.image import Image, atomic_path, atomic_paths, write_atomic
from medlrp.io.inputs import expand_input, find_mask, is_mask_file, stem
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits
from medlrp.io.nifti import read_nifti, write_nifti
from medlrp.io.png import read_png, write_png
from medlrp.io.resample import to_input_grid
from medlrp.io.signal import is_signal, read_npy, read_wfdb, write_npy, write_wfdb
from medlrp.io.validate import check_image
from medlrp.io.windowing import WINDOW_PRESETS, apply_window, display_range, window_preset


def is_image_file(path: Path) -> bool:
    """True for a file whose name has one of the suffixes medlrp reads."""
    return path.is_file() and format_of(path) is not None


def read_image(path: str | Path, index: int | None = None, limits: ReadLimits | None = None) -> Image:
    """Read one input: PNG/JPEG, NIfTI, a DICOM file, a folder holding one DICOM series, or a signal.

    Signals (``(leads, samples)``, see :mod:`medlrp.io.signal`): a WFDB record's header (``.hea``) or a
    NumPy ``.npy`` file (their files' bytes count against ``limits``).

    Every image is checked once read: sizes against ``limits`` from the header, before decoding; then
    finite values and a finite, invertible affine (:func:`medlrp.io.validate.check_image`).

    Args:
        path: The file or series folder.
        index: Which volume of a 4D NIfTI to take (ignored otherwise).
        limits: Size limits (default :data:`medlrp.io.limits.DEFAULT_LIMITS`).

    Raises:
        InputError: one line naming the file and the problem.
    """
    p = Path(path)
    lim = DEFAULT_LIMITS if limits is None else limits
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        return check_image(read_dicom_series(p, limits=lim))
    fmt = format_of(p)
    if fmt is not None:
        return check_image(fmt.reader(p, index, lim))
    if is_dicom_file(p):
        return check_image(read_dicom_file(p, lim))
    raise InputError(f"{p}: unsupported input (expected PNG, JPEG, NIfTI, DICOM, WFDB .hea or .npy)")


__all__ = [
    "DEFAULT_LIMITS",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "SIGNAL_SUFFIXES",
    "WINDOW_PRESETS",
    "Deidentifier",
    "DicomFiles",
    "DicomWriter",
    "Image",
    "InputFormat",
    "ReadLimits",
    "apply_window",
    "atomic_path",
    "atomic_paths",
    "check_image",
    "display_range",
    "expand_input",
    "find_mask",
    "format_of",
    "is_dicom_file",
    "is_image_file",
    "is_mask_file",
    "MapDescription",
    "is_signal",
    "read_dicom_file",
    "read_dicom_series",
    "read_dicom_sources",
    "read_image",
    "read_nifti",
    "read_npy",
    "read_png",
    "read_wfdb",
    "stem",
    "to_input_grid",
    "window_preset",
    "write_dicom_explanation",
    "write_atomic",
    "write_nifti",
    "write_npy",
    "write_png",
    "write_wfdb",
]
