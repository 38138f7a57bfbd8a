"""The per-case explain pipeline shared by ``medlrp explain``, ``medlrp batch`` and ``medlrp demo``.

One case: the image goes through the checkpoint's preprocessing to the model's grid, each method explains
the model's decision there, and each relevance map is resampled back to the input's grid and written with
the input's affine, with an overlay picture: ``NAME.relevance.nii.gz`` and ``NAME.overlay.png`` when one
method runs (the names of DESIGN.md), ``NAME.<method>.relevance.nii.gz`` and ``NAME.<method>.overlay.png``
for every method when several run (no file without its method then).
The returned record is what ``results.json`` holds for the case; its ``_view`` entry (pictures for the
HTML report) is not written to ``results.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlrp.api import explain
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io.image import Image, atomic_path
from medlrp.io.inputs import stem
from medlrp.io.nifti import write_nifti
from medlrp.io.resample import to_input_grid
from medlrp.io.windowing import display_range
from medlrp.models import LoadedModel
from medlrp.report.html import ReportSection, write_report
from medlrp.report.views import case_view
from medlrp.viz.overlay import write_overlay

RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"


def class_index(
    target: int | str | None, class_names: Sequence[str], num_classes: int | None = None
) -> int | None:
    """A ``--target`` value (class index or class name) as an index; None stays None.

    ``num_classes`` (when known) bounds the index: ``--target 7`` of a two-class model is an error.
    """
    if target is None:
        return None
    text = str(target).strip()
    if text in class_names:
        return list(class_names).index(text)
    try:
        index = int(text)
    except ValueError:
        known = ", ".join(class_names) or "none (the model has no class names; give an index)"
        raise InputError(
            f"--target {text!r} is neither a class index nor a class name; names: {known}"
        ) from None
    if index < 0:
        raise InputError(f"--target {index}: a class index is 0 or more")
    if num_classes is not None and index >= num_classes:
        raise InputError(f"--target {index} is out of range: the model has classes 0 to {num_classes - 1}")
    return index


def unique_name(source: Path, taken: set[str]) -> str:
    """The case name for ``source``: its file stem (or folder name), suffixed ``_2``, ``_3`` ... if taken.

    The name ends up in output file names; files named by UIDs are fine, files named after a patient
    carry that name into the outputs (rename them first, see the README).
    """
    base = stem(source) or "case"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _jsonable(value: Any) -> Any:
    """Options as plain JSON (modules and tensors become short strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    return str(value)


#: The per-case localisation scores (named as in ``medlrp evaluate``; all in [0, 1]) and their functions.
CASE_METRICS = {
    "positive_share_in_mask": "attribution_localisation",
    "top_k_share_in_mask": "relevance_rank_accuracy",
    "pointing_game": "pointing_game",
}


def _metrics(relevance: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Localisation metrics from :mod:`medlrp.metrics` where available; empty when it is not built."""
    try:
        from medlrp import metrics
    except ImportError:
        return {}
    r = torch.as_tensor(relevance, dtype=torch.float32)[None, None]
    m = torch.as_tensor(mask > 0, dtype=torch.float32)[None, None]
    values: dict[str, Any] = {}
    for name, function in CASE_METRICS.items():
        fn = getattr(metrics, function, None)
        if fn is None:
            continue
        try:
            values[name] = float(torch.as_tensor(fn(r, m)).reshape(-1)[0])
        except Exception as exc:  # a metric under construction must not sink the explanation
            values[name] = None
            values[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
    return values


def prepare(loaded: LoadedModel, image: Image, window: tuple[float, float] | None = None) -> torch.Tensor:
    """The model input ``(1, C, *size)`` for ``image`` through the checkpoint's preprocessing.

    ``window`` (``(center, width)``) overrides the checkpoint's intensity window when given.
    """
    pre = loaded.preprocessing if window is None else replace(loaded.preprocessing, window=list(window))
    x = pre(image.array, source=str(image.source))
    return x[None].to(_device_of(loaded.model))


def explain_case(
    loaded: LoadedModel,
    image: Image,
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    composite: str | None = None,
    target: int | str | None = None,
    keep_identifiers: bool = False,
    name: str | None = None,
    mask: Image | None = None,
    window: tuple[float, float] | None = None,
    views: bool = True,
    explanations: Mapping[str, Explanation] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Explain one image with each method; write its relevance NIfTI and overlay files atomically.

    Args:
        loaded: The model with its preprocessing and class names (:func:`medlrp.models.load_model`).
        image: The input (any reader of :mod:`medlrp.io`).
        methods: Method names; the first one gets the plain output names.
        out_dir: Output folder (created if needed).
        composite: LRP composite (``lrp`` only; None: the default for the model).
        target: Class index or class name to explain; None explains the predicted class.
        keep_identifiers: Put the input's patient identifiers into the record (and so the outputs).
        name: Case name for the output files; default: the input's file stem.
        mask: Region mask on the input's grid; gives localisation metrics per method.
        window: ``(center, width)`` overriding the checkpoint's window (model input and display).
        views: Also build the report pictures (the record's ``_view``).
        explanations: Precomputed explanations (a batch of one, at the model's grid) by method, e.g. from
            a batched run; methods found here are not computed again.
        label: The case's true class name, when known (shown beside the prediction in the report).

    Returns:
        The case record (JSON-friendly except ``_view``).

    Raises:
        InputError: the image does not fit the model (dimensions, channels, NaN), a bad target or method.
    """
    if not methods:
        raise InputError("no method given")
    start = time.perf_counter()
    out = Path(out_dir)
    case = name or stem(image.source)
    x = prepare(loaded, image, window)
    prep_s = time.perf_counter() - start
    spatial = tuple(image.array.shape[1:])
    if mask is not None and tuple(mask.array.shape[1:]) != spatial:
        raise InputError(f"{mask.source}: mask of shape {tuple(mask.array.shape[1:])}, image is {spatial}")
    class_names = list(loaded.class_names)
    wanted = class_index(target, class_names)
    display = image.array.mean(axis=0)
    pre_window = loaded.preprocessing.window
    shown = window or (tuple(pre_window) if pre_window is not None else None)  # type: ignore[arg-type]
    lo_hi = display_range(image, shown)  # type: ignore[arg-type]
    if image.meta.get("photometric") == "MONOCHROME1":  # bright means low values: mirror for display only
        display = lo_hi[0] + lo_hi[1] - display
    maps: dict[str, np.ndarray] = {}
    options: dict[str, dict[str, Any]] = {}
    logits: torch.Tensor | None = None
    explain_s: dict[str, float] = {}
    # Every method runs before anything is written: a failing method leaves no partial case behind.
    for method in methods:
        t0 = time.perf_counter()
        if explanations is not None and method in explanations:
            e = explanations[method]
        else:
            lrp_composite = composite if method == "lrp" else None
            e = explain(loaded.model, x, target=wanted, method=method, composite=lrp_composite)
        explain_s[method] = time.perf_counter() - t0
        if logits is None:
            logits = e.output[0].detach().float().cpu()
            wanted = int(e.target[0])  # every further method explains the same class
        relevance = e.relevance[0].detach().double().sum(dim=0).cpu().numpy()
        maps[method] = to_input_grid(relevance, spatial)
        options[method] = _jsonable(dict(e.options))
    outputs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    explained = class_names[wanted] if wanted is not None and wanted < len(class_names) else str(wanted)
    region = mask.array.max(axis=0) if mask is not None else None
    for method, relevance in maps.items():
        suffix = "" if len(maps) == 1 else f".{method}"
        nifti_name, overlay_name = f"{case}{suffix}.relevance.nii.gz", f"{case}{suffix}.overlay.png"
        write_nifti(out / nifti_name, relevance.astype(np.float32), image.affine)
        title = f"{case}: {method}, class {explained}" + (f" (true: {label})" if label is not None else "")
        write_overlay(out / overlay_name, display, relevance, image.affine, lo_hi, title, mask=region)
        outputs[method] = {
            "relevance": nifti_name,
            "overlay": overlay_name,
            "relevance_sum": float(relevance.sum()),
            "max_abs": float(np.abs(relevance).max()),
            "options": options[method],
            "seconds": explain_s[method],
        }
        if region is not None:
            metrics[method] = _metrics(relevance, region)
    assert logits is not None and wanted is not None
    probabilities = torch.softmax(logits, dim=-1).tolist()
    names = (
        class_names if len(class_names) == len(probabilities) else [str(k) for k in range(len(probabilities))]
    )
    predicted = int(torch.argmax(logits))
    record: dict[str, Any] = {
        "case": case,
        "input": image.source.name,
        "kind": image.kind,
        "shape": list(spatial),
        "channels": int(image.array.shape[0]),
        "spacing": [float(s) for s in image.spacing],
        "prediction": predicted,
        "prediction_name": names[predicted],
        "probability": float(probabilities[predicted]),
        "probabilities": dict(zip(names, (float(p) for p in probabilities), strict=True)),
        "logits": [float(v) for v in logits.tolist()],
        "target": wanted,
        "target_name": names[wanted] if wanted < len(names) else str(wanted),
        "label_name": label,
        "method": methods[0],
        "methods": list(methods),
        "options": {"composite": composite, "window": list(window) if window else None, **_safe_meta(image)},
        "outputs": outputs,
        "timing": {"preprocess_s": prep_s, "explain_s": explain_s, "total_s": 0.0},
    }
    if mask is not None:
        record["metrics"] = metrics
        record["mask"] = mask.source.name
    if keep_identifiers and image.identifiers:
        record["identifiers"] = dict(image.identifiers)
    if views:
        record["_view"] = case_view(display, maps, image.affine, lo_hi, mask=region)
    record["timing"]["total_s"] = time.perf_counter() - start
    return record


def _safe_meta(image: Image) -> dict[str, Any]:
    """Reader facts that identify nobody (readers keep identifiers out of ``meta`` already)."""
    keep = ("modality", "geometry", "index", "irregular_spacing", "files")
    return {k: image.meta[k] for k in keep if k in image.meta}


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without private entries (those starting with ``_``, e.g. the report pictures)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def write_run_outputs(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    failures: Sequence[dict[str, str]] = (),
    run: dict[str, Any] | None = None,
    title: str = "medlrp explain",
    sections: Sequence[ReportSection] = (),
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` for a run (atomically); return their paths.

    ``results.json`` is ``{"run": ..., "cases": [record, ...], "failures": [...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run": _jsonable(dict(run or {})),
        "cases": [_jsonable(public_record(r)) for r in records],
        "failures": [dict(f) for f in failures],
    }
    results = out / RESULTS_NAME
    with atomic_path(results) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    report = write_report(
        out / REPORT_NAME, records, title=title, sections=sections, failures=failures, run=run, out_dir=out
    )
    return results, report
