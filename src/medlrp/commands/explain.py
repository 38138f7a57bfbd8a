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

from medlrp.commands import options as opt
from medlrp.errors import InputError

HELP = (
    "Explain a model's decisions on scans: per input and method NAME.METHOD.relevance.nii.gz (aligned "
    "with the input) and NAME.METHOD.overlay.png, a record in results.json; one self-contained "
    "report.html per run. Bad inputs are reported one line each and the others go on (exit code 2 at "
    "the end)."
)


def _fail(failures: list[dict[str, str]], source: Path | str, exc: InputError) -> None:
    message = str(exc)
    print(f"medlrp: error: {message}", file=sys.stderr)
    failures.append({"input": Path(source).name, "error": message})


def folder_label(path: Path, class_names: list[str]) -> str | None:
    """The true class of an input laid out as ``DIR/<class name>/<case>``, or None.

    The input's folder (or, for a file of a DICOM series folder, the folder above) when its name is one
    of the model's classes.
    """
    for folder in (path.parent, path.parent.parent):
        if folder.name in class_names:
            return folder.name
    return None


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
    device: str = "auto",
    progress: bool = True,
    dicom: bool = False,
) -> int:
    """The command's work; returns the exit code (0, or 2 when some input failed).

    Settings, the model and the paths are checked before any input is read or any file written: a bad
    one is one :class:`InputError`, whatever the number of inputs.
    """
    from medlrp.io import DicomWriter, expand_input, find_mask, read_image, window_preset
    from medlrp.models import load_model
    from medlrp.pipeline import class_index, explain_case, unique_name, write_run_outputs

    methods = opt.method_list(",".join(methods))
    opt.check_composite(composite)
    opt.check_paths([*inputs, *([mask] if mask is not None else [])])
    preset = window_preset(window) if window else None
    target = opt.target_value(target)
    loaded = load_model(model, trust_model=trust_model, device=opt.resolve_device(device))
    class_index(target, loaded.class_names, len(loaded.class_names) or None)
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
                label=folder_label(item, loaded.class_names),
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
        if progress:  # one line per case as it is done: the command's progress
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
        model: opt.Model,
        methods: opt.Methods = "lrp",
        composite: opt.Composite = None,
        target: Annotated[
            str | None, typer.Option(help="Class index or class name (default: the prediction).")
        ] = None,
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("explain-out"),
        keep_identifiers: opt.KeepIdentifiers = False,
        trust_model: opt.TrustModel = False,
        window: Annotated[
            str | None, typer.Option(help="Intensity window preset: brain, lung, bone, soft-tissue.")
        ] = None,
        index: Annotated[int | None, typer.Option(help="Volume of a 4D NIfTI to explain (0-based).")] = None,
        mask: Annotated[
            Path | None, typer.Option(help="Region mask for a single input (default: <case>_mask.<ext>).")
        ] = None,
        device: opt.Device = "auto",
        progress: opt.Progress = True,
        dicom: Annotated[
            bool,
            typer.Option(
                "--dicom",
                help="Also write DICOM for DICOM inputs: NAME.relevance.dcm (Parametric Map) and "
                "NAME.overlay/ (Secondary Capture); de-identified unless --keep-identifiers.",
            ),
        ] = False,
    ) -> None:
        code = run_explain(
            model,
            inputs,
            methods=opt.method_list(methods),
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
            progress=progress,
        )
        if code:
            # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
            # instead of raising it, and medlrp.cli.main would report success.
            raise SystemExit(code)
