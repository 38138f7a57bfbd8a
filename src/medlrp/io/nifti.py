"""NIfTI reading and writing (nibabel); the affine travels with the array."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from medlrp.errors import InputError
from medlrp.io.image import Image, atomic_path
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits


def read_nifti(path: Path, index: int | None = None, limits: ReadLimits = DEFAULT_LIMITS) -> Image:
    """Read a ``.nii``/``.nii.gz`` file; spatial axes keep the file's voxel order, the affine is kept.

    The shape and data type the header declares are checked before any voxel is decompressed.

    Args:
        path: The file.
        index: For a 4D file, which volume (0-based) to take; ignored for 2D/3D files.
        limits: Size limits (voxels of the volume read, bytes of the file and of its decompressed data).

    Raises:
        InputError: unreadable file, a 4D file without ``index`` (or with one out of range), more than
            four dimensions, complex or non-numeric voxels, a size beyond ``limits``.
    """
    limits.check_bytes(path)
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.header.get_data_shape())
        dtype = np.dtype(img.header.get_data_dtype())
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if dtype.kind == "c":
        raise InputError(
            f"{path}: complex voxels ({dtype}); medlrp reads real-valued images (take the magnitude first)"
        )
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: voxels of type {dtype} (e.g. RGB); medlrp reads one number per voxel")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise InputError(f"{path}: NIfTI with {len(shape)} dimensions {shape}; medlrp reads 2D to 4D")
    if len(shape) == 4:
        if index is None:
            raise InputError(f"{path}: 4D volume with {shape[3]} volumes; choose one with --index")
        if not -shape[3] <= index < shape[3]:
            raise InputError(f"{path}: --index {index} out of range for {shape[3]} volumes")
    spatial = shape[:3]
    limits.check_shape(path, spatial, volume=len([n for n in spatial if n > 1]) > 2)
    limits.check_bytes(path, math.prod(shape) * dtype.itemsize)  # what a .nii.gz decompresses to
    try:
        if len(shape) == 4:
            data = np.asarray(img.dataobj[..., index], dtype=np.float32).reshape(spatial)
        else:
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:  # truncated data, bad scaling
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: NIfTI with {data.ndim} dimensions {data.shape}; medlrp reads 2D to 4D")
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = {"shape": [1, *data.shape], "zooms": [float(z) for z in img.header.get_zooms()[: data.ndim]]}
    if index is not None and len(shape) == 4:
        meta["index"] = int(index)
    return Image(array=data[None], affine=affine, source=path, kind="nifti", meta=meta)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (spatial axes only, or with a leading channel of 1) atomically as NIfTI."""
    data = np.asarray(array, dtype=np.float32)
    if data.ndim in (3, 4) and data.shape[0] == 1:
        data = data[0]
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    # The header carries geometry only: no description or file names that could identify anyone.
    image.header["descrip"] = b"medlrp"
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
