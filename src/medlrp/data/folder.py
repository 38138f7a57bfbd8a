"""Folder datasets: ``DIR/<class name>/<case>.<ext>`` with optional ``<case>_mask.<ext>``.

The layout is DESIGN.md's; the phantom generator writes it under ``DIR/{train,val,test}/``::

    from medlrp.data import FolderDataset
    ds = FolderDataset("data", split="test", preprocessing=loaded.preprocessing)
    ds.classes                      # sorted class-folder names, e.g. ["high_grade", "low_grade"]
    x, label, mask, case_id = ds[0] # x: float32 (C, *size); label: int; mask: float32 (1, *size) or None
                                    # (signals: a mask (leads, samples) stays per lead)
    loader = DataLoader(ds, batch_size=16, collate_fn=collate_cases)
    batch = next(iter(loader))      # Batch(x, label, mask, has_mask, case_id)

API:
    * ``FolderDataset(root, split=None, preprocessing=None, classes=None, cache=False)``.
      ``root`` is a dataset folder; ``split`` (``"train"``, ``"val"``, ``"test"``) picks ``root/split``
      when it exists (see :func:`resolve_split`). ``classes`` fixes the class list (and so the labels),
      e.g. to the class names of a checkpoint; a class folder missing from this split is then allowed.
      ``preprocessing`` is a :class:`~medlrp.models.Preprocessing` (the model's, from its checkpoint);
      without it the dataset infers one from its first case (:meth:`FolderDataset.infer_preprocessing`).
    * ``ds[i] -> Case(x, label, mask, case_id)``; ``mask`` is ``None`` for a case without a mask file.
      Masks are resized to the model grid with nearest-neighbour interpolation and binarised (``> 0``).
    * ``ds.cases``: the :class:`CaseFile` list (image path, mask path or None, label, case id).
    * ``collate_cases(list[Case]) -> Batch``: stacks a batch; missing masks become zeros with
      ``has_mask`` False, so a loss can skip them.
    * ``ds.image(i) -> medlrp.io.Image``: the raw image (geometry kept), e.g. for writing aligned maps.

Cases are image files (PNG/JPEG/NIfTI/DICOM) or sub-folders (a DICOM series) inside a class folder;
files whose stem ends in ``_mask`` are masks, never cases. Bad input (no class folders, an empty class,
an unreadable file) raises :class:`~medlrp.errors.InputError` naming the folder or file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medlrp.errors import InputError
from medlrp.io import Image, read_image
from medlrp.io.formats import format_of, strip_suffix
from medlrp.models.preprocessing import Preprocessing

SPLITS = ("train", "val", "test")
MASK_SUFFIX = "_mask"


class Case(NamedTuple):
    """One item of a :class:`FolderDataset`."""

    x: torch.Tensor
    label: int
    mask: torch.Tensor | None
    case_id: str


class Batch(NamedTuple):
    """A collated batch (see :func:`collate_cases`)."""

    x: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    has_mask: torch.Tensor
    case_id: list[str]


@dataclass(frozen=True)
class CaseFile:
    """Where a case lives on disk."""

    image: Path
    mask: Path | None
    label: int
    case_id: str


def resolve_split(root: str | Path, split: str | None) -> Path:
    """Return the folder holding the class folders: ``root/split`` if it exists, else ``root``.

    Raises:
        InputError: ``root`` is not a folder, or ``split`` is not one of train/val/test.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: dataset folder not found")
    if split is None:
        return base
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return base / split if (base / split).is_dir() else base


def case_stem(path: Path) -> str:
    """File name without its image suffix (``a.nii.gz -> a``)."""
    stripped = strip_suffix(path.name)
    return path.name if stripped is None else stripped


def scan_cases(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[CaseFile]]:
    """List the classes and cases of one split folder (sorted, so labels are stable)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise InputError(f"{folder}: no class folders (expected {folder}/<class name>/<case>.<ext>)")
    cases: list[CaseFile] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        entries = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        masks = {case_stem(p)[: -len(MASK_SUFFIX)]: p for p in entries if case_stem(p).endswith(MASK_SUFFIX)}
        for p in entries:
            stem = case_stem(p)
            if stem.endswith(MASK_SUFFIX) or not (p.is_dir() or (p.is_file() and format_of(p) is not None)):
                continue
            cases.append(CaseFile(image=p, mask=masks.get(stem), label=label, case_id=stem))
    if not cases:
        raise InputError(f"{folder}: no image files in the class folders {classes}")
    return list(classes), cases


class FolderDataset(Dataset[Case]):
    """A classification dataset read from class folders (see the module docstring for the API)."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        preprocessing: Preprocessing | None = None,
        classes: list[str] | None = None,
        cache: bool = False,
    ) -> None:
        self.root = resolve_split(root, split)
        self.classes, self.cases = scan_cases(self.root, classes)
        self.preprocessing = preprocessing or self.infer_preprocessing()
        self._cache: dict[int, Case] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.cases[index]
        image = read_image(item.image)
        x = self.preprocessing(image.array, source=str(item.image))
        mask = self._read_mask(item.mask) if item.mask is not None else None
        case = Case(x=x, label=item.label, mask=mask, case_id=item.case_id)
        if self._cache is not None:
            self._cache[index] = case
        return case

    def image(self, index: int) -> Image:
        """The raw :class:`~medlrp.io.Image` of case ``index`` (its geometry, for aligned outputs)."""
        return read_image(self.cases[index].image)

    @property
    def labels(self) -> list[int]:
        """The label of every case, without reading any image."""
        return [c.label for c in self.cases]

    def infer_preprocessing(self) -> Preprocessing:
        """A preprocessing that keeps the first case's grid and channels and z-scores each image."""
        array = read_image(self.cases[0].image).array
        return Preprocessing(
            dims=array.ndim - 1, channels=int(array.shape[0]), size=[int(s) for s in array.shape[1:]]
        )

    def _read_mask(self, path: Path) -> torch.Tensor:
        array = read_image(path).array
        # a signal's mask may mark segments per lead ((leads, samples)); image masks take one channel
        per_lead = self.preprocessing.dims == 1 and len(array) == self.preprocessing.channels
        array = torch.as_tensor(array if per_lead else array[:1])
        size = tuple(self.preprocessing.size)
        if tuple(array.shape[1:]) != size:
            if array.ndim - 1 != len(size):
                raise InputError(f"{path}: mask is {array.ndim - 1}D but the images are {len(size)}D")
            array = F.interpolate(array[None], size=size, mode="nearest")[0]
        return (array > 0).to(torch.float32)


def collate_cases(cases: list[Case]) -> Batch:
    """Stack cases into a :class:`Batch`; a missing mask becomes zeros with ``has_mask`` False."""
    x = torch.stack([c.x for c in cases])
    spatial = x.shape[2:]
    channels = next((c.mask.shape[0] for c in cases if c.mask is not None), 1)
    masks = [c.mask if c.mask is not None else torch.zeros((channels, *spatial)) for c in cases]
    return Batch(
        x=x,
        label=torch.tensor([c.label for c in cases], dtype=torch.long),
        mask=torch.stack(masks),
        has_mask=torch.tensor([c.mask is not None for c in cases]),
        case_id=[c.case_id for c in cases],
    )
