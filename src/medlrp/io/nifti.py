"""NIfTI reading and writing (nibabel); the affine travels with the array."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medlrp.errors import InputError
from medlrp.io.image import Image, atomic_path


def read_nifti(path: Path) -> Image:
    """Read a ``.nii``/``.nii.gz`` file; spatial axes keep the file's voxel order, the affine is kept.

    A 4D file is refused here (the caller picks a volume first); a trailing singleton axis is dropped.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: NIfTI with {data.ndim} dimensions {data.shape}; choose one volume first")
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = {"shape": list(data.shape), "zooms": [float(z) for z in img.header.get_zooms()[: data.ndim]]}
    return Image(array=data[None], affine=affine, source=path, kind="nifti", meta=meta)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (spatial axes only, or with a leading channel of 1) atomically as NIfTI."""
    data = np.asarray(array, dtype=np.float32)
    if data.ndim in (3, 4) and data.shape[0] == 1:
        data = data[0]
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
