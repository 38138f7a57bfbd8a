"""Device names as the command line takes them: ``auto``, ``cpu``, ``cuda``, ``cuda:K``."""

from __future__ import annotations

import torch

from medlrp.errors import InputError


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``device``.

    Args:
        device: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:K``.
        local_rank: This process's local rank under ``torchrun``: ``auto``/``cuda`` take GPU
            ``local_rank`` modulo the GPU count.

    Raises:
        InputError: An unknown device name, or a GPU asked for that this machine does not have.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:K)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return dev
