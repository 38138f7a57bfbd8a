"""The per-case explain pipeline shared by ``medlrp explain``, ``medlrp batch`` and ``medlrp demo``.

One case, in two steps that ``explain``, ``batch`` and ``demo`` all call:

1. :func:`compute_case`: the image goes through the checkpoint's preprocessing to the model's grid,
   each method explains the model's decision there, the model output and every relevance map are
   checked to be finite, and each map is resampled back to the input's grid. Nothing is written.
2. :func:`write_case`: each map is written with the input's affine, with an overlay picture:
   ``NAME.relevance.nii.gz`` and ``NAME.overlay.png`` when one method runs (the names of DESIGN.md),
   ``NAME.<method>.relevance.nii.gz`` and ``NAME.<method>.overlay.png`` for every method when several
   run; all files of a case appear together or not at all. The returned record is what
   ``results.json`` holds for the case; its ``_view`` entry (pictures for the HTML report) is not
   written to ``results.json``.

:func:`explain_case` does both.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlrp.api import explain, method_options
from medlrp.errors import InputError, OutputError
from medlrp.explanation import Explanation
from medlrp.io.dicom_out import MAP_SUFFIX, OVERLAY_SUFFIX
from medlrp.io.image import Image, atomic_path, atomic_paths
from medlrp.io.inputs import stem
from medlrp.io.nifti import write_nifti
from medlrp.io.resample import to_input_grid
from medlrp.io.signal import is_signal
from medlrp.io.windowing import display_range
from medlrp.models import LoadedModel
from medlrp.region_case import (
    Region,
    check_region_shape,
    explain_region,
    is_segmentation,
    model_output,
    positive_shares,
    region_on_input,
    region_record,
    resolve_region,
)
from medlrp.report.html import ReportSection, write_report
from medlrp.report.views import case_view
from medlrp.viz.overlay import write_overlay

RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"
#: How the names of per-case outputs end (with ``--dicom``: the Parametric Map and the overlay series folder).
OUTPUT_SUFFIXES = (
    ".relevance.nii.gz",
    ".overlay.png",
    MAP_SUFFIX,
    OVERLAY_SUFFIX,
    ".relevance.npy",
    ".relevance.csv",
)


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


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
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


def _metrics(relevance: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Localisation metrics from :mod:`medlrp.metrics` where available; empty when it is not built."""
    try:
        from medlrp.metrics.suite import CASE_METRICS
    except ImportError:
        return {}
    r = torch.as_tensor(relevance, dtype=torch.float32)[None, None]
    m = torch.as_tensor(mask > 0, dtype=torch.float32)[None, None]
    values: dict[str, Any] = {}
    for info in CASE_METRICS:
        name = info.name
        try:
            values[name] = float(torch.as_tensor(info.function(r, m)).reshape(-1)[0])
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
    return x[None].to(device_of(loaded.model))


@dataclass
class CaseResult:
    """One case explained and checked, nothing written yet (:func:`compute_case`).

    Attributes:
        case: Case name (output file names start with it).
        image: The input on its own grid.
        methods: Method names in order; the first gets the plain output names.
        maps: Relevance per method, channels summed, resampled to the input's grid (finite ``float32``).
        options: Per method, the explanation's options as plain JSON.
        explain_s: Seconds per method.
        logits: The model's output for the case (finite, on the CPU).
        target: The explained class.
        class_names: The model's class names.
        composite: The LRP composite asked for (``None``: the model's default).
        window: ``(center, width)`` overriding the checkpoint's window, or ``None``.
        mask: Region mask on the input's grid, or ``None``.
        display: The picture behind the overlays (channels averaged, MONOCHROME1 mirrored).
        display_range: Intensity range shown.
        preprocess_s: Seconds spent preparing the model input.
        label: The case's true class name, when known (shown beside the prediction in the report).
        started: ``time.perf_counter()`` when the case began (the record's total time).
        region: Segmentation models: the explained class and region (see :mod:`medlrp.region_case`).
    """

    case: str
    image: Image
    methods: list[str]
    maps: dict[str, np.ndarray]
    options: dict[str, dict[str, Any]]
    explain_s: dict[str, float]
    logits: torch.Tensor
    target: int
    class_names: list[str]
    composite: str | None = None
    window: tuple[float, float] | None = None
    mask: Image | None = None
    display: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    display_range: tuple[float, float] = (0.0, 1.0)
    preprocess_s: float = 0.0
    label: str | None = None
    started: float = field(default_factory=time.perf_counter)
    region: Region | None = None


def check_finite(e: Explanation, source: Path | str, method: str | None = None) -> None:
    """Refuse an explanation whose model output or relevance holds NaN or infinity.

    A non-finite map drawn as an overlay looks like a real one; it must never be written.

    Raises:
        InputError: one line naming ``source`` and what is not finite.
    """
    if not bool(torch.isfinite(e.output).all()):
        raise InputError(
            f"{source}: the model's output is not finite (NaN or infinity): input values out of the "
            "range the model takes, or non-finite weights"
        )
    if not bool(torch.isfinite(e.relevance).all()):
        raise InputError(f"{source}: the relevance of {method or e.method} is not finite (NaN or infinity)")


def explain_methods(
    loaded: LoadedModel,
    x: torch.Tensor,
    methods: Sequence[str],
    target: int | None,
    composite: str | None,
    explanations: Mapping[str, Explanation] | None,
    source: Path | str,
    region: Region | None = None,
    layer: str | None = None,
) -> Iterator[tuple[str, Explanation, float]]:
    """Each method's checked explanation of ``x`` (precomputed ones reused) with its seconds.

    Every method after the first explains the class the first one explained; ``composite`` applies to
    ``lrp`` only, ``layer`` to the CAMs only (:func:`medlrp.api.method_options`). ``region``: a
    segmentation model's class and region (:mod:`medlrp.region_case`).
    """
    for method in methods:
        t0 = time.perf_counter()
        if explanations is not None and method in explanations:
            e = explanations[method]
        else:
            options = method_options(method, composite, layer)
            if region is not None:
                e = explain_region(loaded.model, x, region.target, region.given, method, **options)
                e.options = {**e.options, "region": region.source}
            else:
                e = explain(loaded.model, x, target=target, method=method, **options)
        seconds = time.perf_counter() - t0
        check_finite(e, source, method)
        target = int(e.target[0])
        yield method, e, seconds


@dataclass
class Collected:
    """What every method of a case gives: its map (on the input's grid), options and seconds.

    ``logits`` and ``target`` come from the first method (every further one explains the same class).
    """

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    explain_s: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    target: int | None = None


def collect(
    explained: Iterable[tuple[str, Explanation, float]], to_map: Callable[[str, Explanation], np.ndarray]
) -> Collected:
    """Gather :func:`explain_methods`' results; ``to_map(method, e)`` turns one into its saved map."""
    out = Collected()
    for method, e, seconds in explained:
        out.explain_s[method] = seconds
        if out.logits is None:
            out.logits, out.target = e.output[0].detach().float().cpu(), int(e.target[0])
        out.maps[method] = to_map(method, e)
        out.options[method] = _jsonable(dict(e.options))
    if out.logits is None or out.target is None:
        raise InputError("no method given")
    return out


def compute_case(
    loaded: LoadedModel,
    image: Image,
    methods: Sequence[str],
    *,
    composite: str | None = None,
    target: int | str | None = None,
    name: str | None = None,
    mask: Image | None = None,
    window: tuple[float, float] | None = None,
    explanations: Mapping[str, Explanation] | None = None,
    label: str | None = None,
    region: str | Image | None = None,
    layer: str | None = None,
) -> CaseResult:
    """Explain one image with each method and check the result; write nothing.

    Args:
        loaded: The model with its preprocessing and class names (:func:`medlrp.models.load_model`).
        image: The input (any reader of :mod:`medlrp.io`).
        methods: Method names; the first one gets the plain output names.
        composite: LRP composite (``lrp`` only; None: the default for the model).
        target: Class index or class name to explain; None explains the predicted class.
        name: Case name for the output files; default: the input's file stem.
        mask: Region mask on the input's grid; gives localisation metrics per method.
        window: ``(center, width)`` overriding the checkpoint's window (model input and display).
        explanations: Precomputed explanations (a batch of one, at the model's grid) by method, e.g. from
            a batched run; methods found here are not computed again.
        label: The case's true class name, when known (shown beside the prediction in the report).
        region: Segmentation models only: ``"predicted"`` (default: where the target class wins the
            argmax) or a mask :class:`~medlrp.io.Image` on the input's grid; the class's logits summed
            over it are explained (see :mod:`medlrp.region_case`). The region is outlined in the
            overlays and recorded (``region``: voxels, logit sum; positive relevance shares per method).
        layer: The CAM methods' layer (a dotted name, ``"name:K"`` for call ``K``); None: their default
            (the last convolutional block of a classifier, the bottleneck of a segmentation network).

    Raises:
        InputError: the image does not fit the model (dimensions, channels, NaN), a bad target or method,
            a non-finite model output or relevance; a region for a classifier, a region mask of another
            shape than the image, an empty region.
    """
    if is_signal(image):  # ECG and other signals: per-lead maps (medlrp.pipeline_signal)
        from medlrp.pipeline_signal import compute_signal_case

        return compute_signal_case(
            loaded, image, methods, composite=composite, target=target, name=name, mask=mask,
            explanations=explanations, label=label, layer=layer,
        )  # fmt: skip
    if not methods:
        raise InputError("no method given")
    start = time.perf_counter()
    x = prepare(loaded, image, window)
    prep_s = time.perf_counter() - start
    spatial = tuple(image.array.shape[1:])
    if mask is not None and tuple(mask.array.shape[1:]) != spatial:
        raise InputError(f"{mask.source}: mask of shape {tuple(mask.array.shape[1:])}, image is {spatial}")
    class_names = list(loaded.class_names)
    wanted = class_index(target, class_names)
    seg = _segmentation_region(loaded, x, image, wanted, region, methods, explanations)
    if seg is not None:
        wanted = seg.target

    def to_map(method: str, e: Explanation) -> np.ndarray:
        relevance = e.relevance[0].detach().double().sum(dim=0).cpu().numpy()
        resampled = to_input_grid(relevance, spatial).astype(np.float32)
        if not np.isfinite(resampled).all():  # finite in float64, beyond float32's range
            raise InputError(f"{image.source}: the relevance of {method} exceeds the float32 range")
        return resampled

    got = collect(
        explain_methods(loaded, x, methods, wanted, composite, explanations, image.source, seg, layer), to_map
    )
    logits = got.logits
    assert logits is not None
    if not bool(torch.isfinite(logits).all()):  # float32 overflow of a float64 output
        raise InputError(f"{image.source}: the model's output exceeds the float32 range")
    display = image.array.mean(axis=0)
    pre_window = loaded.preprocessing.window
    shown = window or (tuple(pre_window) if pre_window is not None else None)
    lo_hi = display_range(image, shown)  # type: ignore[arg-type]
    if image.meta.get("photometric") == "MONOCHROME1":  # bright means low values: mirror for display only
        display = lo_hi[0] + lo_hi[1] - display
    return CaseResult(
        case=name or stem(image.source),
        image=image,
        methods=list(methods),
        maps=got.maps,
        options=got.options,
        explain_s=got.explain_s,
        logits=logits,
        target=got.target,
        class_names=class_names,
        composite=composite,
        window=window,
        mask=mask,
        display=display,
        display_range=lo_hi,
        preprocess_s=prep_s,
        label=label,
        started=start,
        region=seg,
    )


def _segmentation_region(
    loaded: LoadedModel,
    x: torch.Tensor,
    image: Image,
    wanted: int | None,
    region: str | Image | None,
    methods: Sequence[str],
    explanations: Mapping[str, Explanation] | None,
) -> Region | None:
    """The explained class and region of a segmentation model (None for a classifier).

    With precomputed explanations (a batch run) the region follows from their output and target.

    Raises:
        InputError: a region for a classifier, a mask of another shape than the image, an empty region.
    """
    first = explanations.get(methods[0]) if explanations is not None else None
    if first is not None:
        segmenting = first.output.dim() > 2
        wanted = int(first.target[0]) if segmenting else wanted
    else:
        segmenting = is_segmentation(loaded, x)
    if not segmenting:
        if region is not None:
            raise InputError(
                f"{image.source}: --region applies to segmentation models; this model classifies"
            )
        return None
    if isinstance(region, Image):
        check_region_shape(region, tuple(image.array.shape[1:]))
    output = first.output if first is not None else model_output(loaded.model, x)
    return resolve_region(output, wanted, region, list(loaded.class_names), str(image.source))


def is_output_name(name: str) -> bool:
    """True for a file or folder name a run writes (never an input of a later run)."""
    return name.endswith(OUTPUT_SUFFIXES) or name in (RESULTS_NAME, REPORT_NAME)


def output_names(case: str, methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Per method, the relevance and overlay file names.

    One method: ``NAME.relevance.nii.gz`` and ``NAME.overlay.png`` (the names of DESIGN.md); several: every
    file carries its method (``NAME.<method>.relevance.nii.gz``), the first included.
    """
    names = {}
    for method in methods:
        suffix = "" if len(methods) == 1 else f".{method}"
        names[method] = (f"{case}{suffix}.relevance.nii.gz", f"{case}{suffix}.overlay.png")
    return names


def write_case(
    result: CaseResult, out_dir: str | Path, *, keep_identifiers: bool = False, views: bool = True
) -> dict[str, Any]:
    """Write a case's relevance NIfTI and overlay files; return its record (what ``results.json`` holds).

    All files of the case are written under temporary names and renamed together: they appear complete
    or not at all.

    Args:
        result: The computed case (:func:`compute_case`).
        out_dir: Output folder (created if needed).
        keep_identifiers: Put the input's patient identifiers into the record (and so the outputs).
        views: Also build the report pictures (the record's ``_view``).

    Raises:
        OutputError: a file cannot be written (one line naming it).
    """
    if is_signal(result.image):  # per-lead .npy, CSV and trace overlay (medlrp.pipeline_signal)
        from medlrp.pipeline_signal import write_signal_case

        return write_signal_case(result, out_dir, keep_identifiers=keep_identifiers)
    out = Path(out_dir)
    image, wanted, class_names = result.image, result.target, result.class_names
    explained = class_names[wanted] if wanted < len(class_names) else str(wanted)
    truth = result.mask.array.max(axis=0) if result.mask is not None else None
    seg = result.region
    explained_region = region_on_input(seg, tuple(image.array.shape[1:])) if seg is not None else None
    outline = explained_region if explained_region is not None else truth  # drawn on the pictures
    names = output_names(result.case, result.methods)
    finals = [out / n for method in result.methods for n in names[method]]
    outputs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    with _writing(finals) as current, atomic_paths(finals) as temps:
        staged = dict(zip(finals, temps, strict=True))
        for method in result.methods:
            relevance = result.maps[method]
            nifti_name, overlay_name = names[method]
            current[0] = out / nifti_name
            write_nifti(staged[out / nifti_name], relevance, image.affine)
            layer = result.options[method].get("layer")
            shown = f"{method} at {layer}" if isinstance(layer, str) else method  # which layer a CAM read
            caption = f"{result.case}: {shown}, class {explained}"
            if result.label is not None:
                caption += f" (true: {result.label})"
            if seg is not None:
                caption = f"{result.case}: {shown}, {explained}, {seg.source} region outlined"
            current[0] = out / overlay_name
            write_overlay(
                staged[out / overlay_name],
                result.display,
                relevance,
                image.affine,
                result.display_range,
                caption,
                mask=outline,
            )
            outputs[method] = {
                "relevance": nifti_name,
                "overlay": overlay_name,
                "relevance_sum": float(relevance.sum(dtype=np.float64)),
                "max_abs": float(np.abs(relevance).max()),
                "options": result.options[method],
                "seconds": result.explain_s[method],
            }
            if explained_region is not None:
                outputs[method]["region_metrics"] = positive_shares(relevance, explained_region)
            if truth is not None:
                metrics[method] = _metrics(relevance, truth)
    record = case_record(result, outputs, keep_identifiers=keep_identifiers)
    if result.mask is not None:
        record["metrics"] = metrics
    if views:
        record["_view"] = case_view(
            result.display, result.maps, image.affine, result.display_range, mask=outline
        )
    record["timing"]["total_s"] = time.perf_counter() - result.started
    return record


def case_record(
    result: CaseResult, outputs: dict[str, dict[str, Any]], *, keep_identifiers: bool = False
) -> dict[str, Any]:
    """The case's ``results.json`` record (without metrics and report pictures)."""
    image, logits, wanted = result.image, result.logits, result.target
    class_names = result.class_names
    count = int(logits.shape[0])
    names = class_names if len(class_names) == count else [str(k) for k in range(count)]
    if result.region is None:
        prediction = _prediction(logits, names)
    else:
        prediction = region_record(
            result.region, region_on_input(result.region, tuple(image.array.shape[1:])), names
        )
    window = result.window
    record: dict[str, Any] = {
        "case": result.case,
        "input": image.source.name,
        "kind": image.kind,
        "shape": list(image.array.shape[1:]),
        "channels": int(image.array.shape[0]),
        "spacing": [float(s) for s in image.spacing],
        **prediction,
        "target": wanted,
        "target_name": names[wanted] if wanted < len(names) else str(wanted),
        "label_name": result.label,
        "method": result.methods[0],
        "methods": list(result.methods),
        "options": {
            "composite": result.composite,
            "window": list(window) if window else None,
            **_safe_meta(image),
        },
        "outputs": outputs,
        "timing": {"preprocess_s": result.preprocess_s, "explain_s": dict(result.explain_s), "total_s": 0.0},
    }
    if result.mask is not None:
        record["mask"] = result.mask.source.name
    if keep_identifiers and image.identifiers:
        record["identifiers"] = dict(image.identifiers)
    return record


@contextmanager
def _writing(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Turn an operating-system error while writing ``finals`` into one line naming the file.

    The block may store the file it is writing in the yielded list's first item; otherwise the
    error's own file name (a temporary's final name) or the first file is named.
    """
    current = [finals[0]]
    try:
        yield current
    except OSError as exc:
        where = _named(exc, finals, current[0])
        raise OutputError(f"{where}: cannot write: {exc.strerror or exc}") from None


def _named(exc: OSError, finals: Sequence[Path], current: Path) -> Path:
    """The output file an error is about: a folder that cannot be made, else the file being written."""
    failed = Path(exc.filename) if exc.filename else None
    if failed is not None:
        if failed in finals:
            return failed
        if failed.is_dir() or failed in {f.parent for f in finals}:
            return failed
    return current


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
    region: str | Image | None = None,
    layer: str | None = None,
) -> dict[str, Any]:
    """Explain one image (:func:`compute_case`) and write its files (:func:`write_case`); return the record.

    Every method runs and is checked before anything is written: a failing method or a non-finite map
    leaves no partial case behind. Arguments as for the two steps.

    Raises:
        InputError: see :func:`compute_case`; OutputError (an InputError) when writing fails.
    """
    result = compute_case(
        loaded,
        image,
        methods,
        composite=composite,
        target=target,
        name=name,
        mask=mask,
        window=window,
        explanations=explanations,
        label=label,
        region=region,
        layer=layer,
    )
    return write_case(result, out_dir, keep_identifiers=keep_identifiers, views=views)


def _prediction(logits: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """A classifier's record entries: the predicted class, its probability, all probabilities, logits."""
    probabilities = torch.softmax(logits.double(), dim=-1).tolist()
    predicted = int(torch.argmax(logits))
    return {
        "prediction": predicted,
        "prediction_name": names[predicted],
        "probability": float(probabilities[predicted]),
        "probabilities": dict(zip(names, (float(p) for p in probabilities), strict=True)),
        "logits": [float(v) for v in logits.tolist()],
    }


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

    Raises:
        OutputError: a file cannot be written (one line naming it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run": _jsonable(dict(run or {})),
        "cases": [_jsonable(public_record(r)) for r in records],
        "failures": [dict(f) for f in failures],
    }
    results = out / RESULTS_NAME
    with _writing([results, out / REPORT_NAME]) as current:
        with atomic_path(results) as tmp:
            tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        current[0] = out / REPORT_NAME
        report = write_report(
            out / REPORT_NAME,
            records,
            title=title,
            sections=sections,
            failures=failures,
            run=run,
            out_dir=out,
        )
    return results, report
