"""Per-case output files, named and drawn as ``medlrp explain`` does.

When :func:`medlrp.pipeline.explain_case` accepts precomputed ``explanations`` it writes the files
itself (one code path for ``explain`` and ``batch``); until then the same files are written here through
the same building blocks (:func:`~medlrp.io.to_input_grid`, :func:`~medlrp.io.write_nifti`,
:func:`~medlrp.viz.overlay.write_overlay`): ``NAME.relevance.nii.gz``/``NAME.overlay.png`` for the first
method, ``NAME.<method>.relevance.nii.gz``/``NAME.<method>.overlay.png`` for the others.

Every file is written under a temporary name and renamed (``medlrp.io.atomic_path``), then fsynced
before the case's index record is appended, so a case listed as done has its files on disk.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlrp import pipeline
from medlrp.batch.scores import mask_scores
from medlrp.explanation import Explanation
from medlrp.io import Image, display_range, to_input_grid, write_nifti
from medlrp.models import LoadedModel
from medlrp.viz.overlay import write_overlay


@dataclass
class MethodFiles:
    """What was written for one method of one case."""

    relevance: Path
    overlay: Path
    scores: dict[str, Any] | None = field(default=None)


def write_case(
    loaded: LoadedModel,
    image: Image,
    explanations: dict[str, Explanation],
    case_dir: Path,
    name: str,
    mask: Image | None = None,
    keep_identifiers: bool = False,
) -> dict[str, MethodFiles]:
    """Write the case's relevance maps and overlays; return them per method (scores when ``mask``).

    Args:
        loaded: The model (class names, preprocessing window).
        image: The case's input, on its own grid.
        explanations: Per method, one sample (a batch of one) at the model grid.
        case_dir: Folder for the files.
        name: Case name in the file names.
        mask: The case's mask on the input grid, or ``None``.
        keep_identifiers: Passed on to the pipeline.
    """
    if _pipeline_takes_explanations():
        record = pipeline.explain_case(
            loaded,
            image,
            list(explanations),
            case_dir,
            name=name,
            mask=mask,
            views=False,
            keep_identifiers=keep_identifiers,
            explanations=explanations,
        )
        metrics = record.get("metrics", {})
        return {
            method: MethodFiles(
                case_dir / out["relevance"],
                case_dir / out["overlay"],
                metrics.get(method) if mask is not None else None,
            )
            for method, out in record["outputs"].items()
        }
    return _write_case_here(loaded, image, explanations, case_dir, name, mask)


def _pipeline_takes_explanations() -> bool:
    return "explanations" in inspect.signature(pipeline.explain_case).parameters


def _write_case_here(
    loaded: LoadedModel,
    image: Image,
    explanations: dict[str, Explanation],
    case_dir: Path,
    name: str,
    mask: Image | None,
) -> dict[str, MethodFiles]:
    spatial = tuple(image.array.shape[1:])
    display = image.array.mean(axis=0)
    window = loaded.preprocessing.window
    lo_hi = display_range(image, tuple(window) if window is not None else None)  # type: ignore[arg-type]
    names = loaded.class_names
    files = {}
    for i, (method, e) in enumerate(explanations.items()):
        relevance = to_input_grid(e.relevance[0].detach().double().sum(dim=0).cpu().numpy(), spatial)
        suffix = "" if i == 0 else f".{method}"
        nifti = write_nifti(
            case_dir / f"{name}{suffix}.relevance.nii.gz", relevance.astype(np.float32), image.affine
        )
        target = int(e.target[0])
        label = names[target] if target < len(names) else str(target)
        overlay = write_overlay(
            case_dir / f"{name}{suffix}.overlay.png",
            display,
            relevance,
            image.affine,
            lo_hi,
            f"{name}: {method}, class {label}",
        )
        scores = mask_scores(relevance, mask.array.max(axis=0)) if mask is not None else None
        files[method] = MethodFiles(nifti, overlay, scores)
    return files


def fsync_files(paths: list[Path]) -> None:
    """Flush ``paths`` to the disk (renamed files must be durable before the index says so)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes (for the index)."""
    return Path(os.path.relpath(path, root)).as_posix()
