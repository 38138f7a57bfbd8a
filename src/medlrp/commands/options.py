"""The options every command spells the same way, and their checks (run once, before any work).

One grammar across commands: ``--methods`` (alias ``--method``), ``--composite``, ``--layer``, ``--target``,
``--device`` (default ``auto``: CUDA when available, else the CPU), ``--progress/--no-progress`` (alias
``--quiet``), ``--model``, ``--trust-model``, ``--keep-identifiers``. Help texts list the known names from
the registries without importing them (:meth:`medlrp.registry.Registry.known_names`), so ``--help``
stays fast; the checks import the registries and raise :class:`~medlrp.errors.InputError` (one line,
exit code 2) before a model is loaded or a file written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medlrp.errors import InputError
from medlrp.registry import ARCHITECTURES, COMPOSITES, METHODS

if TYPE_CHECKING:
    from medlrp.io.limits import ReadLimits


def _names(registry: object) -> str:
    return ", ".join(registry.known_names())  # type: ignore[attr-defined]


MODEL_HELP = "medlrp checkpoint (written by medlrp train) or TorchScript archive."
METHODS_HELP = f"Methods, comma-separated. Known: {_names(METHODS)}."
COMPOSITE_HELP = f"LRP composite (default: epsilon-plus-flat, attnlrp for ViTs). Known: {_names(COMPOSITES)}."
ARCH_HELP = f"Architecture (default: cnn2d or cnn3d after the data). Known: {_names(ARCHITECTURES)}."
DEVICE_HELP = "auto (CUDA when available, else cpu), cpu, cuda or cuda:K."
LAYER_HELP = (
    "CAM methods: the layer, a dotted module name (e.g. layer4, decoders.2; NAME:K for call K of a module "
    "run several times). Default: the last convolutional block of a classifier, the bottleneck of a "
    "segmentation network."
)

Model = Annotated[Path, typer.Option("--model", help=MODEL_HELP)]
Methods = Annotated[str, typer.Option("--methods", "--method", help=METHODS_HELP)]
Composite = Annotated[str | None, typer.Option("--composite", help=COMPOSITE_HELP)]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Layer = Annotated[str | None, typer.Option("--layer", help=LAYER_HELP)]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", " /--quiet", help="Show progress bars.")]
TrustModel = Annotated[
    bool, typer.Option("--trust-model", help="Allow loading a pickled model (only files you trust).")
]
KeepIdentifiers = Annotated[
    bool, typer.Option("--keep-identifiers", help="Keep patient identifiers in the outputs.")
]
# size limits checked from the header before decoding (defaults in medlrp.io.limits, imported late)
MaxPixels = Annotated[
    int | None,
    typer.Option("--max-pixels", help="Refuse 2D images with more pixels (default 2**26; before decoding)."),
]
MaxVoxels = Annotated[
    int | None,
    typer.Option("--max-voxels", help="Refuse volumes with more voxels (default 2**28; before decoding)."),
]
MaxBytes = Annotated[
    int | None, typer.Option("--max-bytes", help="Refuse input files larger than this (default 2**32).")
]


def method_list(text: str) -> list[str]:
    """``"lrp, gradcam"`` -> ``["lrp", "gradcam"]``, each a registered method.

    Raises:
        InputError: No name, or an unknown one (the message lists the known methods).
    """
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise InputError(f"--methods needs at least one method name; known: {', '.join(METHODS.names())}")
    for name in names:
        METHODS.get(name)
    return list(dict.fromkeys(names))


def float_list(text: str, option: str) -> list[float]:
    """``"0.9, 0.8"`` -> ``[0.9, 0.8]``: comma-separated numbers (the grammar of ``--methods``).

    Raises:
        InputError: No number, or a value that is not one (the message names ``option``).
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, not {text!r}") from None
    if not values:
        raise InputError(f"{option} needs at least one number")
    return values


def auto_none_or_number(text: str, option: str) -> float | str | None:
    """``"auto"`` -> ``"auto"``, ``"none"`` -> ``None``, else a finite number >= 0 (case and blanks ignored).

    Raises:
        InputError: Anything else (the message names ``option`` and what it takes).
    """
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    try:
        value = float(word)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise InputError(f"{option} takes auto, none or a number >= 0, not {text!r}")
    return value


def check_at_least_zero(value: float, option: str, unit: str = "") -> None:
    """``value >= 0``, else an :class:`InputError` naming ``option`` (``unit``: e.g. ``" epochs"``)."""
    if not value >= 0:
        raise InputError(f"{option} must be >= 0{unit}, not {value}")


def check_needs(flag: str, given: dict[str, bool]) -> None:
    """Options that only apply with ``flag``: each name in ``given`` mapped to True is refused.

    Raises:
        InputError: The first option given without ``flag``.
    """
    for option, present in given.items():
        if present:
            raise InputError(f"{option} applies to {flag} only; add {flag} or leave {option} out")


def check_composite(name: str | None) -> None:
    """An unknown ``--composite`` is an :class:`InputError` listing the known ones."""
    if name is not None:
        COMPOSITES.get(name)


def check_architecture(name: str | None) -> None:
    """An unknown ``--arch`` is an :class:`InputError` listing the known ones."""
    if name is not None:
        ARCHITECTURES.get(name)


def check_paths(paths: Iterable[Path], what: str = "input") -> None:
    """Every path exists; else an :class:`InputError` naming the first missing one."""
    for path in paths:
        if not Path(path).exists():
            raise InputError(f"{path}: {what} not found")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; other names checked.

    Raises:
        InputError: An unknown device, or CUDA asked for where there is none.
    """
    from medlrp.devices import resolve_device as resolve

    return str(resolve(device))


def target_value(target: str | None) -> str | None:
    """``predicted`` (or nothing) -> None: explain the prediction; other values pass unchanged."""
    if target is None or target.strip().lower() == "predicted":
        return None
    return target.strip()


def read_limits(max_pixels: int | None, max_voxels: int | None, max_bytes: int | None) -> ReadLimits:
    """The readers' :class:`~medlrp.io.limits.ReadLimits` from the options (``None``: the default).

    Raises:
        InputError: A limit below 1.
    """
    from medlrp.io.limits import ReadLimits

    given = {"max_pixels": max_pixels, "max_voxels": max_voxels, "max_bytes": max_bytes}
    return ReadLimits(**{k: v for k, v in given.items() if v is not None})
