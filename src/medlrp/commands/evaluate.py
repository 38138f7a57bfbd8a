"""Measure explanation methods on a dataset, one score per method and metric.

Every method on every case of the dataset (its test split when DIR/test exists; masks used where a case
has one). Writes to --out: metrics.csv and metrics.md (mean and 95% confidence interval per method and
metric with its range, and a ranking table), per_case.csv, curves.png (mean region-perturbation curves),
evaluation.json (all values) and report.html. An unknown method is an error before any work; a method
that fails on the model is reported and skipped.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medlrp.commands import options as opt
from medlrp.errors import InputError

HELP = __doc__
DEFAULT_METHODS = "lrp,gradcam,gradient,input-x-gradient,integrated-gradients"


def run_evaluate(
    model: Path,
    data: Path,
    *,
    methods: list[str],
    out: Path,
    target: str = "label",
    batch_size: int = 16,
    max_cases: int | None = None,
    randomisation: bool = True,
    trust_model: bool = False,
    device: str = "auto",
    progress: bool = True,
    composite: str | None = None,
    layer: str | None = None,
) -> dict[str, Any]:
    """The command's work; returns the evaluation as plain data (``evaluation.json``).

    ``target``: ``label`` (the case's class folder), ``predicted``, or a class index or name. ``layer``:
    the CAM methods' layer (None: their default); ``evaluation.json``'s ``method_options`` records it.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from medlrp.api import method_options
    from medlrp.data import FolderDataset, collate_cases
    from medlrp.metrics.plots import plot_curves
    from medlrp.metrics.suite import evaluate_methods
    from medlrp.metrics.table import ranking, table_csv, table_markdown
    from medlrp.models import load_model
    from medlrp.pipeline import class_index
    from medlrp.preflight import check_layer, check_methods
    from medlrp.train.progress import counting_progress

    methods = opt.method_list(",".join(methods))
    opt.check_composite(composite)
    check_methods(methods, None, layer)  # a --layer without a CAM method
    opt.check_paths([data], "dataset folder")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    device = opt.resolve_device(device)
    loaded = load_model(model, trust_model=trust_model, device=device)
    check_layer(loaded, layer, model)
    if loaded.task == "segmentation":
        raise InputError(
            f"{model}: evaluate measures classifiers; for a segmentation model use medlrp batch --region "
            "(per-case region shares) or the region metrics of medlrp.metrics"
        )
    known = len(loaded.class_names) or None
    fixed = None if target in ("label", "predicted") else class_index(target, loaded.class_names, known)
    dataset = FolderDataset(
        data, split="test", preprocessing=loaded.preprocessing, classes=loaded.class_names or None
    )
    subset = Subset(dataset, pick_cases(dataset.labels, max_cases))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate_cases)

    def batches():
        for b in loader:
            mask = b.mask * b.has_mask.view(-1, *[1] * (b.mask.ndim - 1))
            x = b.x.to(device)
            wanted = b.label if fixed is None else torch.full_like(b.label, fixed)
            yield x, (wanted.to(device) if target != "predicted" else None), mask.to(device), list(b.case_id)

    options = {m: method_options(m, composite, layer) for m in methods}
    with counting_progress(len(subset) * len(methods), "evaluating", progress) as advance:
        result = evaluate_methods(
            loaded.model,
            batches(),
            methods,
            randomisation=randomisation,
            method_options=options,
            on_step=lambda method, cases: advance(method, cases),
        )
    for method, why in result.unavailable.items():
        print(f"medlrp: warning: method {method!r} not evaluated: {why}", file=sys.stderr)
    if not result.methods:
        raise InputError(f"none of the methods {', '.join(methods)} could be evaluated")
    out.mkdir(parents=True, exist_ok=True)
    markdown = table_markdown(result)
    (out / "metrics.md").write_text(markdown, encoding="utf-8")
    (out / "metrics.csv").write_text(table_csv(result), encoding="utf-8")
    _per_case_csv(result, out / "per_case.csv")
    plot_curves(result, out / "curves.png")
    payload = {
        **result.to_dict(),
        "ranking": ranking(result),
        "model": str(model),
        "data": str(dataset.root),
        "method_options": {m: o for m, o in options.items() if o},
    }
    (out / "evaluation.json").write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    _report(out, {"model": model.name, "data": str(dataset.root), "cases": len(result.cases)})
    print(markdown)
    print(f"wrote {out / 'metrics.md'}, {out / 'metrics.csv'}, {out / 'curves.png'}, {out / 'report.html'}")
    return payload


def pick_cases(labels: list[int], limit: int | None) -> list[int]:
    """Case indices to evaluate: all, or ``limit`` of them taken round-robin over the classes.

    The dataset lists cases class by class; the first ``limit`` would often be one class only.
    """
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    if limit < 1:
        raise InputError(f"--max-cases must be at least 1, got {limit}")
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    picked: list[int] = []
    queues = [list(g) for g in groups.values()]
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return sorted(picked)


def _per_case_csv(result: Any, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "method", "metric", "value"])
        for method in result.methods:
            for metric, values in result.values[method].items():
                for case, value in zip(result.cases, values, strict=True):
                    writer.writerow([case, method, metric, value])


def report_section(out: Path) -> Any:
    """The ``medlrp evaluate`` results in ``out`` as one report section: the table and the curves.

    Returns:
        A :class:`medlrp.report.ReportSection` (for ``write_report(..., sections=[...])``), or None when
        ``out`` holds no evaluation.
    """
    from medlrp.report import ReportSection, bytes_data_uri, markdown_to_html

    table = out / "metrics.md"
    if not table.is_file():
        return None
    body = markdown_to_html(table.read_text(encoding="utf-8"))
    curves = out / "curves.png"
    if curves.is_file():
        uri = bytes_data_uri(curves.read_bytes())
        body += f'<figure><img src="{uri}" alt="region-perturbation curves"></figure>'
    return ReportSection(title="Metrics", html=body)


def _report(out: Path, run: dict[str, Any]) -> None:
    from medlrp.report import write_report

    write_report(out / "report.html", [], title="medlrp evaluation", sections=[report_section(out)], run=run)


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("evaluate", help=HELP)
    def evaluate(
        model: opt.Model,
        data: Annotated[Path, typer.Option("--data", help="Dataset folder DIR/<class>/<case>.<ext>.")],
        methods: opt.Methods = DEFAULT_METHODS,
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("evaluate-out"),
        target: Annotated[
            str,
            typer.Option(help="Class to explain: 'label' (the case's class), 'predicted', an index or name."),
        ] = "label",
        composite: opt.Composite = None,
        layer: opt.Layer = None,
        batch_size: Annotated[int, typer.Option(help="Cases per batch.")] = 16,
        max_cases: Annotated[int | None, typer.Option(help="Evaluate at most this many cases.")] = None,
        randomisation: Annotated[
            bool, typer.Option(help="Run the cascading model-randomisation check (one map per layer).")
        ] = True,
        trust_model: opt.TrustModel = False,
        device: opt.Device = "auto",
        progress: opt.Progress = True,
    ) -> None:
        run_evaluate(
            model,
            data,
            methods=opt.method_list(methods),
            out=out,
            target=target,
            batch_size=batch_size,
            max_cases=max_cases,
            randomisation=randomisation,
            trust_model=trust_model,
            device=device,
            progress=progress,
            composite=composite,
            layer=layer,
        )
