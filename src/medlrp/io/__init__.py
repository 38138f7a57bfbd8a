"""Readers and writers: DICOM, NIfTI, PNG/JPEG; every reader returns an :class:`Image`."""

from __future__ import annotations

from pathlib import Path

from medlrp.errors import InputError
from medlrp.io.image import Image, atomic_path, write_atomic
from medlrp.io.nifti import read_nifti, write_nifti
from medlrp.io.png import read_png, write_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".dcm")


def is_image_file(path: Path) -> bool:
    """True for a file whose name has one of the suffixes medlrp reads."""
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES)


def read_image(path: str | Path) -> Image:
    """Read one input by its suffix: PNG/JPEG, NIfTI (and DICOM once its reader lands)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(p)
    if name.endswith((".png", ".jpg", ".jpeg")):
        return read_png(p)
    raise InputError(f"{p}: unsupported input (expected PNG, JPEG, NIfTI or DICOM)")


__all__ = [
    "IMAGE_SUFFIXES",
    "Image",
    "atomic_path",
    "is_image_file",
    "read_image",
    "read_nifti",
    "read_png",
    "write_atomic",
    "write_nifti",
    "write_png",
]
