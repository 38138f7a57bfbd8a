"""``medlrp phantom``: write a synthetic dataset (glioma MRI, chest X-ray or 12-lead ECG) with masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medlrp.commands import options as opt
from medlrp.errors import InputError

# Written out, not imported from medlrp.data.phantom.confounds (keeps --help fast); a test checks both.
CONFOUND_HELP = "corner-token, border-marker, digits or ruler"
POSITION_HELP = (
    "corner-token: top-left, top-right, bottom-left, bottom-right; border-marker: any, top, bottom, "
    "left, right; digits: bottom, top; ruler: left, right, top, bottom (the first is the default)"
)

if TYPE_CHECKING:
    from medlrp.data.phantom import PhantomSpec


def run_phantom(
    out: Path, spec: PhantomSpec, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Write the dataset with a progress bar; return its ``dataset.json`` content."""
    from medlrp.data.phantom import write_phantom
    from medlrp.data.phantom.writer import prepare_output
    from medlrp.train.progress import make_progress

    spec = spec.checked()
    prepare_output(Path(out), overwrite)  # refuse a bad folder before a progress bar appears
    if not progress:
        return write_phantom(out, spec, overwrite=overwrite)
    with make_progress() as bar:
        what = f"{spec.dims}D" if spec.kind != "ecg" else spec.signal_format
        task = bar.add_task(f"phantom {spec.kind} {what}", total=spec.n, status="")
        return write_phantom(
            out, spec, overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done)
        )


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""

    @app.command("phantom")
    def phantom(
        out: Path = typer.Option(..., "--out", help="Dataset folder to write (empty or new)."),
        kind: str = typer.Option(
            "glioma", "--kind", help="glioma (brain MRI), chest (X-ray) or ecg (12 leads)."
        ),
        dims: int = typer.Option(2, "--dims", help="2 (PNG images) or 3 (NIfTI volumes)."),
        n: int = typer.Option(400, "--n", help="Number of cases in all (60/20/20% train/val/test)."),
        confounded: bool = typer.Option(
            False, "--confounded", help="Add a shortcut (--confound) that agrees with the class in train/val."
        ),
        confound: str | None = typer.Option(
            None,
            "--confound",
            help=f"The shortcut (implies --confounded): {CONFOUND_HELP} (default corner-token).",
        ),
        confound_size: float = typer.Option(
            1.0, "--confound-size", help="Factor on the shortcut's default size (0.25-4)."
        ),
        confound_position: str | None = typer.Option(
            None, "--confound-position", help=f"Where the shortcut goes: {POSITION_HELP}."
        ),
        agreement: str | None = typer.Option(
            None,
            "--agreement",
            help="Share of each class's train/val cases whose shortcut agrees with the class (implies "
            "--confounded): one rate (default 0.95; 0.5: independent of the class) or one per class, "
            "comma-separated.",
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
        size: int | None = typer.Option(
            None, "--size", help="Edge length in pixels (default 64 2D, 32 3D); ECG: samples (1000 = 10 s)."
        ),
        signal_format: str = typer.Option(
            "wfdb", "--format", help="ECG only: wfdb (.hea/.dat records) or npy (leads x samples)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a phantom dataset in --out."),
        progress: opt.Progress = True,
    ) -> None:
        """Write a phantom dataset: DIR/{train,val,test}/<class>/<case> with masks and dataset.json."""
        from medlrp.data.phantom import PhantomSpec

        if kind not in ("glioma", "chest", "ecg"):
            raise InputError(f"--kind must be glioma, chest or ecg, not {kind!r}")
        rates = tuple(opt.float_list(agreement, "--agreement")) if agreement is not None else None
        confounded = confounded or confound is not None or agreement is not None
        spec = PhantomSpec(
            kind,
            dims,
            n,
            confounded,
            seed,
            size,
            signal_format,
            confound=confound or "corner-token",
            confound_size=confound_size,
            confound_position=confound_position,
            **({"agreement": rates} if rates is not None else {}),
        )
        info = run_phantom(out, spec, overwrite=overwrite, progress=progress)
        counts = ", ".join(f"{k} {v}" for k, v in info["n"].items())
        what = f"{info['dims']}D" if kind != "ecg" else f"12-lead {info['image_format']}"
        typer.echo(f"wrote {info['kind']} {what} phantom ({counts}; classes {info['classes']}) to {out}")
