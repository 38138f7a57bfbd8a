"""medlrp checkpoints and model loading (``--model``): safe by default.

A checkpoint is a plain dict saved with :func:`torch.save` and read with ``weights_only=True``::

    {"format": "medlrp-checkpoint", "version": 1, "arch": str, "arch_kwargs": dict,
     "state_dict": dict[str, Tensor], "preprocessing": dict, "class_names": list[str], "extra": dict,
     "task": "classification" | "segmentation"}

A checkpoint without ``task`` (written before segmentation existed) is a classifier. A segmentation
model's ``class_names`` are its output channels (``background`` first).

TorchScript archives are accepted too; arbitrary pickles only with ``trust_model=True``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medlrp.devices import resolve_device
from medlrp.errors import InputError
from medlrp.io.image import atomic_path
from medlrp.models.preprocessing import Preprocessing
from medlrp.registry import ARCHITECTURES

FORMAT = "medlrp-checkpoint"


@dataclass
class LoadedModel:
    """A model ready to explain, with what is needed to feed it and name its classes."""

    model: torch.nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    arch: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)
    #: The architecture factory's keyword arguments (medlrp checkpoints only).
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    #: ``"classification"`` (logits ``(N, classes)``), ``"segmentation"`` (``(N, classes, *spatial)``),
    #: or ``"unknown"`` (TorchScript and pickled models: the output's shape tells).
    task: str = "classification"


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    preprocessing: Preprocessing,
    class_names: list[str],
    extra: dict[str, Any] | None = None,
    task: str = "classification",
) -> Path:
    """Write a medlrp checkpoint atomically (``task``: ``classification`` or ``segmentation``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": 1,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": state,
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(class_names),
        "extra": dict(extra or {}),
        "task": task,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(
    path: str | Path, trust_model: bool = False, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a medlrp checkpoint, a TorchScript archive, or (``trust_model=True`` only) a pickled model.

    Raises:
        InputError: missing or unreadable file, a pickle without ``trust_model``, an unknown architecture,
            an unknown or absent device.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: model file not found")
    device = resolve_device(device)
    if _is_torchscript(p):
        try:
            model = torch.jit.load(str(p), map_location=device)
        except Exception as exc:
            raise InputError(f"{p}: cannot load TorchScript model ({exc})") from None
        model.eval()
        return LoadedModel(
            model=model, preprocessing=Preprocessing(), class_names=[], arch="torchscript", task="unknown"
        )
    if not _is_torch_file(p):
        raise InputError(f"{p}: not a model file (neither a PyTorch checkpoint nor a TorchScript archive)")
    try:
        payload = torch.load(p, map_location=device, weights_only=True)
    except Exception:
        if not trust_model:
            # torch's own message advises weights_only=False, which medlrp refuses: not repeated here.
            raise InputError(
                f"{p}: not a medlrp checkpoint or TorchScript archive, and arbitrary pickles are refused "
                "(pass --trust-model only for files you trust)"
            ) from None
        payload = torch.load(p, map_location=device, weights_only=False)
    if isinstance(payload, torch.nn.Module):
        payload.eval()
        return LoadedModel(
            model=payload, preprocessing=Preprocessing(), class_names=[], arch="pickle", task="unknown"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{p}: not a medlrp checkpoint (no 'format: {FORMAT}' entry)")
    factory = ARCHITECTURES.get(str(payload["arch"]))
    model = factory(**payload["arch_kwargs"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{p}: weights do not fit architecture {payload['arch']!r} ({exc})") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
        class_names=list(payload["class_names"]),
        arch=str(payload["arch"]),
        extra=dict(payload.get("extra", {})),
        arch_kwargs=dict(payload["arch_kwargs"]),
        task=str(payload.get("task", "classification")),
    )


def _is_torch_file(path: Path) -> bool:
    """A zip archive (``torch.save``'s format) or a pickle (protocol 2 and later start with 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as fh:
        return fh.read(1) == b"\x80"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or name.endswith("/code/") for name in zf.namelist())
