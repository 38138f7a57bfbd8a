"""Signals (ECG and other multi-lead recordings): WFDB records (``.hea``/``.dat``) and NumPy ``.npy``.

A signal is an :class:`~medlrp.io.Image` with one spatial axis: ``array`` is ``float32 (leads, samples)``
and the affine's first column is the sampling interval in milliseconds, so ``image.spacing`` is
``(ms per sample,)``. ``meta`` holds ``signal: True``, ``fs`` (Hz, when known), ``leads`` (names) and
``units``. WFDB is the format of PhysioNet's ECG databases (PTB-XL); ``.npy`` holds ``(leads, samples)``
(or ``(samples,)`` for one lead).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medlrp.errors import InputError
from medlrp.io.image import Image, write_atomic

#: The standard 12-lead order.
ECG_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def is_signal(image: Image) -> bool:
    """Whether ``image`` is a signal (leads x samples) rather than a picture or a volume."""
    return bool(image.meta.get("signal")) or image.kind in ("wfdb", "npy")


def signal_affine(fs: float | None) -> np.ndarray:
    """A 4x4 affine whose first column is the sampling interval in milliseconds (1 when unknown)."""
    affine = np.eye(4)
    affine[0, 0] = 1000.0 / fs if fs else 1.0
    return affine


def _signal(path: Path, array: np.ndarray, kind: str, meta: dict[str, Any]) -> Image:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] < 2:
        raise InputError(f"{path}: a signal must be (leads, samples) or (samples,), not {tuple(array.shape)}")
    fs = meta.get("fs")
    leads = meta.get("leads") or (
        list(ECG_LEADS) if array.shape[0] == 12 else [str(i) for i in range(len(array))]
    )
    return Image(array, signal_affine(fs), path, kind, {**meta, "signal": True, "leads": list(leads)})


def read_npy(path: str | Path) -> Image:
    """Read a ``.npy`` signal ``(leads, samples)`` (or ``(samples,)``); no pickles are loaded."""
    p = Path(path)
    try:
        array = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{p}: not a readable NumPy array ({err})") from None
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{p}: a signal must hold real numbers, not {array.dtype}")
    return _signal(p, array, "npy", {})


def read_wfdb(path: str | Path) -> Image:
    """Read a WFDB record from its header ``NAME.hea`` (the signal file, e.g. ``NAME.dat``, beside it).

    Raises:
        InputError: one line naming the header and the problem (malformed header, missing signal file).
    """
    import wfdb

    p = Path(path)
    try:
        record = wfdb.rdrecord(str(p.with_suffix("")))
        signal = record.p_signal
    except Exception as err:  # wfdb raises ValueError, IndexError, FileNotFoundError ... on bad records
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(f"{p}: malformed WFDB record ({detail})") from None
    if signal is None or signal.ndim != 2:
        raise InputError(f"{p}: WFDB record without a signal")
    meta = {"fs": float(record.fs), "leads": list(record.sig_name), "units": list(record.units)}
    return _signal(p, signal.T, "wfdb", meta)


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically (temp name, then rename)."""
    return write_atomic(path, lambda tmp: np.save(tmp, np.asarray(array)))


def write_wfdb(
    path: str | Path, array: np.ndarray, fs: float, leads: list[str] | None = None, units: str = "mV"
) -> Path:
    """Write ``array (leads, samples)`` as a WFDB record ``NAME.hea`` + ``NAME.dat`` (16-bit).

    Both files are written in a temporary folder beside the target and renamed into place, the header
    last: a reader never sees a header without its complete signal file.
    """
    import wfdb

    p = Path(path)
    if p.suffix != ".hea":
        raise InputError(f"{p}: a WFDB record is written through its header name (NAME.hea)")
    array = np.asarray(array, dtype=np.float64)
    names = leads or (list(ECG_LEADS) if len(array) == 12 else [f"ch{i}" for i in range(len(array))])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.stem}.", dir=p.parent))
    try:
        wfdb.wrsamp(
            p.stem,
            fs=fs,
            units=[units] * len(array),
            sig_name=names,
            p_signal=array.T,
            fmt=["16"] * len(array),
            write_dir=str(tmp),
        )
        os.replace(tmp / f"{p.stem}.dat", p.with_suffix(".dat"))
        os.replace(tmp / f"{p.stem}.hea", p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p
