"""The per-case explain pipeline for signals (ECG: leads x samples), beside :mod:`medlrp.pipeline`.

The same record as for images, with signal outputs: per method the relevance aligned with the input's
samples, per lead (``NAME.relevance.npy``, ``float32 (leads, samples)``, and ``NAME.relevance.csv``:
one row per sample, its time in milliseconds and one column per lead), and the overlay
``NAME.overlay.png`` (each lead's trace coloured by its relevance, see :mod:`medlrp.viz.signal`).
With several methods every file carries its method (``NAME.<method>.relevance.npy`` etc.), as for
images. The record adds ``leads``: per method and lead the relevance sum and the lead's share of
``|R|``. CAM methods give one map over time, the same for every lead (they cannot tell leads apart).
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io.image import Image, atomic_paths
from medlrp.io.inputs import stem
from medlrp.models import LoadedModel
from medlrp.pipeline import (
    CaseResult,
    _metrics,
    _writing,
    case_record,
    class_index,
    collect,
    explain_methods,
    prepare,
)
from medlrp.viz.signal import lead_summary, signal_overlay_png


def to_samples(relevance: np.ndarray, samples: int) -> np.ndarray:
    """Resample ``(leads, n)`` relevance to ``samples`` per lead keeping each lead's total."""
    r = torch.as_tensor(np.asarray(relevance, dtype=np.float64))
    if r.shape[-1] == samples:
        return r.numpy().copy()
    if samples <= r.shape[-1]:
        out = F.adaptive_avg_pool1d(r[None], samples)[0]
    else:
        out = F.interpolate(r[None], size=samples, mode="linear", align_corners=False)[0]
    return (out * (r.shape[-1] / samples)).numpy()


def relevance_csv(relevance: np.ndarray, leads: Sequence[str], ms_per_sample: float) -> str:
    """``sample,time_ms,<lead>...`` with one row per sample."""
    buffer = io.StringIO()
    columns = np.column_stack(
        [np.arange(relevance.shape[1]), np.arange(relevance.shape[1]) * ms_per_sample, relevance.T]
    )
    header = ",".join(["sample", "time_ms", *(str(name) for name in leads)])
    np.savetxt(buffer, columns, delimiter=",", header=header, comments="", fmt="%.9g")
    return buffer.getvalue()


def compute_signal_case(
    loaded: LoadedModel,
    image: Image,
    methods: Sequence[str],
    *,
    composite: str | None = None,
    target: int | str | None = None,
    name: str | None = None,
    mask: Image | None = None,
    explanations: Mapping[str, Explanation] | None = None,
    label: str | None = None,
    layer: str | None = None,
) -> CaseResult:
    """Explain one signal with each method and check the result; write nothing.

    Arguments as :func:`medlrp.pipeline.compute_case` (signals take no intensity window). The maps are
    per lead, ``float32 (leads, samples)`` on the input's samples.
    """
    if not methods:
        raise InputError("no method given")
    start = time.perf_counter()
    x = prepare(loaded, image)
    prep_s = time.perf_counter() - start
    n_leads, samples = image.array.shape
    if mask is not None and tuple(mask.array.shape[-1:]) != (samples,):
        raise InputError(f"{mask.source}: mask of {mask.array.shape[-1]} samples, the signal has {samples}")
    class_names = list(loaded.class_names)
    wanted = class_index(target, class_names)

    def to_map(method: str, e: Explanation) -> np.ndarray:
        r = e.relevance[0].detach().double().cpu().numpy()
        r = np.broadcast_to(r, (n_leads, r.shape[-1])) if r.shape[0] == 1 else r  # CAM: one map for all
        return to_samples(r, samples).astype(np.float32)

    got = collect(
        explain_methods(loaded, x, methods, wanted, composite, explanations, image.source, layer=layer),
        to_map,
    )
    assert got.logits is not None
    return CaseResult(
        case=name or stem(image.source),
        image=image,
        methods=list(methods),
        maps=got.maps,
        options=got.options,
        explain_s=got.explain_s,
        logits=got.logits,
        target=got.target,
        class_names=class_names,
        composite=composite,
        mask=mask,
        display=image.array,
        preprocess_s=prep_s,
        label=label,
        started=start,
    )


def output_names(case: str, methods: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """Per method: the relevance ``.npy``, its CSV and the overlay (several methods: names carry them)."""
    names = {}
    for method in methods:
        stem_ = case if len(methods) == 1 else f"{case}.{method}"
        names[method] = (f"{stem_}.relevance.npy", f"{stem_}.relevance.csv", f"{stem_}.overlay.png")
    return names


def write_signal_case(
    result: CaseResult, out_dir: str | Path, *, keep_identifiers: bool = False
) -> dict[str, Any]:
    """Write a signal case's files (renamed together); return its record (see the module docstring)."""
    out = Path(out_dir)
    image = result.image
    leads = list(image.meta.get("leads") or [str(i) for i in range(image.array.shape[0])])
    ms = float(image.spacing[0])
    wanted, class_names = result.target, result.class_names
    explained = class_names[wanted] if wanted < len(class_names) else str(wanted)
    names = output_names(result.case, result.methods)
    finals = [out / n for method in result.methods for n in names[method]]
    outputs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    summaries: dict[str, list[dict[str, Any]]] = {}
    region = None
    if result.mask is not None:
        m = result.mask.array
        region = np.broadcast_to(m, image.array.shape) if m.shape[0] == 1 else m
    with _writing(finals) as current, atomic_paths(finals) as temps:
        staged = dict(zip(finals, temps, strict=True))
        for method in result.methods:
            relevance = result.maps[method]
            npy, csv, png = names[method]
            current[0] = out / npy
            with open(staged[out / npy], "wb") as f:
                np.save(f, relevance)
            current[0] = out / csv
            staged[out / csv].write_text(relevance_csv(relevance, leads, ms), encoding="utf-8")
            title = f"{result.case}: {method}, class {explained}"
            if result.label is not None:
                title += f" (true: {result.label})"
            current[0] = out / png
            staged[out / png].write_bytes(signal_overlay_png(image.array, relevance, leads, ms, title))
            outputs[method] = {
                "relevance": npy,
                "relevance_csv": csv,
                "overlay": png,
                "relevance_sum": float(relevance.sum(dtype=np.float64)),
                "max_abs": float(np.abs(relevance).max()),
                "options": result.options[method],
                "seconds": result.explain_s[method],
            }
            summaries[method] = lead_summary(relevance, leads)
            if region is not None:
                metrics[method] = _metrics(relevance, region)
    record = case_record(result, outputs, keep_identifiers=keep_identifiers)
    record["options"]["fs"] = image.meta.get("fs")
    record["leads"] = summaries
    if result.mask is not None:
        record["metrics"] = metrics
    record["timing"]["total_s"] = time.perf_counter() - result.started
    return record
