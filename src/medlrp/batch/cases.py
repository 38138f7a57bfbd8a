"""The case list of a batch run: every image of a dataset folder, sorted, with a unique id.

A case id is the case's path below the data folder without its image suffix, e.g. ``glioma/case_007``
or, for a folder holding ``train/val/test`` splits, ``test/glioma/case_007``. Ids name the outputs
(``OUT/<case id>.*``) and the index records, so they are unique and stable across runs and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medlrp.data.folder import SPLITS, case_stem, scan_cases
from medlrp.errors import InputError
from medlrp.io import is_image_file


@dataclass(frozen=True)
class BatchCase:
    """One case to explain.

    Attributes:
        case_id: Unique id (``<split>/<class>/<stem>`` or ``<class>/<stem>`` or ``<stem>``).
        image: The image file or DICOM series folder.
        mask: The ``<stem>_mask.<ext>`` file beside it, or ``None``.
        class_name: The class folder's name, or ``None`` for a flat folder.
    """

    case_id: str
    image: Path
    mask: Path | None
    class_name: str | None


def list_cases(root: str | Path) -> list[BatchCase]:
    """List every case under ``root``, sorted by case id.

    ``root`` is a dataset folder (``<class>/<case>.<ext>``), a folder whose sub-folders are the splits
    ``train``/``val``/``test`` (each a dataset folder), or a flat folder of images.

    Raises:
        InputError: ``root`` is missing or holds no images.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: data folder not found")
    subdirs = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs and set(subdirs) <= set(SPLITS):
        cases = [c for split in subdirs for c in _class_folder_cases(base / split, prefix=f"{split}/")]
    elif subdirs:
        cases = _class_folder_cases(base, prefix="")
    else:
        cases = _flat_cases(base)
    if not cases:
        raise InputError(f"{base}: no images found (expected {base}/<class name>/<case>.<ext>)")
    return sorted(cases, key=lambda c: c.case_id)


def _class_folder_cases(folder: Path, prefix: str) -> list[BatchCase]:
    classes, files = scan_cases(folder)
    return [
        BatchCase(
            case_id=f"{prefix}{classes[f.label]}/{f.case_id}",
            image=f.image,
            mask=f.mask,
            class_name=classes[f.label],
        )
        for f in files
    ]


def _flat_cases(folder: Path) -> list[BatchCase]:
    files = sorted(p for p in folder.iterdir() if is_image_file(p) and not p.name.startswith("."))
    masks = {case_stem(p)[: -len("_mask")]: p for p in files if case_stem(p).endswith("_mask")}
    return [
        BatchCase(case_id=case_stem(p), image=p, mask=masks.get(case_stem(p)), class_name=None)
        for p in files
        if not case_stem(p).endswith("_mask")
    ]


def shard(cases: list[BatchCase], rank: int, world_size: int) -> list[BatchCase]:
    """The cases of ``rank``: contiguous, near-equal slices of the sorted list (none twice, none missed).

    Contiguous shards keep each rank's outputs in few folders and make a rank's batches the same on
    every rerun with the same world size (which keeps resumed outputs bit-identical).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not in a world of {world_size} processes")
    n = len(cases)
    start = rank * n // world_size
    stop = (rank + 1) * n // world_size
    return cases[start:stop]
