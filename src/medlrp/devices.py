"""The ``--device`` value as a torch device, checked before any work."""

from __future__ import annotations

import torch

from medlrp.errors import InputError

#: Device kinds medlrp runs on.
DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:K", "mps")


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:K`` or ``mps`` as a device present on this machine.

    Args:
        device: The user's text (or a device); ``auto`` takes CUDA when available, ``cuda`` takes
            ``cuda:<local_rank>`` (torchrun's local rank, modulo the GPUs present).
        local_rank: This process's local rank under torchrun.

    Raises:
        InputError: an unknown device kind, or one this machine does not have.
    """
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and torch.cuda.is_available():
        text = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device!r}: unknown device (expected {', '.join(DEVICE_KINDS)})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {device!r}: only {torch.cuda.device_count()} GPU(s) on this machine")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {device!r}: MPS is not available on this machine")
    return dev
