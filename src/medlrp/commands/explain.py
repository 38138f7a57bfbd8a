"""``medlrp explain --model M INPUT... [--method lrp] [--composite C] [--target K] [--out DIR]``.

Per input: ``NAME.relevance.nii.gz`` (aligned with the input), ``NAME.overlay.png``, a record in
``results.json``; one self-contained ``report.html`` for the run. A bad input is reported on one line and
the others go on; the exit code is 2 at the end if any input failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medlrp.commands import options as opt
from medlrp.errors import InputError

if TYPE_CHECKING:
    from medlrp.io.limits import ReadLimits

HELP = (
    "Explain a model's decisions on scans: per input NAME.relevance.nii.gz (aligned with the input) and "
    "NAME.overlay.png (NAME.METHOD.* for each method when several run), a record in results.json; one "
    "self-contained report.html per run. Bad inputs are reported one line each and the others go on "
    "(exit code 2 at the end)."
)


def _fail(failures: list[dict[str, str]], source: Path | str, exc: Exception) -> None:
    """Report one failed input on one line (naming the file) and remember it for results.json.

    ``results.json`` names the file by its name only: a full path may carry a patient's name.
    """
    message = " ".join(str(exc).split())
    if not isinstance(exc, InputError):  # an unexpected error stays this input's: name the file
        message = f"{source}: {type(exc).__name__}: {message}"
    print(f"medlrp: error: {message}", file=sys.stderr)
    name = Path(source).name
    failures.append({"input": name, "error": message.replace(str(source), name)})


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _earlier_output(item: Path, given: Path, out: Path) -> bool:
    """True for what an earlier run wrote into ``out`` inside the input folder ``given``.

    With ``--out`` below the input folder everything under it is output; with ``--out`` the input folder
    itself, the files named as outputs (``*.relevance.nii.gz``, ``*.overlay.png``).
    """
    from medlrp.pipeline import is_output_name

    if item == given or not _inside(out, given) or not _inside(item, out):
        return False
    return out.resolve() != given.resolve() or is_output_name(item.name)


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
    limits: ReadLimits | None = None,
    region: str | None = None,
    layer: str | None = None,
) -> int:
    """The command's work; returns the exit code (0, or 2 when some input failed).

    Settings, the model, the paths and the output folder are checked before any input is read or any
    file written: a bad one is one :class:`InputError`, whatever the number of inputs. Each input is then
    read, explained and checked (:func:`medlrp.pipeline.compute_case`) and written
    (:func:`medlrp.pipeline.write_case`) on its own: a bad input is reported on one line naming it, the
    others go on, and ``results.json`` and ``report.html`` are written for those that finished.
    """
    from medlrp.io import DicomWriter, expand_input, find_mask, read_image, window_preset
    from medlrp.models import load_model
    from medlrp.pipeline import compute_case, unique_name, write_case, write_run_outputs
    from medlrp.preflight import (
        check_methods,
        check_model_methods,
        check_output_folder,
        check_target,
        probe_model,
    )
    from medlrp.region_case import PREDICTED, check_region_option

    methods = opt.method_list(",".join(methods))
    opt.check_composite(composite)
    check_methods(methods, composite, layer)
    opt.check_paths([*inputs, *([mask] if mask is not None else [])])
    preset = window_preset(window) if window else None
    target = opt.target_value(target)
    loaded = load_model(model, trust_model=trust_model, device=opt.resolve_device(device))
    check_model_methods(loaded, methods, layer, model)
    check_target(target, loaded, probe_model(loaded, model))
    check_region_option(loaded, region, str(model))
    region_file = Path(region) if region is not None and region != PREDICTED else None
    if region_file is not None:
        opt.check_paths([region_file])
    check_output_folder(out)
    items: list[Path] = []
    failures: list[dict[str, str]] = []
    for path in inputs:
        try:
            found = expand_input(path)
        except InputError as exc:
            _fail(failures, path, exc)
            continue
        items.extend(item for item in found if not _earlier_output(item, path, out))
    if mask is not None and len(items) != 1:
        raise InputError(f"--mask {mask} needs exactly one input, got {len(items)}")
    if region_file is not None and len(items) != 1:
        raise InputError(f"--region {region_file} needs exactly one input, got {len(items)}")
    records, taken = [], set()
    dicom_writer = DicomWriter(keep_identifiers) if dicom else None  # one per run: consistent UIDs
    for item in items:
        try:
            image = read_image(item, index=index, limits=limits)
            sources = dicom_writer.sources(image) if dicom_writer else None  # grid checked before work
            mask_path = mask or find_mask(item)
            mask_image = read_image(mask_path, limits=limits) if mask_path is not None else None
            region_image = read_image(region_file, limits=limits) if region_file is not None else None
            result = compute_case(
                loaded,
                image,
                methods,
                composite=composite,
                target=target,
                name=unique_name(item, set(taken)),
                mask=mask_image,
                window=preset,
                label=folder_label(item, loaded.class_names),
                region=region_image if region_file is not None else region,
                layer=layer,
            )
            record = write_case(result, out, keep_identifiers=keep_identifiers)
            if dicom_writer is not None:
                if sources is None:
                    print(f"medlrp: note: {item.name}: not DICOM, no DICOM outputs", file=sys.stderr)
                else:
                    shown = preset or loaded.preprocessing.window
                    dicom_writer.write_case(out, record, image, shown, sources)
        except Exception as exc:  # one input's failure is reported and the others go on
            _fail(failures, item, exc)
            continue
        taken.add(record["case"])
        records.append(record)
        if progress:  # one line per case as it is done: the command's progress
            took = record["timing"]["total_s"]
            print(f"{record['case']}: {_summary(record)}, {', '.join(methods)} in {took:.2f} s")
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


def _summary(record: dict[str, Any]) -> str:
    """The prediction in a few words: the class and its probability, or the explained region."""
    if "region" in record:
        r = record["region"]
        return f"{r['class']}, {r['source']} region of {r['voxels']} voxels (logit sum {r['logit_sum']:.4g})"
    return f"{record['prediction_name']} (p={record['probability']:.3f})"


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
        max_pixels: opt.MaxPixels = None,
        max_voxels: opt.MaxVoxels = None,
        max_bytes: opt.MaxBytes = None,
        region: Annotated[
            str | None,
            typer.Option(
                help="Segmentation models: explain the --target class's logits summed over a region: "
                "'predicted' (where the class wins; the default) or a mask file on the scan's grid.",
            ),
        ] = None,
        layer: opt.Layer = None,
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
            limits=opt.read_limits(max_pixels, max_voxels, max_bytes),
            region=region,
            layer=layer,
        )
        if code:
            # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
            # instead of raising it, and medlrp.cli.main would report success.
            raise SystemExit(code)
