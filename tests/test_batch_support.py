"""Shared pieces of the batch tests (no tests here): a tiny dataset, a tiny checkpoint, a test method.

Run as a script it is ``medlrp`` with the test method registered, so subprocesses (plain or under
torchrun) can use ``test-batch-ixg``::

    python tests/test_batch_support.py batch --model ... --methods test-batch-ixg
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from medlrp.explanation import Explanation
from medlrp.io import write_png
from medlrp.models import Preprocessing, save_checkpoint
from medlrp.registry import ARCHITECTURES, METHODS
from medlrp.targets import resolve_target

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
PYTHON = sys.executable
SIZE = 32
TEST_METHOD = "test-batch-ixg"


def _input_x_gradient(
    model: torch.nn.Module, x: torch.Tensor, target: object = None, **options: object
) -> Explanation:
    """input * d logit / d input; sleeps MEDLRP_TEST_BATCH_DELAY s per call and logs each sample.

    The log (MEDLRP_TEST_BATCH_LOG) gets one line per explained sample: pid and a hash of its input,
    so a test can count how often each case was explained, over all processes.
    """
    delay = float(os.environ.get("MEDLRP_TEST_BATCH_DELAY", "0"))
    if delay:
        time.sleep(delay)
    log = os.environ.get("MEDLRP_TEST_BATCH_LOG")
    if log:
        lines = "".join(f"{os.getpid()} {input_hash(xi)}\n" for xi in x)
        with open(log, "a", encoding="utf-8") as f:
            f.write(lines)
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    t = resolve_target(target, out)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xg)
    return Explanation(xg.detach() * grad, out.detach(), t, TEST_METHOD, {})


def input_hash(x: torch.Tensor) -> str:
    """A short hash of one sample's input values."""
    return hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()[:16]


@contextmanager
def registered_test_method() -> Iterator[None]:
    """Register :data:`TEST_METHOD` for the block only (the registry drives other areas' tests)."""
    added = TEST_METHOD not in METHODS
    if added:
        METHODS.add(TEST_METHOD, _input_x_gradient)
    try:
        yield
    finally:
        if added:
            METHODS._items.pop(TEST_METHOD, None)


def make_dataset(root: Path, per_class: int, seed: int = 0) -> list[str]:
    """Write ``root/{a,b}/c<i>.png`` (16-bit, 32x32) with masks on even cases; return the case ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for cls in ("a", "b"):
        for i in range(per_class):
            img = rng.integers(0, 4000, size=(SIZE, SIZE)).astype(np.uint16)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            r, c = rng.integers(4, SIZE - 12, size=2)
            mask[r : r + 8, c : c + 8] = 255
            img[mask > 0] += 20000 if cls == "b" else 8000
            write_png(root / cls / f"c{i:02d}.png", img, bits=16)
            if i % 2 == 0:
                write_png(root / cls / f"c{i:02d}_mask.png", mask)
            ids.append(f"{cls}/c{i:02d}")
    return sorted(ids)


# Distinctive identifiers: no output byte may contain them (unless --keep-identifiers).
SECRETS = {
    "PatientName": "Qvistbergh^Ottilie",
    "PatientID": "PID-BATCH-77123",
    "PatientBirthDate": "19310214",
    "AccessionNumber": "ACC-BATCH-5521",
    "InstitutionName": "Klinik Zur Batchmuehle",
}


def write_dicom(path: Path, pixels: np.ndarray, z: float = 0.0, series: str | None = None) -> Path:
    """A CT slice with :data:`SECRETS` as its patient identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    for key, value in SECRETS.items():
        setattr(ds, key, value)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny random ``cnn2d`` checkpoint with classes a, b on a 32x32 grid."""
    torch.manual_seed(seed)
    kwargs = {"in_channels": 1, "num_classes": 2, "width": 4, "stages": 2}
    model = ARCHITECTURES.get("cnn2d")(**kwargs)
    pre = Preprocessing(dims=2, channels=1, size=[SIZE, SIZE], intensity="zscore")
    return save_checkpoint(path, model, "cnn2d", kwargs, pre, ["a", "b"])


def batch_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of ``medlrp batch`` with the test method, no progress bar."""
    return ["batch", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress", *extra]


def script_command(*args: str) -> list[str]:
    """``python tests/test_batch_support.py ARGS`` (medlrp with the test method registered)."""
    return [PYTHON, str(HERE), *args]


def run_script(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run :func:`script_command` and wait."""
    return subprocess.run(
        script_command(*args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_files(out: Path) -> dict[str, bytes]:
    """Every per-case file under ``out`` (not the index, manifest or errors) by relative path."""
    skip = {"index.jsonl", "errors.jsonl", "run.json"}
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def comparable(records: list[dict]) -> dict[str, dict]:
    """Records by case without what legitimately differs between runs (timing, rank)."""
    return {r["case"]: {k: v for k, v in r.items() if k not in ("timing", "rank")} for r in records}


if __name__ == "__main__":
    from medlrp.cli import main

    METHODS.add(TEST_METHOD, _input_x_gradient)
    sys.exit(main())
