"""Writing a case's DICOM outputs beside its NIfTI ones: ``NAME.relevance.dcm`` and ``NAME.overlay/``.

``NAME.relevance.dcm`` is the Parametric Map (float32 relevance on the source grid), ``NAME.overlay/``
the Secondary Capture series (``0001.dcm``, ... one RGB picture per slice). Further methods get
``NAME.<method>.relevance.dcm`` and ``NAME.<method>.overlay/``, as the NIfTI files do. The map file is
written under a temporary name and renamed; the overlay series is written into a temporary folder that is
renamed into place whole, so no reader sees half a series.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io.dicom import _first_line
from medlrp.io.dicom_out.deidentify import Deidentifier
from medlrp.io.dicom_out.objects import MapDescription, overlay_captures, parametric_map
from medlrp.io.dicom_out.render import overlay_frames
from medlrp.io.dicom_out.sources import read_dicom_sources
from medlrp.io.image import Image, atomic_path
from medlrp.io.resample import to_input_grid
from medlrp.io.windowing import display_range

#: Name endings of the outputs (``NAME`` + these): the map file and the overlay series folder. An input
#: listing must skip them, as it skips the NIfTI and PNG outputs.
MAP_SUFFIX = ".relevance.dcm"
OVERLAY_SUFFIX = ".overlay"


@dataclass
class DicomFiles:
    """What :func:`write_dicom_explanation` wrote.

    Attributes:
        parametric_map: The Parametric Map file.
        overlay: The Secondary Capture series folder.
        overlay_files: Its instances, one per slice.
    """

    parametric_map: Path
    overlay: Path
    overlay_files: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file written."""
        return [self.parametric_map, *self.overlay_files]


def relevance_on_sources(relevance: np.ndarray | Explanation, sources: Sequence[Dataset]) -> np.ndarray:
    """``(S, rows, columns)`` relevance on the source grid.

    An :class:`~medlrp.explanation.Explanation` (sample 0, at the model's grid) is summed over its channels
    and resampled to the source grid with :func:`medlrp.io.to_input_grid` (total relevance kept); an array
    must already be on the source grid (``(S, rows, columns)`` or, for one slice, ``(rows, columns)``).
    """
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if isinstance(relevance, Explanation):
        summed = relevance.relevance[0].detach().double().sum(dim=0).cpu().numpy()
        target = shape if summed.ndim == 3 else shape[1:]
        relevance = to_input_grid(summed, target)
    array = np.asarray(relevance, dtype=np.float32)
    array = array[None] if array.ndim == 2 else array
    if array.shape != shape:
        raise ValueError(f"relevance of shape {array.shape} does not fit the source grid {shape}")
    return array


def write_dicom_explanation(
    out_dir: str | Path,
    name: str,
    relevance: np.ndarray | Explanation,
    sources: Sequence[Dataset],
    description: MapDescription,
    scan: np.ndarray,
    window: tuple[float, float],
    *,
    deidentifier: Deidentifier | None = None,
) -> DicomFiles:
    """Write the Parametric Map and the Secondary Capture series of one relevance map.

    Args:
        out_dir: Folder for ``NAME.relevance.dcm`` and ``NAME.overlay/``.
        name: File name stem (``NAME``; e.g. ``case`` or ``case.gradcam``).
        relevance: On the source grid (see :func:`relevance_on_sources`), or an Explanation.
        sources: The source headers in slice order (:func:`read_dicom_sources`).
        description: Method, composite and class.
        scan: The scan's intensities on the same grid (for the overlay pictures).
        window: ``(low, high)`` display limits of the scan.
        deidentifier: De-identify (PS3.15 Basic Profile) with this run's :class:`Deidentifier`; None keeps
            the source's patient and study (the outputs join the source study in new series).

    Returns:
        The files written.
    """
    frames_relevance = relevance_on_sources(relevance, sources)
    headers = [deidentifier.dataset(ds) for ds in sources] if deidentifier else list(sources)
    pm = parametric_map(frames_relevance, headers, description)
    scan = np.asarray(scan).reshape(frames_relevance.shape)
    pictures = overlay_frames(scan, frames_relevance, window, description.text)
    captures = overlay_captures(pictures, headers, description)
    out = Path(out_dir)
    map_path = out / f"{name}{MAP_SUFFIX}"
    with atomic_path(map_path) as tmp:
        pm.save_as(tmp, enforce_file_format=True)
    folder = out / f"{name}{OVERLAY_SUFFIX}"
    files = _write_series(folder, captures)
    return DicomFiles(map_path, folder, files)


def _write_series(folder: Path, datasets: Sequence[Dataset]) -> list[Path]:
    """Write ``0001.dcm``, ... into a temporary folder and rename it onto ``folder`` (replacing it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        names = [f"{k + 1:04d}.dcm" for k in range(len(datasets))]
        for file_name, ds in zip(names, datasets, strict=True):
            ds.save_as(tmp / file_name, enforce_file_format=True)
            os.chmod(tmp / file_name, 0o644)
        os.chmod(tmp, 0o755)
        if folder.exists():  # a rerun: move the old series aside first (a folder cannot be renamed over)
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part.old", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]


def scan_display(
    image: Image, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """The scan as shown: channels averaged, MONOCHROME1 mirrored, and its ``(low, high)`` limits.

    ``window`` (``(center, width)``) wins over the file's own window; without either, percentiles.
    """
    low, high = display_range(image, window)
    display = image.array.mean(axis=0)
    if image.meta.get("photometric") == "MONOCHROME1":  # bright means low values
        display = low + high - display
    return display, (low, high)


@dataclass
class DicomWriter:
    """Writes the DICOM outputs of the cases of one run (``--dicom``), de-identified unless told not to.

    One writer per run: its :class:`Deidentifier` keeps replaced UIDs consistent over the run's cases.

    Attributes:
        keep_identifiers: Outputs join the source study (patient and study modules, Study Instance UID
            and Frame of Reference kept; new series); otherwise de-identified.
        deidentifier: The run's de-identifier (made when not given).
    """

    keep_identifiers: bool = False
    deidentifier: Deidentifier = field(default_factory=Deidentifier)

    def sources(self, image: Image) -> list[Dataset] | None:
        """The source headers of a DICOM input in slice order; None for other inputs.

        Raises:
            InputError: a DICOM input off a regular grid, or one without patient geometry.
        """
        if image.kind != "dicom":
            return None
        sources = read_dicom_sources(image.source)
        expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
        spatial = tuple(image.array.shape[1:])
        if (spatial if len(spatial) == 3 else (1, *spatial)) != expected:
            raise InputError(f"{image.source}: slices read {spatial} do not match the series {expected}")
        return sources

    def write_case(
        self,
        out_dir: str | Path,
        record: dict[str, Any],
        image: Image,
        window: Sequence[float] | None,
        sources: list[Dataset] | None = None,
    ) -> dict[str, DicomFiles]:
        """Write the DICOM outputs of a case written by :func:`medlrp.pipeline.explain_case`.

        The relevance is read back from the case's NIfTI files, so the Parametric Map holds exactly their
        values. Adds ``dicom`` (file names) to each method's entry of ``record["outputs"]``.

        Args:
            out_dir: The case's output folder.
            record: The case record (its ``outputs`` name the NIfTI files).
            image: The case's input.
            window: ``(center, width)`` display window (None: the file's, else percentiles).
            sources: The input's headers from :meth:`sources`, when already read.

        Returns:
            Per method, the files written; empty for an input that is not DICOM.

        Raises:
            InputError: the input is off a regular grid, or its headers do not make a valid object.
        """
        sources = sources if sources is not None else self.sources(image)
        if sources is None:
            return {}
        out = Path(out_dir)
        scan, limits = scan_display(image, None if window is None else (float(window[0]), float(window[1])))
        try:
            return self._write_methods(out, record, sources, scan, limits)
        except (ValueError, AttributeError, KeyError) as exc:  # highdicom's checks of the source headers
            raise InputError(f"{image.source}: cannot write DICOM outputs: {_first_line(exc)}") from None

    def _write_methods(
        self,
        out: Path,
        record: dict[str, Any],
        sources: list[Dataset],
        scan: np.ndarray,
        limits: tuple[float, float],
    ) -> dict[str, DicomFiles]:
        import nibabel as nib

        written: dict[str, DicomFiles] = {}
        for method, entry in record["outputs"].items():
            relevance = np.asarray(nib.load(out / entry["relevance"]).dataobj, dtype=np.float32)
            description = MapDescription(method, str(record.get("target_name", record.get("target"))))
            if method == "lrp":
                composite = entry.get("options", {}).get("composite") or record["options"].get("composite")
                description = replace(description, composite=composite)
            stem = entry["relevance"].removesuffix(".relevance.nii.gz")
            files = write_dicom_explanation(
                out,
                stem,
                relevance,
                sources,
                description,
                scan,
                limits,
                deidentifier=None if self.keep_identifiers else self.deidentifier,
            )
            entry["dicom"] = {"parametric_map": files.parametric_map.name, "overlay": files.overlay.name}
            written[method] = files
        return written
