"""Writing a phantom dataset: ``DIR/{train,val,test}/<class>/<case>.<ext>`` + masks + ``dataset.json``.

Deterministic by seed: every case is drawn from its own seed ``(seed, kind, dims, split, index)`` and
files are written with fixed encodings, so the same arguments give the same bytes. 2D cases are 16-bit
PNGs (masks 8-bit PNG, 0/255); 3D cases NIfTI ``.nii.gz`` (masks 0/1) with a millimetre affine.

Confounding (``confounded=True``): in the train and val splits the token (the confound: the corner
token by default, or another kind of :mod:`medlrp.data.phantom.confounds`) agrees with the token class
(``high_grade`` / ``opacity``) in 95% of the cases of each class (``agreement``: one rate, or one per
class; a case of the token class agrees when it carries the token, a case of the other class when it
does not); in the test split (and in every split of an unconfounded dataset) exactly half of each class
carries the token, independent of the class. The test split of a confounded and an unconfounded dataset
with the same seed and confound is identical, so their test accuracies compare on the same cases.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medlrp.data.phantom import chest, ecg, glioma
from medlrp.data.phantom.case import PhantomCase
from medlrp.data.phantom.confounds import Confound
from medlrp.errors import InputError
from medlrp.io import write_atomic, write_nifti, write_npy, write_png, write_wfdb

FORMAT = "medlrp-phantom"
KINDS: dict[str, tuple[Callable[..., PhantomCase], tuple[str, ...], int]] = {
    # kind -> (case generator, class names, index of the class the token goes with)
    "glioma": (glioma.glioma_case, glioma.CLASSES, glioma.HIGH_GRADE),
    "chest": (chest.chest_case, chest.CLASSES, chest.OPACITY),
    "ecg": (ecg.ecg_case, ecg.CLASSES, ecg.ST_ELEVATION),
}
#: Kinds that are signals (leads x samples, one time axis) rather than images.
SIGNAL_KINDS = ("ecg",)
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
#: Fraction of train/val cases whose token agrees with the class in a confounded dataset.
CONFOUND_AGREEMENT = 0.95
#: Millimetres covered by the field of view (3D affine).
FIELD_OF_VIEW_MM = {"glioma": 180.0, "chest": 360.0}
#: ``dataset.json``'s description of each confound (``token.where``).
CONFOUND_WHERE = {
    "corner-token": "label patch in a corner; bright square inside it when present",
    "border-marker": "brighter L or R on a bright plate at a random place on the border, outside the region",
    "digits": "four burned-in digits along an edge, outside the region",
    "ruler": "ruler-like stripe with tick marks along an edge, outside the region",
}
PNG_SCALE = 30000.0  # intensity 1.0 -> 30000 in the 16-bit PNG; the phantoms stay below ~2.1


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate (the arguments of ``medlrp phantom``).

    ``confound``, ``confound_size``, ``confound_position``: the shortcut
    (:class:`~medlrp.data.phantom.confounds.Confound`; images only). ``agreement``: the share of each
    class's train/val cases whose token agrees with the class in a confounded dataset, one rate for
    both classes or one per class (in class order).
    """

    kind: str = "glioma"
    dims: int = 2
    n: int = 400
    confounded: bool = False
    seed: int = 0
    size: int | None = None
    signal_format: str = "wfdb"
    confound: str = "corner-token"
    confound_size: float = 1.0
    confound_position: str | None = None
    agreement: tuple[float, ...] = (CONFOUND_AGREEMENT,)

    def checked(self) -> PhantomSpec:
        """Validate and fill the default size (64 for 2D, 32 for 3D, 1000 samples for signals)."""
        if self.kind not in KINDS:
            raise InputError(f"unknown phantom kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        self._check_agreement()
        if self.kind in SIGNAL_KINDS:
            if self.confound_spec() != Confound():
                raise InputError("--confound applies to image phantoms; the ECG's shortcut is a pacing spike")
            return self._checked_signal()
        confound = self.confound_spec().checked()
        if self.dims not in (2, 3):
            raise InputError(f"--dims must be 2 or 3, not {self.dims}")
        if self.n < 10:
            raise InputError(f"--n must be at least 10 (two cases per class in each split), not {self.n}")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative, not {self.seed}")
        size = self.size if self.size is not None else (64 if self.dims == 2 else 32)
        if not 16 <= size <= 512:
            raise InputError(f"--size must be between 16 and 512, not {size}")
        return replace(self, size=size, confound_position=confound.position)

    def confound_spec(self) -> Confound:
        """The confound to draw."""
        return Confound(self.confound, self.confound_size, self.confound_position)

    def agreement_of(self, label: int) -> float:
        """The agreement rate of class ``label``'s train/val cases (0.5 in an unconfounded dataset)."""
        if not self.confounded:
            return 0.5
        return self.agreement[label] if len(self.agreement) > 1 else self.agreement[0]

    def is_default_confound(self) -> bool:
        """The original corner token with the original agreement (``dataset.json`` stays as it was)."""
        confound = self.confound_spec().checked() if self.kind not in SIGNAL_KINDS else Confound()
        return confound == Confound().checked() and tuple(self.agreement) == (CONFOUND_AGREEMENT,)

    def _check_agreement(self) -> None:
        _, classes, _ = KINDS[self.kind]
        if len(self.agreement) not in (1, len(classes)):
            raise InputError(
                f"--agreement needs one rate or one per class ({', '.join(classes)}), "
                f"not {len(self.agreement)} values"
            )
        if not all(0.0 <= a <= 1.0 for a in self.agreement):
            raise InputError(f"--agreement rates must lie between 0 and 1, not {list(self.agreement)}")

    def _checked_signal(self) -> PhantomSpec:
        if self.n < 10:
            raise InputError(f"--n must be at least 10 (two cases per class in each split), not {self.n}")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative, not {self.seed}")
        size = self.size if self.size is not None else 1000
        if not 200 <= size <= 10000:
            raise InputError(f"--size (samples) must be between 200 and 10000, not {size}")
        if self.signal_format not in ("wfdb", "npy"):
            raise InputError(f"--format must be wfdb or npy, not {self.signal_format!r}")
        return replace(self, dims=1, size=size)


def split_sizes(n: int) -> dict[str, int]:
    """Cases per split (val and test 20% each, at least 2; train the rest)."""
    val = max(2, round(n * SPLIT_FRACTIONS["val"]))
    test = max(2, round(n * SPLIT_FRACTIONS["test"]))
    return {"train": n - val - test, "val": val, "test": test}


def token_plan(spec: PhantomSpec, split: str, labels: Sequence[int]) -> list[bool]:
    """Which cases of a split carry the token (see the module docstring)."""
    _, _, token_class = KINDS[spec.kind]
    split_idx = list(SPLIT_FRACTIONS).index(split)
    rng = np.random.default_rng([spec.seed, 7, spec.dims, split_idx])
    labels = np.asarray(labels)
    tokens = np.zeros(len(labels), dtype=bool)
    confounded = spec.confounded and split != "test"
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        order = rng.permutation(idx)
        if confounded:
            n_flip = round(len(idx) * (1.0 - spec.agreement_of(c)))
            base = c == token_class
            tokens[order] = base
            tokens[order[:n_flip]] = not base
        else:
            tokens[order[: len(idx) // 2]] = True
    return tokens.tolist()


def iter_cases(spec: PhantomSpec) -> Iterator[tuple[str, str, PhantomCase]]:
    """Yield ``(split, case id, case)`` for every case of the dataset, in a fixed order."""
    spec = spec.checked()
    for split, count in split_sizes(spec.n).items():
        for case_id, case in iter_split(spec, split, count):
            yield split, case_id, case


def iter_split(spec: PhantomSpec, split: str, count: int) -> Iterator[tuple[str, PhantomCase]]:
    """Yield ``(case id, case)`` for the first ``count`` cases of one split.

    Case ``i`` of a split is the same whatever ``count`` (its seed holds the split and ``i``); which
    cases carry the token is planned over the ``count`` cases. A benchmark may so draw a larger test
    split than ``spec.n`` gives (a more precise accuracy) from the same distribution.
    """
    spec = spec.checked()
    make, _, _ = KINDS[spec.kind]
    kind_idx = list(KINDS).index(spec.kind)
    split_idx = list(SPLIT_FRACTIONS).index(split)
    shape = (spec.size,) * spec.dims
    extra = {} if spec.kind in SIGNAL_KINDS else {"confound": spec.confound_spec()}
    labels = [i % 2 for i in range(count)]
    tokens = token_plan(spec, split, labels)
    for i in range(count):
        case = make([spec.seed, kind_idx, spec.dims, split_idx, i], shape, labels[i], tokens[i], **extra)
        yield f"{spec.kind}_{split}_{i:04d}", case


def write_case(folder: Path, case_id: str, case: PhantomCase, spec: PhantomSpec) -> Path:
    """Write one case and its mask into ``folder``; return the image path."""
    if spec.kind in SIGNAL_KINDS:
        write_npy(folder / f"{case_id}_mask.npy", case.mask)
        if spec.signal_format == "npy":
            return write_npy(folder / f"{case_id}.npy", case.image)
        return write_wfdb(folder / f"{case_id}.hea", case.image, fs=ecg.FS)
    if spec.dims == 2:
        image = np.clip(np.round(case.image.astype(np.float64) * PNG_SCALE), 0, 65535).astype(np.uint16)
        path = write_png(folder / f"{case_id}.png", image, bits=16)
        write_png(folder / f"{case_id}_mask.png", case.mask * 255, bits=8)
        return path
    affine = volume_affine(spec)
    path = write_nifti(folder / f"{case_id}.nii.gz", case.image, affine)
    write_nifti(folder / f"{case_id}_mask.nii.gz", case.mask.astype(np.float32), affine)
    return path


def volume_affine(spec: PhantomSpec) -> np.ndarray:
    """Voxel-to-world (RAS, mm) for the array axes ``(superior, posterior, right)`` of a 3D phantom."""
    size = spec.size or 32
    s = FIELD_OF_VIEW_MM[spec.kind] / size
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = s, -s, s, 1.0
    affine[:3, 3] = [-(size - 1) * s / 2, (size - 1) * s / 2, -(size - 1) * s / 2]
    return affine


def dataset_info(spec: PhantomSpec) -> dict[str, Any]:
    """The content of ``dataset.json``."""
    spec = spec.checked()
    _, classes, token_class = KINDS[spec.kind]
    info: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "kind": spec.kind,
        "dims": spec.dims,
        "size": [spec.size] * spec.dims,
        "classes": list(classes),
        "n": split_sizes(spec.n),
        "seed": spec.seed,
        "confounded": spec.confounded,
        "token": {
            "class": classes[token_class],
            "agreement_train_val": CONFOUND_AGREEMENT if spec.confounded else 0.5,
            "agreement_test": 0.5,
            "where": "label patch in the first corner; bright square inside it when present",
        },
        "image_format": "png16" if spec.dims == 2 else "nifti",
        "mask": "tumour" if spec.kind == "glioma" else "lung fields",
    }
    if spec.kind in SIGNAL_KINDS:
        info.update(
            image_format=spec.signal_format,
            size=[spec.size],
            fs=ecg.FS,
            leads=list(ecg.ECG_LEADS),
            mask="ST segments of V1-V3 (leads x samples)",
        )
        info["token"]["where"] = "pacing-spike-like artefact (every lead) between two beats, outside the mask"
    elif not spec.is_default_confound():
        info["token"].update(
            kind=spec.confound,
            size=spec.confound_size,
            position=spec.confound_position,
            where=CONFOUND_WHERE[spec.confound],
        )
    if tuple(spec.agreement) != (CONFOUND_AGREEMENT,):
        rates = [spec.agreement_of(c) for c in range(len(classes))]
        info["token"]["agreement_train_val"] = (
            rates[0] if len(set(rates)) == 1 else dict(zip(classes, rates, strict=True))
        )
    return info


def write_phantom(
    out: str | Path,
    spec: PhantomSpec,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate a phantom dataset into ``out``; return the ``dataset.json`` content.

    Args:
        out: Dataset folder (created; must be empty or a previous phantom with ``overwrite``).
        spec: What to generate.
        overwrite: Replace a phantom dataset already in ``out`` (only one with a ``dataset.json``).
        progress: Called as ``progress(done, total)`` after each case.

    Raises:
        InputError: Bad spec, or ``out`` holds other files.
    """
    spec = spec.checked()
    root = Path(out)
    prepare_output(root, overwrite)
    info = dataset_info(spec)
    _, classes, _ = KINDS[spec.kind]
    total = spec.n
    for done, (split, case_id, case) in enumerate(iter_cases(spec), start=1):
        write_case(root / split / classes[case.label], case_id, case, spec)
        if progress is not None:
            progress(done, total)
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    write_atomic(root / "dataset.json", lambda p: p.write_text(text))
    return info


def prepare_output(root: Path, overwrite: bool) -> None:
    """Make ``root`` an empty folder; with ``overwrite``, clear a phantom dataset already there.

    Raises:
        InputError: ``root`` is a file, holds other files, or holds a dataset and ``overwrite`` is off.
    """
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder")
    if not root.exists() or not any(root.iterdir()):
        root.mkdir(parents=True, exist_ok=True)
        return
    marker = root / "dataset.json"
    if not overwrite:
        raise InputError(f"{root}: folder is not empty (pass --overwrite to replace a phantom dataset)")
    if not marker.is_file() or FORMAT not in marker.read_text(errors="replace"):
        raise InputError(f"{root}: not a phantom dataset (no dataset.json); refusing to overwrite it")
    for split in SPLIT_FRACTIONS:
        shutil.rmtree(root / split, ignore_errors=True)
    marker.unlink()
