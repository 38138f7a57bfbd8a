"""The input formats medlrp reads: one entry per format, the one list every suffix check derives from.

Each :class:`InputFormat` names its file suffixes, whether a folder listing (:func:`medlrp.io.expand_input`)
picks such files up one by one (DICOM files in a folder form one series, so they are not), whether a
mask may be stored in it (``<case>_mask.<ext>``), and its reader. :data:`FORMATS` is in mask-lookup
order: the first mask format found beside an input wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medlrp.io.dicom import read_dicom_file
from medlrp.io.image import Image
from medlrp.io.limits import ReadLimits
from medlrp.io.nifti import read_nifti
from medlrp.io.png import read_png
from medlrp.io.signal import read_npy, read_wfdb

#: ``reader(path, index, limits)``: ``index`` picks the volume of a 4D file where the format has several.
Reader = Callable[[Path, "int | None", ReadLimits], Image]


@dataclass(frozen=True)
class InputFormat:
    """One readable file format.

    Attributes:
        name: Short name (``"nifti"``).
        suffixes: Lower-case file name endings (``(".nii.gz", ".nii")``).
        listed: A folder listing takes each such file as an input of its own.
        mask: Region masks may be stored in this format.
        signal: The format holds signals (leads x samples), not images.
        reader: Reads one file (sizes checked against the limits).
    """

    name: str
    suffixes: tuple[str, ...]
    listed: bool
    mask: bool
    signal: bool
    reader: Reader


def _read_nifti(path: Path, index: int | None, limits: ReadLimits) -> Image:
    return read_nifti(path, index=index, limits=limits)


def _read_png(path: Path, index: int | None, limits: ReadLimits) -> Image:
    return read_png(path, limits)


def _read_npy(path: Path, index: int | None, limits: ReadLimits) -> Image:
    limits.check_bytes(path)
    return read_npy(path)


def _read_wfdb(path: Path, index: int | None, limits: ReadLimits) -> Image:
    if path.with_suffix(".dat").is_file():
        limits.check_bytes(path.with_suffix(".dat"))
    return read_wfdb(path)


def _read_dicom(path: Path, index: int | None, limits: ReadLimits) -> Image:
    return read_dicom_file(path, limits)


#: Every format medlrp reads, in mask-lookup order.
FORMATS: tuple[InputFormat, ...] = (
    InputFormat("png", (".png",), listed=True, mask=True, signal=False, reader=_read_png),
    InputFormat("nifti", (".nii.gz", ".nii"), listed=True, mask=True, signal=False, reader=_read_nifti),
    InputFormat("jpeg", (".jpg", ".jpeg"), listed=True, mask=True, signal=False, reader=_read_png),
    InputFormat("npy", (".npy",), listed=True, mask=True, signal=True, reader=_read_npy),
    InputFormat("wfdb", (".hea",), listed=True, mask=False, signal=True, reader=_read_wfdb),
    InputFormat("dicom", (".dcm",), listed=False, mask=True, signal=False, reader=_read_dicom),
)

#: Every suffix medlrp reads (DICOM files are recognised by content as well).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS for s in f.suffixes)
#: Suffixes a folder listing takes one file at a time (all but DICOM, whose files form a series).
LISTED_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS if f.listed for s in f.suffixes)
#: Suffixes a mask file may have, in lookup order.
MASK_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS if f.mask for s in f.suffixes)
#: Suffixes of signal formats.
SIGNAL_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS if f.signal for s in f.suffixes)


def format_of(path: Path) -> InputFormat | None:
    """The format whose suffix ends ``path``'s name (case-insensitive), if any."""
    name = path.name.lower()
    for f in FORMATS:
        if name.endswith(f.suffixes):
            return f
    return None


def strip_suffix(name: str) -> str | None:
    """``name`` without its format suffix (``a.nii.gz -> a``); None when no format's suffix ends it."""
    f = format_of(Path(name))
    if f is None:
        return None
    suffix = next(s for s in f.suffixes if name.lower().endswith(s))
    return name[: -len(suffix)]
