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
from medlrp.io.image import Image, write_atomic
from medlrp.io.inputs import stem
from medlrp.io.signal import write_npy
from medlrp.models import LoadedModel
from medlrp.pipeline import (
    _jsonable,
    _metrics,
    _safe_meta,
    class_index,
    first_prediction,
    prediction_fields,
    prepare,
    run_methods,
)
from medlrp.viz.signal import lead_summary, write_signal_overlay


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


def explain_signal_case(
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
    explanations: Mapping[str, Explanation] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Explain one signal with each method and write its outputs (see the module docstring).

    Arguments and result as :func:`medlrp.pipeline.explain_case` (signals take no intensity window;
    the report shows the overlay pictures).
    """
    if not methods:
        raise InputError("no method given")
    start = time.perf_counter()
    out = Path(out_dir)
    case = name or stem(image.source)
    x = prepare(loaded, image)
    prep_s = time.perf_counter() - start
    leads = list(image.meta.get("leads") or [str(i) for i in range(image.array.shape[0])])
    n_leads, samples = image.array.shape
    if mask is not None and tuple(mask.array.shape[-1:]) != (samples,):
        raise InputError(f"{mask.source}: mask of {mask.array.shape[-1]} samples, the signal has {samples}")
    class_names = list(loaded.class_names)
    results, explain_s = run_methods(
        loaded, x, methods, class_index(target, class_names), composite, explanations
    )
    logits, wanted = first_prediction(results)
    maps: dict[str, np.ndarray] = {}
    for method, e in results.items():
        r = e.relevance[0].detach().double().cpu().numpy()
        r = np.broadcast_to(r, (n_leads, r.shape[-1])) if r.shape[0] == 1 else r  # CAM: one map for all
        maps[method] = to_samples(r, samples)
    ms = float(image.spacing[0])
    explained = class_names[wanted] if wanted < len(class_names) else str(wanted)
    outputs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    summaries: dict[str, list[dict[str, Any]]] = {}
    for method, relevance in maps.items():
        suffix = "" if len(maps) == 1 else f".{method}"
        npy, csv, png = (
            f"{case}{suffix}.{part}" for part in ("relevance.npy", "relevance.csv", "overlay.png")
        )
        write_npy(out / npy, relevance.astype(np.float32))
        text = relevance_csv(relevance, leads, ms)
        write_atomic(out / csv, lambda p, text=text: p.write_text(text, encoding="utf-8"))
        title = f"{case}: {method}, class {explained}" + (f" (true: {label})" if label is not None else "")
        write_signal_overlay(out / png, image.array, relevance, leads, ms, title)
        outputs[method] = {
            "relevance": npy,
            "relevance_csv": csv,
            "overlay": png,
            "relevance_sum": float(relevance.sum()),
            "max_abs": float(np.abs(relevance).max()),
            "options": _jsonable(dict(results[method].options)),
            "seconds": explain_s[method],
        }
        summaries[method] = lead_summary(relevance, leads)
        if mask is not None:
            m = np.broadcast_to(mask.array, relevance.shape) if mask.array.shape[0] == 1 else mask.array
            metrics[method] = _metrics(relevance, m)
    record: dict[str, Any] = {
        "case": case,
        "input": image.source.name,
        "kind": image.kind,
        "shape": [samples],
        "channels": n_leads,
        "spacing": [ms],
        **prediction_fields(logits, class_names, wanted, methods),
        "label_name": label,
        "options": {"composite": composite, "fs": image.meta.get("fs"), **_safe_meta(image)},
        "outputs": outputs,
        "leads": summaries,
        "timing": {"preprocess_s": prep_s, "explain_s": explain_s, "total_s": 0.0},
    }
    if mask is not None:
        record["metrics"] = metrics
        record["mask"] = mask.source.name
    if keep_identifiers and image.identifiers:
        record["identifiers"] = dict(image.identifiers)
    record["timing"]["total_s"] = time.perf_counter() - start
    return record
