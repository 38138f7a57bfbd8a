"""Per-case output files, written from batch explanations by the pipeline's two steps.

:func:`medlrp.pipeline.compute_case` (given the explanations: it only checks and resamples them) and
:func:`medlrp.pipeline.write_case` write them exactly as ``medlrp explain`` does.

Files (names relative to the case's folder): ``NAME.relevance.nii.gz``/``NAME.overlay.png`` with one
method, ``NAME.<method>.relevance.nii.gz``/``NAME.<method>.overlay.png`` for each method with several.
Every file is written under a temporary name and renamed (``medlrp.io.atomic_path``); :func:`fsync_files`
then flushes them before the case's index record is appended, so a case listed as done has its files on
disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlrp.explanation import Explanation
from medlrp.io import DicomWriter, Image
from medlrp.models import LoadedModel
from medlrp.pipeline import compute_case
from medlrp.pipeline import write_case as write_case_files


@dataclass
class MethodFiles:
    """What was written for one method of one case."""

    relevance: Path
    overlay: Path
    scores: dict[str, Any] | None = None
    dicom: list[Path] = field(default_factory=list)  # --dicom: the Parametric Map, then the overlay series
    #: Segmentation: the positive relevance shares in the region (and its margin).
    region_metrics: dict[str, Any] | None = None


def write_case(
    loaded: LoadedModel,
    image: Image,
    explanations: dict[str, Explanation],
    case_dir: Path,
    name: str,
    mask: Image | None = None,
    keep_identifiers: bool = False,
    dicom: DicomWriter | None = None,
    region: str | Image | None = None,
    label: str | None = None,
) -> dict[str, MethodFiles]:
    """Write the case's relevance maps and overlays; return them per method (scores when ``mask``).

    Args:
        loaded: The model's description (class names, preprocessing); its weights are not used.
        image: The case's input, on its own grid.
        explanations: Per method, one sample (a batch of one) at the model grid.
        case_dir: Folder for the files.
        name: Case name in the file names.
        mask: The case's mask on the input grid, or ``None``; gives localisation scores.
        keep_identifiers: Passed on to the pipeline.
        dicom: Also write the DICOM outputs of a DICOM input with this run's writer (``--dicom``); a
            series off a regular grid fails before any file is written.
        region: Segmentation models: the region the explanations explain (outlined, recorded).
        label: The case's true class name, when known (in the overlay's caption, as explain).
    """
    sources = dicom.sources(image) if dicom is not None else None
    result = compute_case(
        loaded,
        image,
        list(explanations),
        name=name,
        mask=mask,
        explanations=explanations,
        region=region,
        label=label,
    )
    record = write_case_files(result, case_dir, keep_identifiers=keep_identifiers, views=False)
    written = {}
    if dicom is not None and sources is not None:
        written = dicom.write_case(case_dir, record, image, loaded.preprocessing.window, sources)
    metrics = record.get("metrics", {})
    return {
        method: MethodFiles(
            case_dir / out["relevance"],
            case_dir / out["overlay"],
            metrics.get(method) if mask is not None else None,
            written[method].files if method in written else [],
            out.get("region_metrics"),
        )
        for method, out in record["outputs"].items()
    }


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
