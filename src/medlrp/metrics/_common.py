"""Shared plumbing of the metrics: shape checks, broadcasting, and safe batched prediction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from medlrp.errors import InputError


def check_batch(x: torch.Tensor, name: str = "x") -> None:
    """Refuse anything but a signal ``(N, C, L)``, 2D ``(N, C, H, W)`` or 3D ``(N, C, D, H, W)`` batch."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4, 5):
        raise InputError(
            f"{name} must be (N, C, L), (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}"
        )


def broadcast_map(a: torch.Tensor, shape: torch.Size, name: str, against: str = "x") -> torch.Tensor:
    """Broadcast a map of ``(N, 1 or C, *spatial)`` to ``shape``; anything else is an InputError."""
    if not isinstance(a, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    ok = a.ndim == len(shape) and a.shape[0] == shape[0] and a.shape[2:] == shape[2:]
    if not ok or a.shape[1] not in (1, shape[1]):
        raise InputError(
            f"{name} of shape {tuple(a.shape)} does not fit {against} of shape {tuple(shape)} "
            "(expected the same shape, or a channel dimension of 1)"
        )
    return a.expand(shape)


def common_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> torch.Size:
    """The shape two per-sample maps broadcast to (channel 1 broadcasts); checks both are batches."""
    check_batch(a, name_a)
    check_batch(b, name_b)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:] or 1 not in (a.shape[1], b.shape[1]):
        if a.shape != b.shape:
            raise InputError(
                f"{name_a} of shape {tuple(a.shape)} does not fit {name_b} of shape {tuple(b.shape)} "
                "(expected the same shape, or a channel dimension of 1)"
            )
    return torch.broadcast_shapes(a.shape, b.shape)


def flat(a: torch.Tensor) -> torch.Tensor:
    """``(N, ...) -> (N, F)`` (a copy only where the layout needs one)."""
    return a.reshape(a.shape[0], -1)


@contextmanager
def inference_mode_of(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate ``model`` in eval mode without gradients; every module's ``training`` flag is restored.

    Why: a model left in training mode would update BatchNorm running statistics during the many
    forward passes of a perturbation metric, i.e. change the user's model.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


def resolve_batch_size(batch_size: int | None, x: torch.Tensor) -> int:
    """``batch_size`` checked, or the default: inputs holding about 2**18 values on CPU, 2**22 on a GPU.

    Why: on CPU, batches whose activations outgrow the caches run slower per input (ResNet-18 at 112 px:
    16 inputs per pass beat 64); a GPU wants large batches.
    """
    if batch_size is None:
        budget = 2**22 if x.device.type == "cuda" else 2**18
        return max(1, budget // max(1, x[0].numel()))
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def predict(model: torch.nn.Module, inputs: torch.Tensor, softmax: bool) -> torch.Tensor:
    """Forward ``inputs`` and return logits (or probabilities when ``softmax``) as ``(M, classes)``."""
    out = model(inputs)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"the model must return logits of shape (N, classes), got {shape} (a segmentation model: "
            "pass region=)"
        )
    return out.softmax(dim=-1) if softmax else out
