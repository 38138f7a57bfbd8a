"""What an explanation explains: a class's logit (classifiers) or its logit sum over a region (segmentation).

A classifier returns ``(N, classes)``: the explained quantity of sample ``i`` is the logit
``out[i, t_i]``. A segmentation network returns ``(N, C, *spatial)`` (2D or 3D): the explained
quantity is ``sum_p region[i, p] * out[i, t_i, p]``, the sum of class ``t_i``'s logits over the region
(weights 1 inside, 0 outside; a float mask weighs positions). :func:`resolve_goal` turns the user's
``target`` and ``region`` into a :class:`Goal`, which every method uses for its score and its starting
gradient, so LRP, the CAMs and the gradient methods explain the same number.

Segmentation defaults:

* ``target=None``: class 0 for a single-channel output (a sigmoid head), class 1 for two channels
  (background, foreground); with more channels the class must be named (which organ is meant is not
  guessable), an :class:`~medlrp.errors.InputError` otherwise.
* ``region=None`` is ``"predicted"``: the positions where class ``t`` wins the argmax over channels
  (single channel: where its logit is > 0, i.e. sigmoid > 0.5).
* ``region`` a mask: bool or float, the output's spatial shape, as ``(*spatial)``, ``(N or 1,
  *spatial)`` or ``(N or 1, 1, *spatial)``; finite and >= 0. A sample whose region is empty is an
  :class:`~medlrp.errors.InputError` (its explanation would be zero everywhere, silently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medlrp.errors import InputError
from medlrp.targets import Target, resolve_target

#: A region argument: ``None`` / ``"predicted"`` or a mask (a tensor or a NumPy array).
Region = torch.Tensor | np.ndarray | str | None
PREDICTED = "predicted"


@dataclass(frozen=True)
class Goal:
    """The explained quantity of each sample of a batch.

    Attributes:
        target: ``LongTensor (N,)``, the explained class per sample.
        region: ``None`` for a classifier; for a segmentation output the region weights
            ``(N, 1, *spatial)`` in the output's dtype (1 inside the region, 0 outside).
    """

    target: torch.Tensor
    region: torch.Tensor | None = None

    def seed(self, output: torch.Tensor) -> torch.Tensor:
        """``d score / d output``: one-hot at the target class, times the region weights."""
        if self.region is None and output.dim() == 2:
            return torch.zeros_like(output).scatter_(1, self.target[:, None], 1.0)
        # one copy per sample: a scatter with an index expanded over a volume costs ten times more
        seed = torch.zeros_like(output)
        for i, t in enumerate(self.target.tolist()):
            seed[i, t] = 1.0 if self.region is None else self.region[i, 0]
        return seed

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """The explained quantity per sample, ``(N,)``, differentiable in ``output``.

        ``output`` may hold ``k`` copies of the batch stacked along the first dimension (perturbed
        or interpolated inputs, sample ``i`` of copy ``j`` at row ``j * N + i``).
        """
        goal = self.repeat(output.shape[0] // max(len(self.target), 1))
        if goal.region is None:
            return output.gather(1, goal.target[:, None])[:, 0]
        own = torch.stack([output[i, t] for i, t in enumerate(goal.target.tolist())])
        return (own * goal.region[:, 0].to(output.dtype)).flatten(1).sum(1)

    def repeat(self, k: int) -> Goal:
        """The goal of ``k`` stacked copies of the batch (see :meth:`score`)."""
        if k == 1:
            return self
        region = None if self.region is None else self.region.repeat(k, *[1] * (self.region.dim() - 1))
        return Goal(self.target.repeat(k), region)

    def select(self, index: torch.Tensor) -> Goal:
        """The goal of the samples ``index`` (a LongTensor of sample indices, repeats allowed)."""
        return Goal(self.target[index], None if self.region is None else self.region[index])


def is_segmentation(output: torch.Tensor) -> bool:
    """Whether ``output`` is a segmentation output ``(N, C, *spatial)`` rather than ``(N, classes)``."""
    return output.dim() >= 3


def resolve_goal(output: torch.Tensor, target: Target = None, region: Region = None) -> Goal:
    """Turn ``target`` and ``region`` into a :class:`Goal` for the model output ``output``.

    Raises:
        InputError: ``region`` given for a classifier, a segmentation output with several classes
            and no target, a mask of the wrong shape, negative or non-finite, or an empty region.
    """
    out = output.detach()
    if out.dim() < 2 or out.shape[0] == 0:
        raise InputError(f"the model returned an output of shape {tuple(out.shape)}, not (N, C, ...)")
    if not is_segmentation(out):
        if region is not None:
            raise InputError(
                "region= applies to segmentation models (output (N, C, *spatial)); this model returns "
                f"{tuple(out.shape)}: name the class with target= only"
            )
        return Goal(resolve_target(target, out))
    t = resolve_target(_default_class(target, out.shape[1]), out.flatten(2)[..., 0])  # (N, C)
    if region is None or (isinstance(region, str) and region == PREDICTED):
        weights = _predicted(out, t)
        what = "predicted region"
    elif isinstance(region, (torch.Tensor, np.ndarray)):
        weights = _mask(torch.as_tensor(region), out)
        what = "region"
    else:
        raise InputError(f"region must be 'predicted' or a mask (tensor or array), not {region!r}")
    empty = (weights.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"the {what} of class(es) {t[empty].tolist()} is empty in sample(s) {empty}")
    return Goal(t, weights)


def check_main_head(model: torch.nn.Module) -> None:
    """Refuse a deep-supervision network in train mode (its output stacks the auxiliary heads).

    MONAI's ``DynUNet`` (nnU-Net's network) returns ``(N, 1 + heads, C, *spatial)`` in train mode with
    ``deep_supervision=True``, indistinguishable by shape from one more spatial dim; in eval mode it
    returns the main head, which is what is explained.
    """
    for module in model.modules():
        if module.training and getattr(module, "deep_supervision", False) is True:
            raise InputError(
                f"{type(module).__name__} returns its deep-supervision heads stacked in train mode: "
                "call model.eval() to explain the main head"
            )


def _default_class(target: Target, channels: int) -> Target:
    if target is not None:
        return target
    if channels <= 2:
        return channels - 1  # a sigmoid head's one class, or the foreground of (background, foreground)
    raise InputError(
        f"the segmentation output has {channels} classes: name the explained class with target= "
        "(e.g. target=1)"
    )


def _predicted(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Where class ``t`` wins the argmax (ties to the lower class, as ``argmax``; one channel: logit > 0).

    Compared channel by channel: an ``argmax`` over a channel dim of a few entries with the whole volume
    as its stride is a slow reduction on CPU (0.2 s on one 96^3 volume, most of an LRP pass).
    """
    if out.shape[1] == 1:
        return (out > 0).to(out.dtype)
    index = t.view(-1, *[1] * (out.dim() - 1))
    own = torch.stack([out[i, c : c + 1] for i, c in enumerate(t.tolist())])
    inside = torch.ones_like(own, dtype=torch.bool)
    targets = set(t.tolist())
    for c in range(out.shape[1]):
        if targets == {c}:
            continue  # the class itself
        other = out[:, c : c + 1]
        # a lower class wins a tie, so it must be beaten strictly; a higher one only matched
        wins = torch.where(index > c, own > other, own >= other)
        inside &= wins
    return inside.to(out.dtype)


def _mask(region: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A user mask as region weights ``(N, 1, *spatial)`` in the output's dtype."""
    n, spatial = out.shape[0], tuple(out.shape[2:])
    m = region.detach()
    if m.dim() == len(spatial):
        m = m[None, None]
    elif m.dim() == len(spatial) + 1:
        m = m[:, None]
    if m.dim() != len(spatial) + 2 or tuple(m.shape[1:]) != (1, *spatial) or m.shape[0] not in (1, n):
        raise InputError(
            f"region mask of shape {tuple(region.shape)} does not match the output {tuple(out.shape)}: "
            f"expected (*spatial), (N, *spatial) or (N, 1, *spatial) with spatial {spatial}"
        )
    if m.is_complex():
        raise InputError(f"region mask must be bool or real, not {m.dtype}")
    m = m.to(device=out.device, dtype=out.dtype)
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise InputError("region mask must be finite and >= 0 (1 inside the region, 0 outside)")
    return m.expand(n, 1, *spatial).clone()


__all__ = ["PREDICTED", "Goal", "Region", "check_main_head", "is_segmentation", "resolve_goal"]
