"""Turning a user's ``target`` argument into one class index per sample."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlrp.errors import InputError

Target = int | Sequence[int] | torch.Tensor | None


def resolve_target(target: Target, output: torch.Tensor) -> torch.Tensor:
    """Return a ``LongTensor (N,)`` on ``output``'s device.

    ``None`` takes each sample's argmax; an int is used for every sample; a sequence or tensor gives one
    class per sample. Indices are checked against the number of classes.
    """
    n, num_classes = output.shape[0], output.shape[-1]
    if target is None:
        t = output.detach().argmax(dim=-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((n,), target, dtype=torch.long, device=output.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long, device=output.device).reshape(-1)
        if t.numel() == 1 and n != 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise InputError(f"target has {t.numel()} entries but the batch has {n} samples")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"target {t.tolist()} out of range for a model with {num_classes} classes")
    return t


def one_hot_logit(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The initial relevance: the target logit at its place, zero elsewhere (``one_hot * output``)."""
    return torch.zeros_like(output).scatter(1, target[:, None], output.gather(1, target[:, None]))
