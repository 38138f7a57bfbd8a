"""``OUT/run.json``: what a batch folder was made with, so a rerun resumes only the same run.

Skipping finished cases is right only if they were explained by the same model with the same methods
and options; a rerun with other settings into the same folder is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medlrp.errors import InputError
from medlrp.io.image import atomic_path

MANIFEST = "run.json"
# The settings that change what a case's outputs are; workers, batch size and device do not.
_KEYS = ("model_sha256", "methods", "composite", "target", "keep_identifiers", "region", "layer")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_manifest(out_dir: Path, settings: dict[str, Any]) -> None:
    """Raise if ``out_dir`` holds a run made with other settings (only the keys that matter)."""
    path = out_dir / MANIFEST
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{path}: not a medlrp batch manifest (unreadable JSON)") from None
    changed = [k for k in _KEYS if previous.get(k) != settings.get(k)]
    if changed:
        raise InputError(
            f"{out_dir}: holds a batch run made with other settings ({', '.join(changed)} differ); "
            "rerun with the same settings to resume, or choose a new --out"
        )


def write_manifest(out_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    with atomic_path(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
