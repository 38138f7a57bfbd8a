"""`medlrp batch`: explain a whole dataset folder, resumably, on one process or many under torchrun.

Exit codes: 0 every case done; 2 bad usage/input, or some cases failed (listed in ``OUT/errors.jsonl``,
the others are done); 1 internal error. Under ``torchrun`` every rank exits 2 when any case failed and
the launcher itself then reports a failed worker (its own exit code is 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medlrp.commands import options as opt


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("batch")
    def batch(
        model: opt.Model,
        data: Path = typer.Option(
            ..., "--data", help="Dataset folder: <class>/<case>.<ext> (+ _mask), train/val/test, or flat."
        ),
        out: Path = typer.Option(..., "--out", help="Output folder; rerunning into it resumes."),
        methods: opt.Methods = "lrp",
        composite: opt.Composite = None,
        layer: opt.Layer = None,
        target: str | None = typer.Option(
            None,
            "--target",
            help="Class index K or class name (as explain), 'label' (the class folder) or 'predicted'; "
            "default: the prediction.",
        ),
        workers: int = typer.Option(2, "--workers", help="Reader processes (0: read in this process)."),
        writers: int = typer.Option(
            1, "--writers", help="Processes writing outputs while the next batch is explained (0: none)."
        ),
        batch_size: int = typer.Option(8, "--batch-size", help="Cases per explanation call."),
        device: opt.Device = "auto",
        trust_model: opt.TrustModel = False,
        keep_identifiers: opt.KeepIdentifiers = False,
        progress: opt.Progress = True,
        dicom: bool = typer.Option(
            False,
            "--dicom",
            help="Also write DICOM for DICOM cases: NAME.relevance.dcm (Parametric Map) and NAME.overlay/ "
            "(Secondary Capture); de-identified unless --keep-identifiers.",
        ),
        max_pixels: opt.MaxPixels = None,
        max_voxels: opt.MaxVoxels = None,
        max_bytes: opt.MaxBytes = None,
        region: str | None = typer.Option(
            None,
            "--region",
            help="Segmentation models: explain the target class's logits summed over 'predicted' (where "
            "the class wins; the default) or 'mask' (each case's <case>_mask file).",
        ),
    ) -> None:
        """Explain every case of a dataset folder; resumable; scales out under torchrun."""
        from medlrp.batch import BatchOptions, run_batch

        opt.check_composite(composite)
        summary = run_batch(
            BatchOptions(
                model=model,
                data=data,
                out=out,
                methods=opt.method_list(methods),
                composite=composite,
                target=opt.target_value(target),
                workers=workers,
                writers=writers,
                batch_size=batch_size,
                device=device,
                trust_model=trust_model,
                keep_identifiers=keep_identifiers,
                progress=progress,
                dicom=dicom,
                limits=opt.read_limits(max_pixels, max_voxels, max_bytes),
                region=region,
                layer=layer,
            )
        )
        where = f" (rank {summary.rank} of {summary.world_size})" if summary.world_size > 1 else ""
        print(
            f"medlrp batch{where}: {summary.assigned} cases, {summary.skipped} done before, "
            f"{summary.done} done now, {summary.failed} failed; "
            f"{summary.cases_per_second:.2f} cases/s; index: {out / 'index.jsonl'}",
            file=sys.stderr,
        )
        if summary.exit_code:
            print(
                f"medlrp: error: {summary.failed_all} case(s) failed, see {out / 'errors.jsonl'}",
                file=sys.stderr,
            )
            # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
            # instead of raising it, and medlrp.cli.main would report success.
            raise SystemExit(summary.exit_code)
