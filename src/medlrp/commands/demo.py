"""``medlrp demo``: phantom data -> train a small CNN -> explain -> evaluate -> HTML report.

Everything lands in ``--out`` (default ``demo-out``): ``data/`` (a glioma 2D phantom), ``model.pt``,
per explained test case its relevance NIfTI and overlays per method, ``results.json``, ``evaluate/``
(metric tables and curves) and ``report.html``, whose path is printed at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medlrp.commands import options as opt
from medlrp.commands.phantom import run_phantom
from medlrp.commands.train import run_train, summary_lines
from medlrp.errors import InputError

if TYPE_CHECKING:  # imported when the command runs: --help must not import torch
    import torch


def _since(start: float) -> str:
    return f"at {time.perf_counter() - start:.0f} s"


def _warn(message: str) -> None:
    print(f"medlrp: warning: {message}", file=sys.stderr)


def explain_cases(
    model_path: Path, data: Path, out: Path, cases: int, progress: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
    """Explain the first ``cases`` test cases (alternating classes) with every registered method.

    Returns:
        The case records, failures, and the methods that ran.
    """
    from medlrp.data.folder import FolderDataset
    from medlrp.io import read_image
    from medlrp.models import load_model
    from medlrp.pipeline import explain_case
    from medlrp.registry import METHODS
    from medlrp.train.progress import make_progress

    loaded = load_model(model_path)
    dataset = FolderDataset(
        data, split="test", preprocessing=loaded.preprocessing, classes=loaded.class_names
    )
    by_class: dict[int, list[int]] = {}
    for i, case in enumerate(dataset.cases):
        by_class.setdefault(case.label, []).append(i)
    # Alternate the classes so a handful of cases shows both.
    order = [idx for group in zip(*by_class.values(), strict=False) for idx in group][:cases]
    methods = working_methods(loaded.model, dataset[order[0]].x[None], list(METHODS.names()))
    records: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    bar = make_progress() if progress else None
    task = bar.add_task("explaining", total=len(order), status="") if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        for i in order:
            item = dataset.cases[i]
            mask = read_image(item.mask) if item.mask is not None else None
            try:
                label = dataset.classes[item.label]
                records.append(explain_case(loaded, dataset.image(i), methods, out, mask=mask, label=label))
            except InputError as exc:
                failures.append({"input": item.image.name, "error": f"{item.image.name}: {exc}"})
            if bar is not None and task is not None:
                bar.update(task, advance=1, status=item.case_id)
    finally:
        if bar is not None:
            bar.stop()
    return records, failures, methods


def working_methods(model: torch.nn.Module, x: torch.Tensor, methods: list[str]) -> list[str]:
    """The methods that explain ``x`` without an error; the others are named in a warning.

    The demo shows what exists so far; a method still under construction must not sink it.
    """
    from medlrp.api import explain

    ok = []
    for method in methods:
        try:
            explain(model, x, method=method)
        except Exception as exc:  # any failure: leave the method out, say why
            _warn(f"method {method!r} left out of the demo ({type(exc).__name__}: {exc})")
        else:
            ok.append(method)
    if not ok:
        raise InputError("no explanation method works on the demo model")
    return ok


def evaluate_section(
    model_path: Path, data: Path, out: Path, cases: int, methods: list[str], progress: bool = True
) -> tuple[str | None, str]:
    """Run the metrics over ``cases`` test cases with ``methods``; return (markdown table, note)."""
    try:
        from medlrp.commands.evaluate import run_evaluate
    except ImportError as exc:  # the metrics package is optional for the demo's other steps
        return None, f"metrics not available ({exc})"
    try:
        run_evaluate(
            model_path,
            data,
            methods=methods,
            out=out,
            max_cases=cases,
            randomisation=False,
            progress=progress,
        )
    except Exception as exc:  # the evaluation is the demo's last, optional step: report, go on
        _warn(f"evaluation failed ({type(exc).__name__}: {exc})")
        return None, f"evaluation skipped ({type(exc).__name__}: {exc})"
    table = out / "metrics.md"
    return (table.read_text(encoding="utf-8") if table.is_file() else None), f"details in {out}"


def run_demo(
    out: Path,
    n: int = 400,
    epochs: int = 8,
    seed: int = 0,
    cases: int = 4,
    eval_cases: int = 40,
    progress: bool = True,
    size: int = 64,
) -> Path:
    """The whole demo; returns the report's path."""
    from medlrp.data.phantom import PhantomSpec
    from medlrp.pipeline import write_run_outputs
    from medlrp.report.html import ReportSection
    from medlrp.train.loop import TrainConfig

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    spec = PhantomSpec(kind="glioma", dims=2, n=n, seed=seed, size=size)
    info = run_phantom(data, spec, overwrite=True, progress=progress)
    typer.echo(f"1/4 phantom: {info['n']} glioma 2D cases in {data} ({_since(start)})")

    model_path = out / "model.pt"
    config = TrainConfig(epochs=epochs, batch_size=16, seed=seed)
    result = run_train(data, model_path, None, config, progress=progress)
    typer.echo(f"2/4 trained cnn2d ({_since(start)}): " + "; ".join(summary_lines(result)))
    test_acc = result.accuracy.get("test", float("nan"))
    if not test_acc >= 0.75:
        _warn(f"the demo model's test accuracy is only {test_acc:.3f}")

    records, failures, methods = explain_cases(model_path, data, out, cases, progress)
    typer.echo(
        f"3/4 explained {len(records)} test cases with {len(methods)} methods ({_since(start)}): "
        + ", ".join(methods)
    )

    table, note = evaluate_section(model_path, data, out / "evaluate", eval_cases, methods, progress)
    typer.echo(f"4/4 evaluation ({_since(start)}): {note}")

    accs = ", ".join(f"{k} {v:.3f}" for k, v in result.accuracy.items())
    summary = (
        f"Glioma 2D phantom ({info['n']['train']} train / {info['n']['val']} val / {info['n']['test']} test "
        f"cases, classes {', '.join(info['classes'])}); cnn2d trained for {epochs} epochs; "
        f"accuracy: {accs}. The masks mark the tumour."
    )
    sections = [ReportSection(title="Demo", markdown=summary)]
    if table is not None:
        sections.append(ReportSection(title=f"Metrics ({eval_cases} test cases at most)", markdown=table))
    run = {
        "model": "cnn2d",
        "data": str(data),
        "methods": ", ".join(methods),
        "test accuracy": f"{test_acc:.3f}",
    }
    _, report = write_run_outputs(
        records, out, failures=failures, run=run, title="medlrp demo", sections=sections
    )
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f} s")
    return report


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder."),
        n: int = typer.Option(400, "--n", help="Phantom cases in all."),
        epochs: int = typer.Option(8, "--epochs", help="Training epochs."),
        seed: int = typer.Option(0, "--seed", help="Seed of data and training."),
        cases: int = typer.Option(4, "--cases", help="Test cases to explain in the report."),
        eval_cases: int = typer.Option(40, "--eval-cases", help="Test cases to evaluate the methods on."),
        progress: opt.Progress = True,
        size: int = typer.Option(64, "--size", help="Phantom image size in pixels."),
        threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)."),
    ) -> None:
        """Phantom data -> train a small CNN -> explain -> evaluate -> HTML report."""
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder")
        if cases < 1 or eval_cases < 1:
            raise InputError("--cases and --eval-cases must be at least 1")
        if threads < 0:
            raise InputError(f"--threads must be 0 or more, not {threads}")
        import torch

        before = torch.get_num_threads()
        # The demo's models are tiny: a second thread gains little on an idle machine and costs many
        # times over on a busy one (threads spin-waiting on each other), so one thread by default.
        torch.set_num_threads(threads or before)
        try:
            report = run_demo(
                out,
                n=n,
                epochs=epochs,
                seed=seed,
                cases=cases,
                eval_cases=eval_cases,
                progress=progress,
                size=size,
            )
        finally:
            torch.set_num_threads(before)
        typer.echo(f"report: {report}")
