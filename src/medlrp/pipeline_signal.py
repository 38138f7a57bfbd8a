"""The per-case explain pipeline for signals (ECG: leads x samples), beside :mod:`medlrp.pipeline`.

The same record as for images, with signal outputs: per method the relevance aligned with the input's
samples, per lead (``NAME.relevance.npy``, ``float32 (leads, samples)``, and ``NAME.relevance.csv``:
one row per sample, its time in milliseconds and one column per lead), and the overlay
``NAME.overlay.png`` (each lead's trace coloured by its relevance, see :mod:`medlrp.viz.signal`).
Further methods get ``NAME.<method>.relevance.npy`` etc. The record adds ``leads``: per method and
lead the relevance sum and the lead's share of ``|R|``. CAM methods give one map over time, the same
for every lead (they cannot tell leads apart).
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

from medlrp.api import explain
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io.image import Image, write_atomic
from medlrp.io.inputs import stem
from medlrp.io.signal import write_npy
from medlrp.models import LoadedModel
from medlrp.pipeline import _jsonable, _metrics, _safe_meta, class_index, prepare
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
    window: tuple[float, float] | None = None,
    views: bool = True,
    explanations: Mapping[str, Explanation] | None = None,
) -> dict[str, Any]:
    """Explain one signal with each method and write its outputs (see the module docstring).

    Arguments and result as :func:`medlrp.pipeline.explain_case` (``window`` and ``views`` are
    accepted and unused: signals are not windowed, the report shows the overlay pictures).
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
    wanted = class_index(target, class_names)
    maps: dict[str, np.ndarray] = {}
    options: dict[str, dict[str, Any]] = {}
    explain_s: dict[str, float] = {}
    logits: torch.Tensor | None = None
    for method in methods:  # every method runs before anything is written
        t0 = time.perf_counter()
        if explanations is not None and method in explanations:
            e = explanations[method]
        else:
            lrp_composite = composite if method == "lrp" else None
            e = explain(loaded.model, x, target=wanted, method=method, composite=lrp_composite)
        explain_s[method] = time.perf_counter() - t0
        if logits is None:
            logits = e.output[0].detach().float().cpu()
            wanted = int(e.target[0])
        r = e.relevance[0].detach().double().cpu().numpy()
        r = np.broadcast_to(r, (n_leads, r.shape[-1])) if r.shape[0] == 1 else r  # CAM: one map for all
        maps[method] = to_samples(r, samples)
        options[method] = _jsonable(dict(e.options))
    assert logits is not None and wanted is not None
    ms = float(image.spacing[0])
    label = class_names[wanted] if wanted < len(class_names) else str(wanted)
    outputs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    summaries: dict[str, list[dict[str, Any]]] = {}
    for i, (method, relevance) in enumerate(maps.items()):
        suffix = "" if i == 0 else f".{method}"
        npy, csv, png = (
            f"{case}{suffix}.{part}" for part in ("relevance.npy", "relevance.csv", "overlay.png")
        )
        write_npy(out / npy, relevance.astype(np.float32))
        text = relevance_csv(relevance, leads, ms)
        write_atomic(out / csv, lambda p, text=text: p.write_text(text, encoding="utf-8"))
        write_signal_overlay(out / png, image.array, relevance, leads, ms, f"{case}: {method}, class {label}")
        outputs[method] = {
            "relevance": npy,
            "relevance_csv": csv,
            "overlay": png,
            "relevance_sum": float(relevance.sum()),
            "max_abs": float(np.abs(relevance).max()),
            "options": options[method],
            "seconds": explain_s[method],
        }
        summaries[method] = lead_summary(relevance, leads)
        if mask is not None:
            m = np.broadcast_to(mask.array, relevance.shape) if mask.array.shape[0] == 1 else mask.array
            metrics[method] = _metrics(relevance, m)
    probabilities = torch.softmax(logits, dim=-1).tolist()
    names = (
        class_names if len(class_names) == len(probabilities) else [str(k) for k in range(len(probabilities))]
    )
    predicted = int(torch.argmax(logits))
    record: dict[str, Any] = {
        "case": case,
        "input": image.source.name,
        "kind": image.kind,
        "shape": [samples],
        "channels": n_leads,
        "spacing": [ms],
        "prediction": predicted,
        "prediction_name": names[predicted],
        "probability": float(probabilities[predicted]),
        "probabilities": dict(zip(names, (float(p) for p in probabilities), strict=True)),
        "logits": [float(v) for v in logits.tolist()],
        "target": wanted,
        "target_name": names[wanted] if wanted < len(names) else str(wanted),
        "method": methods[0],
        "methods": list(methods),
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
