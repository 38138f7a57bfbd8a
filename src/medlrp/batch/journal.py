"""The run's index: JSON Lines that survive SIGKILL at any moment.

Layout in the output folder::

    index.jsonl    one record per finished case (sorted by case id once a run ends)
    errors.jsonl   one record per failed case: {"case", "source", "reason"}
    .parts/        while a run is going: index-rank<R>.jsonl, errors-rank<R>.jsonl (appended per case)

A record is appended as one complete line (records finished together: their lines) with a single
``write`` followed by ``fsync``, only after the case's files are in place, so a case listed in the index
is complete. A line torn by a crash (no final newline, or not JSON) is ignored when read and dropped by
:func:`consolidate`, which folds the parts of earlier runs (any number of ranks) into
``index.jsonl``/``errors.jsonl`` at the start and end of a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from medlrp.io.image import atomic_path

INDEX = "index.jsonl"
ERRORS = "errors.jsonl"
PARTS = ".parts"

# Temporaries of medlrp.io.atomic_path: ".<final name>.<random>.part<suffixes>".
_TEMPORARY = re.compile(r"^\..+\.part(\.[^/]*)?$")


class Journal:
    """An append-only JSON Lines file; each :meth:`append` is durable when it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and fsync it."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Write ``records``, one line each, with one ``write`` and one ``fsync`` (a group commit).

        A crash may keep any prefix of the lines (the last one perhaps torn, then ignored when read):
        each kept record is still complete, and a lost one only means its case is done again.
        """
        if not records:
            return
        data = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for pathological file systems
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSON Lines file; a torn or unparsable line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    # The piece after the last newline is either empty or a line torn by a crash: never a record.
    for line in data.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("case"), str):
            records.append(record)
    return records


def part_path(out_dir: Path, kind: str, rank: int) -> Path:
    """The part file a rank appends to: ``.parts/<kind>-rank<R>.jsonl`` (kind: index or errors)."""
    return out_dir / PARTS / f"{kind}-rank{rank:05d}.jsonl"


def load_done(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Case id -> index record, from ``index.jsonl`` and every rank's part file."""
    return _merge([out_dir / INDEX, *sorted((out_dir / PARTS).glob("index-rank*.jsonl"))])


def consolidate(out_dir: Path) -> tuple[int, int]:
    """Fold part files into ``index.jsonl`` and ``errors.jsonl`` (sorted, one record per case).

    An error record is dropped once its case is done. Only one process may call this, with no rank
    appending (at the start of a run or after its last barrier).

    Returns:
        The numbers of done and failed cases.
    """
    parts = out_dir / PARTS
    done = load_done(out_dir)
    errors = _merge([out_dir / ERRORS, *sorted(parts.glob("errors-rank*.jsonl"))])
    errors = {case: rec for case, rec in errors.items() if case not in done}
    _write_sorted(out_dir / INDEX, done)
    if errors:
        _write_sorted(out_dir / ERRORS, errors)
    else:  # a rerun that fixed every failure leaves no stale errors file behind
        (out_dir / ERRORS).unlink(missing_ok=True)
    if parts.is_dir():
        for p in parts.glob("*.jsonl"):
            p.unlink()
        if not any(parts.iterdir()):
            parts.rmdir()
    return len(done), len(errors)


def remove_temporaries(out_dir: Path) -> list[Path]:
    """Delete what a killed run left half-written (``.<name>.<random>.part*`` files and folders)."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        for name in [d for d in dirnames if _TEMPORARY.match(d)]:  # a DICOM overlay series being written
            shutil.rmtree(Path(dirpath) / name, ignore_errors=True)
            dirnames.remove(name)
            removed.append(Path(dirpath) / name)
        for name in filenames:
            if _TEMPORARY.match(name):
                path = Path(dirpath) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _merge(paths: list[Path]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for record in read_records(path):
            merged[record["case"]] = record  # later files (this run's parts) win
    return merged


def _write_sorted(path: Path, records: dict[str, dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for case in sorted(records):
                f.write(json.dumps(records[case], sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
