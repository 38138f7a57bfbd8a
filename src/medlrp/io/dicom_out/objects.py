"""The two DICOM objects, built with highdicom: a Parametric Map and a Secondary Capture series.

Both copy the patient and study modules of their source datasets (pass de-identified copies from
:class:`~medlrp.io.dicom_out.Deidentifier` for de-identified outputs) and refer to the source instances:
the Parametric Map per frame (Derivation Image / Source Image Sequence) and in its Referenced Series
Sequence, each Secondary Capture instance in its Source Image Sequence and Referenced Series Sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

#: Series numbers of the outputs (high, so that viewers list them after the scan's own series).
MAP_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
_MANUFACTURER = "medlrp"


@dataclass(frozen=True)
class MapDescription:
    """What a relevance map is, written into its labels and descriptions.

    Attributes:
        method: The attribution method (``lrp``, ``gradcam``, ...).
        target: The explained class, by name (or index as text).
        composite: The LRP composite, when there is one.
    """

    method: str
    target: str
    composite: str | None = None

    @property
    def text(self) -> str:
        """One line, e.g. ``lrp (epsilon-plus-flat) relevance for class tumour`` (at most 64 chars)."""
        how = f"{self.method} ({self.composite})" if self.composite else self.method
        return f"{how} relevance for class {self.target}"[:64]


def parametric_map(
    relevance: np.ndarray,
    sources: Sequence[Dataset],
    description: MapDescription,
    *,
    series_instance_uid: str | None = None,
) -> Dataset:
    """A Parametric Map of ``relevance`` on the grid of ``sources`` (float32, one frame per slice).

    Args:
        relevance: ``(S, rows, columns)`` (or ``(rows, columns)`` for one slice), frame ``k`` on
            ``sources[k]``, the order of :func:`~medlrp.io.dicom_out.read_dicom_sources`.
        sources: The source headers (same Frame of Reference; their positions and orientation become the
            frames' plane positions and orientation).
        description: Method, composite and class, for the content label, description and value mapping.
        series_instance_uid: The map's series (default: a new UID).

    Returns:
        A ``highdicom.pm.ParametricMap`` (a pydicom dataset), not yet written. highdicom lists the frames
        by position along the slice normal (not necessarily in the order given); each frame carries its
        slice's values, Image Position and source reference, so a reader matches them by position.
    """
    import highdicom as hd

    frames = np.asarray(relevance, dtype=np.float32)
    frames = frames[None] if frames.ndim == 2 else frames
    _check_frames(frames, sources)
    low, high = float(frames.min()), float(frames.max())
    limit = max(abs(low), abs(high)) or 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="RELEVANCE",
        lut_explanation=description.text,
        unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
        value_range=(low, high) if high > low else (low, low + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=frames,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=MAP_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name="medlrp",
        software_versions=_version(),
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            # LINEAR_EXACT: the window is exactly [-max|R|, +max|R|], also when that is below 1
            hd.VOILUTTransformation(
                window_center=0.0,
                window_width=2.0 * limit,
                window_explanation="symmetric about zero",
                voi_lut_function="LINEAR_EXACT",
            )
        ],
        content_label=_label(description.method),
        content_description=description.text,
    )
    pm.SeriesDescription = f"medlrp {description.method} relevance"[:64]
    _add_laterality(pm, sources[0])
    return pm


def overlay_captures(
    frames: np.ndarray,
    sources: Sequence[Dataset],
    description: MapDescription,
    *,
    series_instance_uid: str | None = None,
) -> list[Dataset]:
    """One RGB Secondary Capture instance per slice (``frames[k]`` shows ``sources[k]``), one series.

    Args:
        frames: ``uint8 (S, H, W, 3)`` pictures (:func:`~medlrp.io.dicom_out.overlay_frames`).
        sources: The source headers, one per frame.
        description: What the pictures show (the series description).
        series_instance_uid: The series (default: a new UID).
    """
    import highdicom as hd

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (S, H, W, 3), not {frames.dtype} {frames.shape}")
    _check_frames(frames[..., 0], sources, check_size=False)
    series = series_instance_uid or generate_uid()
    captures = []
    for k, (frame, source) in enumerate(zip(frames, sources, strict=True)):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=frame,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series,
            series_number=OVERLAY_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=k + 1,
            manufacturer=_MANUFACTURER,
            patient_orientation=_patient_orientation(source),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        sc.copy_patient_and_study_information(source)  # the whole patient module, as the map has it
        sc.SeriesDescription = f"medlrp {description.method} overlay"[:64]
        sc.ImageComments = description.text
        sc.BurnedInAnnotation = "NO"  # the caption names the method and class, nobody
        sc.SourceImageSequence = DicomSequence([_reference(source)])
        sc.ReferencedSeriesSequence = DicomSequence([_series_reference(source)])
        _add_laterality(sc, source)
        captures.append(sc)
    return captures


def _check_frames(frames: np.ndarray, sources: Sequence[Dataset], check_size: bool = True) -> None:
    if len(frames) != len(sources):
        raise ValueError(f"{len(frames)} frames for {len(sources)} source slices")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if check_size and frames.shape[1:] != (rows, cols):
        raise ValueError(f"frames of {frames.shape[1:]} on source slices of {(rows, cols)}")


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _series_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = DicomSequence([_reference(source)])
    return item


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (row and column directions as L/R/A/P/H/F letters) from the source's cosines."""
    iop = [float(v) for v in source.ImageOrientationPatient]
    return _direction(iop[:3]), _direction(iop[3:])


def _direction(cosines: Sequence[float]) -> str:
    """The main letters of an LPS direction, strongest first (``L``, ``P``, ``H`` positive)."""
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    order = np.argsort([-abs(c) for c in cosines], kind="stable")
    text = "".join(letters[i][cosines[i] > 0] for i in order if abs(cosines[i]) > 1e-3)
    return text[:3] or "L"


def _add_laterality(ds: Dataset, source: Dataset) -> None:
    """General Series Laterality: the source's (type 2C; sent empty when the source has none)."""
    value = str(source.get("Laterality", "") or "")
    ds.Laterality = value if value in ("L", "R") else ""


def _label(method: str) -> str:
    """A Content Label (CS: capitals, digits, space, underscore; 16 chars) naming the method."""
    return re.sub(r"[^A-Z0-9_ ]", "_", method.upper())[:16] or "RELEVANCE"


def _version() -> str:
    import medlrp  # here, not at the top: medlrp imports medlrp.io while it starts

    return str(getattr(medlrp, "__version__", "0"))
