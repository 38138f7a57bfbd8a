"""Checks a run makes before it explains anything: methods, model, target class, output folder.

A usage mistake or a model that cannot run costs one line and no work (exit code 2), instead of one
failure per input. ``medlrp explain`` and ``medlrp batch`` both run these.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from medlrp.errors import InputError, OutputError
from medlrp.models import LoadedModel
from medlrp.pipeline import class_index, device_of


def check_methods(methods: Sequence[str], composite: str | None = None, layer: str | None = None) -> None:
    """Refuse unknown methods, and a composite or a layer when no method takes one, before any work.

    Raises:
        InputError: an unknown method name, ``composite`` given without ``lrp`` among ``methods``, or
            ``layer`` given without a CAM method.
    """
    from medlrp.registry import METHODS

    if not methods:
        raise InputError("no method given (--method lrp,gradcam,...)")
    for method in methods:
        METHODS.get(method)
    if composite is not None and "lrp" not in methods:
        raise InputError(
            f"--composite {composite} applies to the lrp method only, and the methods asked for are "
            f"{', '.join(methods)}; drop --composite or add lrp"
        )
    if layer is not None and not any(METHODS.trait(m, "layer") for m in methods):
        cams = ", ".join(m for m in METHODS if METHODS.trait(m, "layer"))
        raise InputError(
            f"--layer {layer} applies to the CAM methods ({cams}) only, and the methods asked for are "
            f"{', '.join(methods)}; drop --layer or add a CAM method"
        )


def check_model_methods(
    loaded: LoadedModel, methods: Sequence[str], layer: str | None, source: Path | str
) -> None:
    """Refuse, before any work, what the model cannot do: LRP or a CAM of TorchScript, an unknown layer.

    Raises:
        InputError: One line naming the model file: a TorchScript model with ``lrp`` or a CAM method
            (neither sees inside it), or ``layer`` naming no module of the model (:func:`check_layer`).
    """
    from medlrp.registry import METHODS

    needs_modules = [m for m in methods if METHODS.trait(m, "layer") or METHODS.trait(m, "composite")]
    if isinstance(loaded.model, torch.jit.ScriptModule) and needs_modules:
        raise InputError(
            f"{source}: a TorchScript model, and {', '.join(needs_modules)} need(s) its layers (LRP its "
            "operations, a CAM a hook on a layer), which TorchScript hides; explain the Python model (a "
            "medlrp checkpoint), or use a gradient method (gradient, input-x-gradient, "
            "integrated-gradients, smoothgrad, occlusion)"
        )
    check_layer(loaded, layer, source)


def check_layer(loaded: LoadedModel, layer: str | None, source: Path | str) -> None:
    """Refuse a ``--layer`` that names no module of the model (``None`` passes).

    Raises:
        InputError: One line naming the model file and the layer, with the closest module names.
    """
    from medlrp.cam.layers import find_layer

    if layer is not None:
        try:
            find_layer(loaded.model, layer, what="--layer")
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


def probe_model(loaded: LoadedModel, source: Path | str) -> int | None:
    """Run the model once on a zero input of its preprocessing's shape; return its number of outputs.

    A checkpoint whose preprocessing does not fit its model (a ViT given another image size) then fails
    once, naming the model, instead of once per input. Eval mode, no graph; the model is left as it was.

    Raises:
        InputError: the model does not run on the input its preprocessing makes.
    """
    from medlrp.cam.guard import explaining

    pre = loaded.preprocessing
    shape = (1, int(pre.channels), *(int(n) for n in pre.size))
    x = torch.zeros(shape, device=device_of(loaded.model))
    try:
        with explaining(loaded.model), torch.no_grad():
            out = loaded.model(x)
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise InputError(
            f"{source}: the model does not run on the input its preprocessing makes {shape} "
            f"({type(exc).__name__}: {message})"
        ) from None
    out = getattr(out, "logits", out)
    if isinstance(out, tuple | list) and out:
        out = out[0]
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim >= 2 else None


def check_target(target: int | str | None, loaded: LoadedModel, classes: int | None) -> int | str | None:
    """Refuse a target class beyond the model's ``classes`` (or its class names) before any work.

    Returns:
        The target as a class index (a class name resolved), or ``None``/``"label"`` unchanged.

    Raises:
        InputError: ``--target`` names no class of the model (an unknown name: one line listing the names).
    """
    if target is None or target == "label":
        return target
    wanted = class_index(target, loaded.class_names)
    known = classes if classes is not None else (len(loaded.class_names) or None)
    if wanted is not None and (wanted < 0 or (known is not None and wanted >= known)):
        names = ", ".join(f"{k}={n}" for k, n in enumerate(loaded.class_names))
        listed = f" ({names})" if names else ""
        raise InputError(f"--target {target} out of range: the model has {known} classes{listed}")
    return wanted


def check_output_folder(out_dir: str | Path) -> Path:
    """Make sure ``out_dir`` is (or can become) a folder this process can write into; return it.

    Called before any explaining, so an output-location problem costs no work.

    Raises:
        OutputError: ``out_dir`` is a file, cannot be created, or is not writable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the output folder exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medlrp-write-check.", suffix=".part", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write into the output folder: {exc.strerror or exc}") from None
    return out
