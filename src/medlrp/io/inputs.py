"""From the paths a user types to the inputs medlrp explains (files and DICOM series folders)."""

from __future__ import annotations

from pathlib import Path

from medlrp.errors import InputError
from medlrp.io.dicom import is_dicom_file
from medlrp.io.formats import LISTED_SUFFIXES, MASK_SUFFIXES, strip_suffix

MASK_MARK = "_mask"


def stem(path: Path) -> str:
    """The file name without its image suffix (``a.nii.gz -> a``); a folder's name as is."""
    stripped = strip_suffix(path.name)
    if stripped is not None:
        return stripped
    return path.stem if path.is_file() else path.name


def is_mask_file(path: Path) -> bool:
    """True for ``<case>_mask.<ext>`` files (region masks, never inputs of their own)."""
    return stem(path).endswith(MASK_MARK)


def find_mask(item: Path) -> Path | None:
    """The mask beside an input (``<case>_mask.<ext>`` in the same folder), if there is one."""
    if not item.is_file():
        return None
    for suffix in MASK_SUFFIXES:
        candidate = item.with_name(stem(item) + MASK_MARK + suffix)
        if candidate.is_file():
            return candidate
    return None


def _is_image_name(path: Path) -> bool:
    return path.name.lower().endswith(LISTED_SUFFIXES)


def expand_input(path: str | Path) -> list[Path]:
    """The inputs behind one command-line path.

    A file is itself. A folder holding DICOM files is one series (the folder); image files beside them
    and sub-folders holding a DICOM series are inputs too. Mask files are left out.

    Raises:
        InputError: the path does not exist, or a folder holds nothing medlrp reads.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_file():
        return [p]
    items: list[Path] = []
    has_dicom = False
    for child in sorted(p.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if any(f.is_file() and is_dicom_file(f) for f in sorted(child.iterdir())):
                items.append(child)
        elif _is_image_name(child):
            if not is_mask_file(child):
                items.append(child)
        elif not has_dicom and is_dicom_file(child):
            has_dicom = True
    if has_dicom:
        items.insert(0, p)
    if not items:
        raise InputError(f"{p}: no images in this folder (DICOM, NIfTI, PNG, JPEG, WFDB .hea or .npy)")
    return items
