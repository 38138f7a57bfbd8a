"""``medlrp explain --model M INPUT... [--method lrp] [--composite C] [--target K] [--out DIR]``.

Per input: ``NAME.relevance.nii.gz`` (aligned with the input), ``NAME.overlay.png``, a record in
``results.json``; one self-contained ``report.html`` for the run. A bad input is reported on one line and
the others go on; the exit code is 2 at the end if any input failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from medlrp.errors import InputError

HELP = (
    "Explain a model's decisions on scans: per input NAME.relevance.nii.gz (aligned with the input), "
    "NAME.overlay.png and a record in results.json; one self-contained report.html per run. "
    "Bad inputs are reported one line each and the others go on (exit code 2 at the end)."
)


def _fail(failures: list[dict[str, str]], source: Path | str, exc: InputError) -> None:
    message = str(exc)
    print(f"medlrp: error: {message}", file=sys.stderr)
    failures.append({"input": Path(source).name, "error": message})


def run_explain(
    model: Path,
    inputs: list[Path],
    *,
    methods: list[str],
    out: Path,
    composite: str | None = None,
    target: str | None = None,
    keep_identifiers: bool = False,
    trust_model: bool = False,
    window: str | None = None,
    index: int | None = None,
    mask: Path | None = None,
    device: str = "cpu",
    dicom: bool = False,
) -> int:
    """The command's work; returns the exit code (0, or 2 when some input failed)."""
    import medlrp  # noqa: F401  (registers every method)
    from medlrp.io import DicomWriter, expand_input, find_mask, read_image, window_preset
    from medlrp.models import load_model
    from medlrp.pipeline import explain_case, unique_name, write_run_outputs
    from medlrp.registry import METHODS

    for name in methods:
        METHODS.get(name)  # an unknown method is a usage error before any work
    preset = window_preset(window) if window else None
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
    loaded = load_model(model, trust_model=trust_model, device=device)
    items: list[Path] = []
    failures: list[dict[str, str]] = []
    for path in inputs:
        try:
            items.extend(expand_input(path))
        except InputError as exc:
            _fail(failures, path, exc)
    if mask is not None and len(items) != 1:
        raise InputError(f"--mask {mask} needs exactly one input, got {len(items)}")
    records, taken = [], set()
    dicom_writer = DicomWriter(keep_identifiers) if dicom else None  # one per run: consistent UIDs
    for item in items:
        try:
            image = read_image(item, index=index)
            sources = dicom_writer.sources(image) if dicom_writer else None  # grid checked before work
            mask_path = mask or find_mask(item)
            mask_image = read_image(mask_path) if mask_path is not None else None
            record = explain_case(
                loaded,
                image,
                methods,
                out,
                composite=composite,
                target=target,
                keep_identifiers=keep_identifiers,
                name=unique_name(item, taken),
                mask=mask_image,
                window=preset,
            )
            if dicom_writer is not None:
                if sources is None:
                    print(f"medlrp: note: {item.name}: not DICOM, no DICOM outputs", file=sys.stderr)
                else:
                    shown = preset or loaded.preprocessing.window
                    dicom_writer.write_case(out, record, image, shown, sources)
        except InputError as exc:
            _fail(failures, item, exc)
            continue
        records.append(record)
        print(
            f"{record['case']}: {record['prediction_name']} (p={record['probability']:.3f}), "
            f"{', '.join(methods)} in {record['timing']['total_s']:.2f} s"
        )
    run = {
        "model": model.name,
        "arch": loaded.arch,
        "methods": ",".join(methods),
        "composite": composite,
        "window": window,
        "cases": len(records),
        "failed": len(failures),
    }
    results, report = write_run_outputs(records, out, failures=failures, run=run)
    print(f"wrote {results} and {report}")
    return 2 if failures else 0


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("explain", help=HELP)
    def explain(
        inputs: Annotated[
            list[Path],
            typer.Argument(
                metavar="INPUT...",
                help="DICOM files, DICOM series folders, NIfTI, PNG/JPEG, or folders of these.",
            ),
        ],
        model: Annotated[Path, typer.Option("--model", help="medlrp checkpoint or TorchScript archive.")],
        method: Annotated[
            str, typer.Option(help="Method(s), comma-separated: one overlay per method.")
        ] = "lrp",
        composite: Annotated[str | None, typer.Option(help="LRP composite (default: the model's).")] = None,
        target: Annotated[str | None, typer.Option(help="Class index or name (default: predicted).")] = None,
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("explain-out"),
        keep_identifiers: Annotated[
            bool, typer.Option("--keep-identifiers", help="Keep patient identifiers in the outputs.")
        ] = False,
        trust_model: Annotated[
            bool, typer.Option("--trust-model", help="Allow loading a pickled model (only files you trust).")
        ] = False,
        window: Annotated[
            str | None, typer.Option(help="Intensity window preset: brain, lung, bone, soft-tissue.")
        ] = None,
        index: Annotated[int | None, typer.Option(help="Volume of a 4D NIfTI to explain (0-based).")] = None,
        mask: Annotated[
            Path | None, typer.Option(help="Region mask for a single input (default: <case>_mask.<ext>).")
        ] = None,
        device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
        dicom: Annotated[
            bool,
            typer.Option(
                "--dicom",
                help="Also write DICOM for DICOM inputs: NAME.relevance.dcm (Parametric Map) and "
                "NAME.overlay/ (Secondary Capture); de-identified unless --keep-identifiers.",
            ),
        ] = False,
    ) -> None:
        methods = [m.strip() for m in method.split(",") if m.strip()]
        if not methods:
            raise InputError("--method needs at least one method name")
        code = run_explain(
            model,
            inputs,
            methods=methods,
            out=out,
            composite=composite,
            target=target,
            keep_identifiers=keep_identifiers,
            trust_model=trust_model,
            window=window,
            index=index,
            mask=mask,
            device=device,
            dicom=dicom,
        )
        if code:
            # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
            # instead of raising it, and medlrp.cli.main would report success.
            raise SystemExit(code)
