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
from medlrp.io.limits import MAX_BYTES, MAX_PIXELS, MAX_VOXELS, ReadLimits

HELP = (
    "Explain a model's decisions on scans: per input NAME.relevance.nii.gz (aligned with the input), "
    "NAME.overlay.png and a record in results.json; one self-contained report.html per run. "
    "Bad inputs are reported one line each and the others go on (exit code 2 at the end)."
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
    limits: ReadLimits | None = None,
) -> int:
    """The command's work; returns the exit code (0, or 2 when some input failed).

    Settings, the model and the output folder are checked before any input is explained. Each input is
    then read, explained and checked (:func:`medlrp.pipeline.compute_case`) and written
    (:func:`medlrp.pipeline.write_case`) on its own: a bad input is reported on one line naming it, the
    others go on, and ``results.json`` and ``report.html`` are written for those that finished.
    """
    import medlrp  # noqa: F401  (registers every method)
    from medlrp.devices import resolve_device
    from medlrp.io import DicomWriter, expand_input, find_mask, read_image, window_preset
    from medlrp.models import load_model
    from medlrp.pipeline import compute_case, unique_name, write_case, write_run_outputs
    from medlrp.preflight import check_methods, check_output_folder, check_target, probe_model

    check_methods(methods, composite)  # usage errors before any work
    preset = window_preset(window) if window else None
    loaded = load_model(model, trust_model=trust_model, device=resolve_device(device))
    check_target(target, loaded, probe_model(loaded, model))
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
    records, taken = [], set()
    dicom_writer = DicomWriter(keep_identifiers) if dicom else None  # one per run: consistent UIDs
    for item in items:
        try:
            image = read_image(item, index=index, limits=limits)
            sources = dicom_writer.sources(image) if dicom_writer else None  # grid checked before work
            mask_path = mask or find_mask(item)
            mask_image = read_image(mask_path, limits=limits) if mask_path is not None else None
            result = compute_case(
                loaded,
                image,
                methods,
                composite=composite,
                target=target,
                name=unique_name(item, set(taken)),
                mask=mask_image,
                window=preset,
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
        max_pixels: Annotated[
            int, typer.Option(help="Refuse 2D images with more pixels (checked before decoding).")
        ] = MAX_PIXELS,
        max_voxels: Annotated[
            int, typer.Option(help="Refuse volumes with more voxels (checked before decoding).")
        ] = MAX_VOXELS,
        max_bytes: Annotated[int, typer.Option(help="Refuse input files larger than this.")] = MAX_BYTES,
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
            limits=ReadLimits(max_pixels, max_voxels, max_bytes),
        )
        if code:
            # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
            # instead of raising it, and medlrp.cli.main would report success.
            raise SystemExit(code)
