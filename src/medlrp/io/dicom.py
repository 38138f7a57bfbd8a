"""DICOM reading (pydicom): single files, multi-frame files and series folders, with their geometry.

Array layout: a single-frame file gives ``(C, rows, columns)``; a multi-frame file or a series gives
``(C, slices, rows, columns)`` with slices sorted by their position along the slice normal (the
``ImagePositionPatient`` projected on ``row cosine x column cosine``). The affine maps these array
indices to world millimetres in RAS+ (DICOM's LPS with x and y negated), so a NIfTI written with it sits
where the series sits.

Pixel values are stored values times ``RescaleSlope`` plus ``RescaleIntercept`` (Hounsfield units for CT),
per frame where the file says so. Patient identifiers go to :attr:`Image.identifiers`, never to ``meta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

from medlrp.errors import InputError
from medlrp.io.image import Image
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits

#: DICOM keywords that identify a patient, a study or the people and places involved. Kept out of every
#: output unless the user passes ``--keep-identifiers``.
IDENTIFIER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)

# DICOM patient coordinates are LPS+; NIfTI and medlrp affines are RAS+.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Relative tolerance on slice steps before a series counts as irregularly spaced.
_STEP_TOLERANCE = 1e-3


@dataclass
class _Geometry:
    """Where the pixels of one frame sit: orientation, in-plane spacing and the frame's origin (LPS)."""

    row_cos: np.ndarray  # direction of increasing column index
    col_cos: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) in mm
    origin: np.ndarray | None  # ImagePositionPatient of the first pixel; None when the file has none
    thickness: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cos, self.col_cos)


def identifiers_of(ds: Dataset) -> dict[str, str]:
    """The identifying attributes present (and non-empty) in ``ds``, as strings."""
    found: dict[str, str] = {}
    for keyword in IDENTIFIER_KEYWORDS:
        value = ds.get(keyword)
        if value is not None and str(value).strip():
            found[keyword] = str(value)
    return found


def read_dicom_file(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Image:
    """Read one DICOM file: a 2D image, or a volume if it holds several frames.

    The file's size and the rows x columns x frames its header declares are checked against ``limits``
    before the pixel data is decoded.
    """
    limits.check_bytes(path)
    ds = _read_dataset(path)
    _check_declared_size(ds, path, limits, int(ds.get("NumberOfFrames", 1) or 1))
    frames = _decode(ds, path)
    geometries = _frame_geometries(ds, len(frames))
    slope, intercept = _frame_slopes(ds, len(frames), frames.ndim, path)
    frames = frames * slope + intercept
    if len(frames) == 1:
        return _image_2d(frames[0], geometries[0], ds, path)
    order, affine, irregular = _stack_geometry(geometries, path)
    image = _image_3d(frames[order], affine, ds, path, irregular)
    if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        image.meta["geometry"] = "none"  # frames stacked at a nominal spacing (cine loops, screenshots)
    return image


def read_dicom_series(
    folder: Path, files: Sequence[Path] | None = None, limits: ReadLimits = DEFAULT_LIMITS
) -> Image:
    """Read the one DICOM series in ``folder`` into a volume sorted by slice position.

    Raises:
        InputError: no DICOM image in the folder, several series, slices that do not fit together, a
            series beyond ``limits`` (checked from the headers, before any pixel data is read).
    """
    headers = scan_dicom_folder(folder) if files is None else [(p, _read_dataset(p, True)) for p in files]
    if not headers:
        raise InputError(f"{folder}: no DICOM images in this folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(f"{folder}: holds {len(series)} DICOM series; pass a folder with one series")
    if len(headers) == 1:
        return read_dicom_file(headers[0][0], limits)
    limits.check_bytes(folder, sum(p.stat().st_size for p, _ in headers))
    _check_declared_size(headers[0][1], folder, limits, len(headers))
    datasets = [(p, _read_dataset(p)) for p, _ in headers]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in datasets):
        raise InputError(f"{folder}: mixes multi-frame files with other files; pass one file at a time")
    shapes = {(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))) for _, ds in datasets}
    if len(shapes) > 1:
        raise InputError(f"{folder}: slices of different sizes {sorted(shapes)} in one series")
    slices, geometries = [], []
    for p, ds in datasets:
        frame = _decode(ds, p)
        slope, intercept = _frame_slopes(ds, 1, frame.ndim, p)
        slices.append(frame[0] * slope[0] + intercept[0])
        geometries.append(_frame_geometries(ds, 1)[0])
    order, affine, irregular = _stack_geometry(geometries, folder)
    volume = np.stack(slices)[order]
    return _image_3d(volume, affine, datasets[0][1], folder, irregular, n_files=len(datasets))


def scan_dicom_folder(folder: Path) -> list[tuple[Path, Dataset]]:
    """Headers of the DICOM image files directly inside ``folder`` (other files are ignored)."""
    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        ds = _try_header(p)
        if ds is not None and "Rows" in ds:
            found.append((p, ds))
    return found


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a file with a DICOM preamble (or a ``.dcm`` name) holding an image."""
    ds = _try_header(path)
    return ds is not None and "Rows" in ds


def _try_header(path: Path) -> Dataset | None:
    try:
        force = path.suffix.lower() == ".dcm"
        return pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except Exception:  # a probe: any file pydicom chokes on is simply not a DICOM image here
        return None


def _read_dataset(path: Path, header_only: bool = False) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(
            f"{path}: cannot read DICOM (truncated or damaged file: {_first_line(exc)})"
        ) from None
    if "Rows" not in ds and "PixelData" not in ds:
        raise InputError(f"{path}: not a DICOM image (no pixel data)")
    return ds


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """Pixel data as ``float64 (frames, rows, columns)`` or ``(frames, samples, rows, columns)``."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{path}: DICOM without pixel data")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed and not _decoder_available(syntax):
        raise InputError(
            f"{path}: compressed DICOM ({syntax.name}) and no decoder for it is installed "
            "(install pylibjpeg with its plugins or python-gdcm, or decompress the file first)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    try:
        raw = ds.pixel_array
        if photometric == "PALETTE COLOR":  # stored values index a colour table: look the colours up
            raw = apply_color_lut(raw, ds)
        pixels = np.asarray(raw, dtype=np.float64)
    except Exception as exc:  # truncated pixel data, bad lengths, decoder failures, broken colour tables
        raise InputError(
            f"{path}: cannot decode DICOM pixel data (truncated or damaged file: {_first_line(exc)})"
        ) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = 3 if photometric == "PALETTE COLOR" else int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        pixels = pixels[None]
    if samples > 1:
        pixels = np.moveaxis(pixels, -1, 1)  # (frames, samples, rows, columns): channels first
    if not np.isfinite(pixels).all():
        raise InputError(f"{path}: contains NaN or infinite values")
    return pixels


def _decoder_available(syntax: pydicom.uid.UID) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (ImportError, NotImplementedError, ValueError):
        return False


def _check_declared_size(ds: Dataset, source: Path, limits: ReadLimits, frames: int) -> None:
    """Refuse, from the header alone, an image whose rows x columns x frames x samples exceed ``limits``."""
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise InputError(f"{source}: unreadable Rows/Columns/SamplesPerPixel in the DICOM header") from None
    shape = (frames, rows, columns, samples) if frames > 1 else (rows, columns, samples)
    limits.check_shape(source, shape, volume=frames > 1)


def _frame_slopes(ds: Dataset, n: int, ndim: int, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rescale slope and intercept, shaped to broadcast against the frames.

    Raises:
        InputError: a slope of zero (every pixel would map to the intercept) or a non-finite slope or
            intercept.
    """
    slope = np.full(n, _float(ds.get("RescaleSlope"), 1.0))
    intercept = np.full(n, _float(ds.get("RescaleIntercept"), 0.0))
    if "DoseGridScaling" in ds:  # RT dose grids store doses scaled by this factor
        slope *= _float(ds.get("DoseGridScaling"), 1.0)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    transform = _first_item(shared, "PixelValueTransformationSequence")
    if transform is not None:
        slope[:] = _float(transform.get("RescaleSlope"), 1.0)
        intercept[:] = _float(transform.get("RescaleIntercept"), 0.0)
    for i, item in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])[:n]):
        transform = _first_item(item, "PixelValueTransformationSequence")
        if transform is not None:
            slope[i] = _float(transform.get("RescaleSlope"), 1.0)
            intercept[i] = _float(transform.get("RescaleIntercept"), 0.0)
    if not (np.isfinite(slope).all() and np.isfinite(intercept).all()):
        raise InputError(f"{source}: non-finite RescaleSlope or RescaleIntercept in the DICOM header")
    if np.any(slope == 0):
        raise InputError(
            f"{source}: RescaleSlope is 0 (every pixel would read as the intercept); the header is damaged"
        )
    shape = (n,) + (1,) * (ndim - 1)
    return slope.reshape(shape), intercept.reshape(shape)


def _frame_geometries(ds: Dataset, n: int) -> list[_Geometry]:
    """The geometry of each frame: enhanced multi-frame groups, RT dose offsets, or the plain tags."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    base = _geometry_from(ds, shared, None)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) >= n:  # enhanced multi-frame: one functional group per frame
        return [_geometry_from(ds, shared, item, fallback=base) for item in per_frame[:n]]
    if n == 1:
        return [base]
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and base.origin is not None and len(offsets) == n:
        steps = [float(o) for o in offsets]
    else:  # old-style multi-frame: frames stacked along the normal at the slice spacing
        step = _float(ds.get("SpacingBetweenSlices"), base.thickness)
        steps = [i * step for i in range(n)]
    origin = base.origin if base.origin is not None else np.zeros(3)
    return [
        _Geometry(base.row_cos, base.col_cos, base.spacing, origin + s * base.normal, base.thickness)
        for s in steps
    ]


def _geometry_from(
    ds: Dataset, shared: Dataset | None, frame: Dataset | None, fallback: _Geometry | None = None
) -> _Geometry:
    """Read orientation, spacing and position from a frame's groups, the shared groups, then the top level."""

    def find(sequence: str, keyword: str) -> Any:
        for source in (frame, shared):
            item = _first_item(source, sequence)
            if item is not None and keyword in item:
                return item.get(keyword)
        return ds.get(keyword)

    iop = find("PlaneOrientationSequence", "ImageOrientationPatient")
    ipp = find("PlanePositionSequence", "ImagePositionPatient")
    spacing = find("PixelMeasuresSequence", "PixelSpacing") or ds.get("ImagerPixelSpacing")
    thickness = find("PixelMeasuresSequence", "SliceThickness")
    if iop is not None and len(iop) == 6:
        row_cos, col_cos = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    elif fallback is not None:
        row_cos, col_cos = fallback.row_cos, fallback.col_cos
    else:  # no orientation: rows along y, columns along x of the patient frame (a plain 2D picture)
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    if spacing is not None and len(spacing) == 2:
        pixel = (_float(spacing[0], 1.0), _float(spacing[1], 1.0))
    else:
        pixel = fallback.spacing if fallback is not None else (1.0, 1.0)
    origin = np.array(ipp, dtype=float) if ipp is not None and len(ipp) == 3 else None
    if origin is None and fallback is not None:
        origin = fallback.origin
    thick = _float(thickness, fallback.thickness if fallback is not None else 1.0)
    return _Geometry(row_cos, col_cos, pixel, origin, thick if thick > 0 else 1.0)


def _stack_geometry(geometries: list[_Geometry], source: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sort frames by position along the normal; return the order, the RAS affine and irregularity."""
    first = geometries[0]
    for g in geometries[1:]:
        if not (
            np.allclose(g.row_cos, first.row_cos, atol=1e-4)
            and np.allclose(g.col_cos, first.col_cos, atol=1e-4)
        ):
            raise InputError(f"{source}: slices with different orientations in one series")
    if any(g.origin is None for g in geometries):
        order = np.arange(len(geometries))
        positions = np.stack([i * first.thickness * first.normal for i in order])
    else:
        positions = np.stack([g.origin for g in geometries])  # type: ignore[misc]
        order = np.argsort(positions @ first.normal, kind="stable")
        positions = positions[order]
    distance = positions @ first.normal
    steps = np.diff(distance)
    if np.any(np.abs(steps) < 1e-6):
        raise InputError(
            f"{source}: several slices at the same position (a 4D, multi-echo or repeated series?); "
            "pass one volume"
        )
    mean_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    irregular = bool(np.ptp(steps) > _STEP_TOLERANCE * max(abs(float(np.mean(steps))), 1e-6))
    affine = np.eye(4)
    affine[:3, 0] = mean_step
    affine[:3, 1] = first.col_cos * first.spacing[0]
    affine[:3, 2] = first.row_cos * first.spacing[1]
    affine[:3, 3] = positions[0]
    return order, _LPS_TO_RAS @ affine, irregular


def _image_2d(pixels: np.ndarray, geometry: _Geometry, ds: Dataset, path: Path) -> Image:
    affine = np.eye(4)
    affine[:3, 0] = geometry.col_cos * geometry.spacing[0]
    affine[:3, 1] = geometry.row_cos * geometry.spacing[1]
    affine[:3, 2] = geometry.normal * geometry.thickness
    affine[:3, 3] = geometry.origin if geometry.origin is not None else 0.0
    array = pixels if pixels.ndim == 3 else pixels[None]
    meta = _meta(ds, array.shape, geometry.origin is not None)
    return Image(
        np.ascontiguousarray(array, dtype=np.float32),
        _LPS_TO_RAS @ affine,
        path,
        "dicom",
        meta,
        identifiers_of(ds),
    )


def _image_3d(
    volume: np.ndarray, affine: np.ndarray, ds: Dataset, source: Path, irregular: bool, n_files: int = 1
) -> Image:
    # (slices, rows, cols) or (slices, samples, rows, cols) -> channels first
    array = volume[None] if volume.ndim == 3 else np.moveaxis(volume, 1, 0)
    meta = _meta(ds, array.shape, True)
    meta.update(files=n_files, irregular_spacing=irregular)
    return Image(
        np.ascontiguousarray(array, dtype=np.float32), affine, source, "dicom", meta, identifiers_of(ds)
    )


def _meta(ds: Dataset, shape: tuple[int, ...], has_position: bool) -> dict[str, Any]:
    """Non-identifying facts about the image, safe to write into results and reports."""
    meta: dict[str, Any] = {
        "shape": list(shape),
        "modality": str(ds.get("Modality", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "geometry": "patient" if has_position else "none",
    }
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        meta["window"] = [_float(_first(center), 0.0), _float(_first(width), 1.0)]
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["transfer_syntax"] = syntax.name
    return meta


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _float(value: Any, default: float) -> float:
    try:
        return float(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
