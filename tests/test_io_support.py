"""Shared helpers for the io / report / explain-CLI tests: tiny models, checkpoints, DICOM writers.

Kept in a test_* module (no tests of its own) so that it sits with the files this area owns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medlrp
from medlrp.models import Preprocessing, save_checkpoint
from medlrp.registry import ARCHITECTURES

ARCH_2D = "_test_io_tiny2d"
ARCH_3D = "_test_io_tiny3d"

# Distinctive identifiers: no output byte may contain them.
SECRETS = {
    "PatientName": "Zyxwvut^Qwertina",
    "PatientID": "PIDX9183746",
    "PatientBirthDate": "19230517",
    "AccessionNumber": "ACCN5550917",
    "InstitutionName": "Hospital Of Kjellfrid",
}


class Tiny(torch.nn.Module):
    """conv -> relu -> global average pool -> linear, for 2D or 3D inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, dims: int = 2) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        pool = torch.nn.AdaptiveAvgPool2d if dims == 2 else torch.nn.AdaptiveAvgPool3d
        self.features = torch.nn.Sequential(conv(in_channels, 4, 3, padding=1), torch.nn.ReLU(), pool(1))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tiny2d(in_channels: int = 1, num_classes: int = 3) -> Tiny:
    return Tiny(in_channels, num_classes, 2)


def _tiny3d(in_channels: int = 1, num_classes: int = 3) -> Tiny:
    return Tiny(in_channels, num_classes, 3)


for _name, _factory in ((ARCH_2D, _tiny2d), (ARCH_3D, _tiny3d)):
    if _name not in ARCHITECTURES:
        ARCHITECTURES.add(_name, _factory)


def method() -> str:
    """The method the tests explain with: LRP once the engine is registered, else a gradient method."""
    for name in ("lrp", "input-x-gradient", "gradient"):
        if name in medlrp.METHODS:
            return name
    raise AssertionError("no explanation method is registered")


def make_checkpoint(path: Path, dims: int = 2, size: int = 16, seed: int = 0, window=None) -> Path:
    torch.manual_seed(seed)
    model = (_tiny2d if dims == 2 else _tiny3d)(1, 3)
    pre = Preprocessing(dims=dims, channels=1, size=[size] * dims, intensity="zscore", window=window)
    return save_checkpoint(
        path,
        model,
        ARCH_2D if dims == 2 else ARCH_3D,
        {"in_channels": 1, "num_classes": 3},
        pre,
        ["healthy", "tumour", "other"],
    )


def dicom_dataset(
    pixels: np.ndarray,
    *,
    position=(0.0, 0.0, 0.0),
    orientation=(1, 0, 0, 0, 1, 0),
    spacing=(0.8, 0.7),
    thickness=2.5,
    series_uid=None,
    slope=1.0,
    intercept=0.0,
    secrets: dict[str, str] | None = None,
) -> Dataset:
    """A CT slice dataset with stored ``pixels`` (uint16) and the given geometry."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    for key, value in (secrets or {}).items():
        setattr(ds, key, value)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    origin,
    orientation,
    spacing,
    step,
    shuffle_seed=0,
    slope=1.0,
    intercept=0.0,
    secrets=None,
) -> Path:
    """Write ``stored`` (slices, rows, cols) as one series, slice k at ``origin + k * step * normal``,
    with files named in a shuffled order so the reader must sort by position."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    uid = generate_uid()
    order = np.random.default_rng(shuffle_seed).permutation(len(stored))
    for file_no, k in enumerate(order):
        pos = np.asarray(origin, float) + k * step * normal
        ds = dicom_dataset(
            stored[k],
            position=pos,
            orientation=orientation,
            spacing=spacing,
            thickness=step,
            series_uid=uid,
            slope=slope,
            intercept=intercept,
            secrets=secrets,
        )
        ds.save_as(folder / f"IM{file_no:04d}.dcm", enforce_file_format=True)
    return folder


def read_dicom(path: Path) -> Dataset:
    return pydicom.dcmread(path)
