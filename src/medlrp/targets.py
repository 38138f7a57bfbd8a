"""Turning a user's ``target`` argument into one class index per sample, and where relevance starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        return output.detach().argmax(dim=-1)  # in range: no check (no host read of a device value)
    if isinstance(target, int) and not isinstance(target, bool):
        if n and not 0 <= target < num_classes:  # checked on the host, as the tensor check below words it
            raise InputError(f"target {[target] * n} out of range for a model with {num_classes} classes")
        return torch.full((n,), target, dtype=torch.long, device=output.device)
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


# -- where relevance starts: ``start(output, target) -> initial relevance`` (the output's shape). Every method
#    that starts from the logits (LRP, guided training) reads these.
StartFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _one_hot(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output).scatter_(1, target[:, None], 1.0)


def _difference(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    num_classes = output.shape[1]
    if num_classes < 2:
        raise InputError("the logit difference needs a model with at least 2 classes")
    return torch.full_like(output, -1.0 / (num_classes - 1)).scatter_(1, target[:, None], 1.0)


def logit_difference(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Initial relevance ``w * output`` with ``w = +1`` at the target, ``-1/(C-1)`` elsewhere.

    Its sum is the target logit minus the mean of the other logits (for two classes: ``z_t - z_other``).
    """
    return _difference(output, target) * output


#: ``name -> start``: ``logit`` (the target logit), ``one-hot`` (1 at the target), ``logit-difference``,
#: ``all-classes`` (every logit).
STARTS: dict[str, StartFn] = {
    "logit": one_hot_logit,
    "one-hot": _one_hot,
    "logit-difference": logit_difference,
    "all-classes": lambda output, target: output,
}


def resolve_start(start: str | StartFn) -> StartFn:
    """A start by name (see :data:`STARTS`) or the callable ``start(output, target)`` itself."""
    if callable(start):
        return start
    try:
        return STARTS[start]
    except KeyError:
        raise InputError(
            f"unknown relevance start {start!r}; known: {', '.join(STARTS)} or a callable"
        ) from None
