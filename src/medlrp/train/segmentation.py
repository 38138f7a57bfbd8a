"""Segmentation training (``medlrp train --task segmentation``): voxel labels, loss and Dice score.

The dataset folder is the classification layout (``DIR/<class>/<case>.<ext>`` with
``<case>_mask.<ext>``); the mask is the structure to segment (the phantom's tumour). Two labellings:

* ``"mask"`` (default): two classes, background and the mask (named by ``dataset.json``'s ``mask``
  entry, e.g. ``tumour``, else ``foreground``);
* ``"class"``: background plus one class per class folder; a mask's voxels take its case's class
  (``background, high_grade, low_grade`` for the glioma phantom).

The loss is the mean per-voxel cross-entropy plus ``dice_weight`` times the soft Dice loss
(``1 -`` the mean soft Dice of the foreground classes, Milletari et al. 2016), which keeps a small
tumour from drowning in the background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medlrp.data.folder import Batch
from medlrp.errors import InputError
from medlrp.train.loop import predict
from medlrp.train.losses import LossFn

TASKS = ("classification", "segmentation")
LABELLINGS = ("mask", "class")
BACKGROUND = "background"


@dataclass(frozen=True)
class SegmentationTask:
    """What a segmentation run trains: its output classes, how voxels get labels, the loss weights.

    Attributes:
        class_names: Output classes, ``background`` first.
        labels: ``"mask"`` or ``"class"`` (see the module docstring).
        dice_weight: Weight of the soft Dice loss beside the cross-entropy (0: cross-entropy only).
    """

    class_names: tuple[str, ...]
    labels: str = "mask"
    dice_weight: float = 1.0

    def targets(self, batch: Batch) -> torch.Tensor:
        """Voxel labels ``(N, *spatial)`` (long) of ``batch``: its masks, or masks times class + 1."""
        mask = (batch.mask[:, 0] > 0).long()
        if self.labels == "class":
            shape = (-1,) + (1,) * (mask.ndim - 1)
            return mask * (batch.label.view(shape) + 1)
        return mask

    def loss_fn(self) -> LossFn:
        """``loss_fn(model, batch) -> (loss, parts)`` for :func:`medlrp.train.fit`."""

        def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
            logits = model(batch.x)
            target = self.targets(batch)
            ce = F.cross_entropy(logits, target)
            parts = {"ce": float(ce.detach())}
            total = ce
            if self.dice_weight > 0:
                soft = 1.0 - soft_dice(logits.softmax(dim=1), target).mean()
                total = total + self.dice_weight * soft
                parts["dice_loss"] = float(soft.detach())
            parts["dice"] = float(hard_dice(logits.detach().argmax(dim=1), target, logits.shape[1]).mean())
            return total, parts

        return loss

    def score(self, model: nn.Module, data: Batch, batch_size: int = 16) -> float:
        """Mean foreground Dice of ``model``'s argmax over the cases of ``data`` (eval mode)."""
        logits = predict(model, data, batch_size)
        return float(hard_dice(logits.argmax(dim=1), self.targets(data), logits.shape[1]).mean())


def soft_dice(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per foreground class, over the whole batch: ``(C - 1,)``.

    ``eps`` smooths classes absent from the batch (their Dice is then near 1 when nothing is predicted).
    """
    one_hot = F.one_hot(target, probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    dims = (0, *range(2, probabilities.ndim))
    inter = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return ((2 * inter + eps) / (total + eps))[1:]


def hard_dice(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of label maps per case, averaged over the foreground classes present: ``(N,)``.

    A class neither predicted nor present in a case counts as agreement and is left out of the mean;
    a case with no foreground anywhere scores 1.
    """
    scores = []
    for p, t in zip(predicted, target, strict=True):
        per_class = []
        for c in range(1, num_classes):
            a, b = p == c, t == c
            size = int(a.sum() + b.sum())
            if size:
                per_class.append(2.0 * float((a & b).sum()) / size)
        scores.append(sum(per_class) / len(per_class) if per_class else 1.0)
    return torch.tensor(scores, dtype=torch.float64)


def segmentation_task(
    data: str | Path, classes: list[str], labels: str = "mask", dice_weight: float = 1.0
) -> SegmentationTask:
    """The task for a dataset folder with class folders ``classes``.

    Raises:
        InputError: An unknown labelling or a negative Dice weight.
    """
    if labels not in LABELLINGS:
        raise InputError(f"--seg-labels must be one of {', '.join(LABELLINGS)}, not {labels!r}")
    if not dice_weight >= 0:
        raise InputError(f"--dice-weight must be >= 0, not {dice_weight}")
    if labels == "class":
        return SegmentationTask((BACKGROUND, *classes), labels, dice_weight)
    return SegmentationTask((BACKGROUND, mask_name(Path(data))), labels, dice_weight)


def mask_name(data: Path) -> str:
    """What the masks of a dataset folder mark: ``dataset.json``'s ``mask`` entry, else ``foreground``."""
    try:
        name = json.loads((data / "dataset.json").read_text(encoding="utf-8")).get("mask")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name.strip() and name != BACKGROUND else "foreground"


def check_masks(batch: Batch | None, where: str) -> None:
    """Every case of ``batch`` must have a mask to learn from.

    Raises:
        InputError: Naming the first case without a mask and the folder.
    """
    if batch is None:
        return
    missing = [case for case, has in zip(batch.case_id, batch.has_mask.tolist(), strict=True) if not has]
    if missing:
        raise InputError(
            f"{where}: case {missing[0]!r} has no mask ({len(missing)} without one); segmentation "
            f"training needs <case>_mask.<ext> beside every case"
        )
