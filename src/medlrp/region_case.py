"""A segmentation model's region, explained from files: which class, which region, what to record.

The command line (``medlrp explain --region``, ``medlrp batch``) explains a segmentation model
(output ``(N, classes, *spatial)``) for one class ``c`` and a region: ``"predicted"`` (where ``c``
wins the argmax) or a mask file on the scan's grid. The explained quantity is the sum of ``c``'s logits
over the region, as ``medlrp.explain(model, x, target=c, region=r)`` defines it.

Without ``--target`` the class is the foreground class (not class 0, the background) predicted in the
most voxels; class 1 when none is predicted anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlrp.api import explain
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io.image import Image
from medlrp.metrics import region_relevance_share
from medlrp.models import LoadedModel

PREDICTED = "predicted"
#: Voxels (on the scan's grid) around the region counted as its margin by :func:`positive_shares`.
MARGIN_VOXELS = 2


@dataclass
class Region:
    """The region of one case to explain.

    Attributes:
        target: The explained class.
        mask: ``(1, 1, *model grid)`` float 0/1: the region on the model's grid.
        given: What ``medlrp.explain`` gets as ``region=``: ``"predicted"`` or ``mask``.
        source: ``"predicted"`` or the mask file's name (for the record).
        output: The model's logits ``(1, classes, *model grid)`` (detached).
    """

    target: int
    mask: torch.Tensor
    given: str | torch.Tensor
    source: str
    output: torch.Tensor

    @property
    def logit_sum(self) -> float:
        """The explained quantity: class ``target``'s logits summed over the region."""
        return float((self.output[:, self.target] * self.mask[:, 0]).sum())


def is_segmentation(loaded: LoadedModel, x: torch.Tensor) -> bool:
    """Whether ``loaded`` segments: its checkpoint says so, or (TorchScript, pickles) its output on ``x``."""
    if loaded.task != "unknown":
        return loaded.task == "segmentation"
    return model_output(loaded.model, x).dim() > 2


def check_region_option(loaded: LoadedModel, region: object, model_name: str) -> None:
    """A ``--region`` given for a medlrp classification checkpoint is a usage error.

    Raises:
        InputError: One line naming the model.
    """
    if region is not None and loaded.task == "classification":
        raise InputError(
            f"{model_name}: --region applies to segmentation models; this checkpoint is a classifier"
        )


def default_target(output: torch.Tensor) -> int:
    """The foreground class predicted in the most voxels of ``output`` (``(1, C, *spatial)``)."""
    counts = torch.bincount(output.argmax(dim=1).reshape(-1), minlength=output.shape[1])
    if output.shape[1] < 2:
        return 0
    counts[0] = -1
    return int(counts.argmax()) if int(counts.max()) > 0 else 1


def model_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``x`` (one forward pass without a graph)."""
    with torch.no_grad():
        return _logits(model(x)).detach()


def resolve_region(
    output: torch.Tensor,
    target: int | None,
    region: str | Image | None,
    class_names: list[str],
    source: str,
) -> Region:
    """Fix the class and the region to explain from the model's output for one case.

    Args:
        output: The model's logits ``(1, C, *model grid)`` (:func:`model_output`).
        target: The class index (None: :func:`default_target`).
        region: ``"predicted"`` / None, or a mask :class:`~medlrp.io.Image` on the scan's grid (resampled
            to the model's grid by nearest neighbour; any value above 0 is inside).
        class_names: The model's class names (for messages).
        source: The scan's name (for messages).

    Raises:
        InputError: A class out of range, a mask of the wrong dimensionality, an empty region.
    """
    if output.dim() < 3:
        raise InputError(f"{source}: the model returns {tuple(output.shape)}, not per-voxel logits")
    c = default_target(output) if target is None else int(target)
    if not 0 <= c < output.shape[1]:
        raise InputError(f"--target {c} out of range for a model with {output.shape[1]} classes")
    name = class_names[c] if c < len(class_names) else str(c)
    size = tuple(output.shape[2:])
    if region is None or (isinstance(region, str) and region == PREDICTED):
        mask = predicted_mask(output, c)
        if not mask.any():
            raise InputError(
                f"{source}: no voxel is predicted as class {name!r}, so the predicted region is empty "
                f"(give another --target or --region MASK_FILE)"
            )
        return Region(c, mask, PREDICTED, PREDICTED, output)
    if isinstance(region, str):
        raise InputError(f"--region must be 'predicted' or a mask file, not {region!r}")
    array = torch.as_tensor(np.asarray(region.array, dtype=np.float32)).amax(dim=0) > 0
    if array.dim() != len(size):
        raise InputError(f"{region.source}: region mask is {array.dim()}D, the model's output {len(size)}D")
    if not array.any():
        raise InputError(f"{region.source}: the region mask is empty (no voxel above 0)")
    mask = F.interpolate(array[None, None].float(), size=size, mode="nearest").to(output.device, output.dtype)
    if not mask.any():
        raise InputError(f"{region.source}: the region vanishes on the model's {size} grid (too small)")
    return Region(c, mask, mask, region.source.name, output)


def predicted_mask(output: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """``(N, 1, *spatial)`` 0/1: where class ``target`` wins the argmax (one channel: where its logit > 0)."""
    if output.shape[1] == 1:
        return (output > 0).to(output.dtype)
    index = torch.as_tensor(target, device=output.device).reshape(-1, *[1] * (output.dim() - 1))
    return (output.argmax(dim=1, keepdim=True) == index).to(output.dtype)


def check_region_shape(region: Image, spatial: tuple[int, ...]) -> None:
    """A mask file must lie on the scan's grid.

    Raises:
        InputError: One line naming the mask file and both shapes.
    """
    shape = tuple(region.array.shape[1:])
    if shape != spatial:
        raise InputError(f"{region.source}: region mask of shape {shape}, but the scan is {spatial}")


def explain_region(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int | list[int],
    region: str | torch.Tensor,
    method: str,
    composite: str | None = None,
    **options: Any,
) -> Explanation:
    """``medlrp.explain(model, x, target=target, region=region, method=method, ...)`` for a segmentation.

    ``region``: ``"predicted"`` or a mask ``(N, 1, *spatial)`` on the model's output grid. The
    explanation's ``output`` is the model's full logits ``(N, classes, *spatial)``.
    """
    return explain(model, x, target=target, method=method, composite=composite, region=region, **options)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output


def positive_shares(relevance: np.ndarray, mask: np.ndarray, margin: int = MARGIN_VOXELS) -> dict[str, Any]:
    """The share of the positive relevance inside the region, and inside the region grown by ``margin``.

    :func:`medlrp.metrics.region_relevance_share` (a Euclidean ball of ``margin`` voxels); both are
    ``None`` when the map has no positive relevance at all.
    """
    r = torch.as_tensor(np.asarray(relevance, dtype=np.float64))[None, None]
    m = torch.as_tensor(np.asarray(mask) > 0)[None, None]
    inside, near = (float(region_relevance_share(r, m, margin=k)[0]) for k in (0, margin))
    return {
        "positive_share_region": None if math.isnan(inside) else inside,
        "positive_share_margin": None if math.isnan(near) else near,
        "margin_voxels": margin,
    }


def region_on_input(region: Region, spatial: tuple[int, ...]) -> np.ndarray:
    """The region as a 0/1 array on the scan's grid (nearest neighbour)."""
    mask = region.mask.detach().float().cpu()
    if tuple(mask.shape[2:]) != spatial:
        mask = F.interpolate(mask, size=spatial, mode="nearest")
    return mask[0, 0].numpy()


def region_record(region: Region, on_input: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The record's segmentation entries: the prediction per class and the explained region."""
    c = region.target
    names = [class_names[k] if k < len(class_names) else str(k) for k in range(region.output.shape[1])]
    counts = torch.bincount(region.output.argmax(dim=1).reshape(-1), minlength=len(names)).tolist()
    return {
        "task": "segmentation",
        "prediction": c,
        "prediction_name": f"{names[c]} region",
        "predicted_voxels": dict(zip(names, (int(k) for k in counts), strict=True)),
        "region": {
            "source": region.source,
            "class": names[c],
            "voxels": int((on_input > 0).sum()),
            "model_voxels": int(region.mask.sum()),
            "logit_sum": region.logit_sum,
        },
    }
