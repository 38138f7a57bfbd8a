"""Explanation losses: relevance should lie inside a mask (the region that should matter).

Each loss is a plain :class:`torch.nn.Module` whose ``forward`` takes a batch of relevance maps, the
masks and (where the loss is tied to the decision) the explained logit, and returns one scalar, so it
drops into any training loop (a user's own, Lightning, MONAI engines). Masks are 1 where relevance
should be (tumour, lung field) and 0 elsewhere; soft masks in ``[0, 1]`` weight pixels. 2D and 3D alike:
``relevance`` is ``(N, C, *spatial)`` (or ``(N, K, C, *spatial)`` with one map per class ``K``) and
``mask`` is ``(N, *spatial)``, ``(N, 1, *spatial)`` or anything that broadcasts after inserting
singleton dimensions behind the batch dimension.

Why the losses look the way they do (each closes a loophole a model uses to keep a shortcut):

- Ratios of absolute relevance (outside over total) can be gamed: with the total in the graph, the
  gradient itself rewards inflating cancelling positive and negative relevance inside the mask. Here
  every loss is measured in a *detached* unit, ``max(|logit|, sum |R|)`` per case, so no gradient
  points towards inflation; the unit is never smaller than the explained logit; and it scales with the
  model, so shrinking every logit (and every relevance with it) gains nothing. (A unit of ``|logit| +
  constant`` instead makes "explain nothing, predict nothing" the cheapest state: guided models then
  stop learning.)
- Relevance that a bias or a saturated unit absorbs never appears outside the mask although the shortcut
  decides: the mass loss asks the mask region to explain the logit itself (``R_in == logit``), so any
  part of the decision not carried by the mask region (outside, absorbed by biases, hidden behind
  saturation) costs.
- No rule that explains ``f(x)`` along the active paths sees evidence carried by units the shortcut
  switches *off* (measured: guided CNNs then read the token while LRP shows nothing in its corner).
  Relevance relative to a reference point does: for a reference ``x_ref`` equal to ``x`` inside the
  mask and neutral outside, any complete attribution of ``f(x) - f(x_ref)`` lies outside the mask and
  sums to ``f(x) - f(x_ref)``; :class:`ReferenceLoss` asks that sum to vanish
  (:func:`masked_reference` builds the reference).
- Explaining the target logit only lets the shortcut move into the other classes' logits: explain the
  logit difference (see :mod:`medlrp.train.guided`) or every class (:class:`BackgroundRelevanceLoss`).

Every loss averages over the batch, with an optional per-case ``weight`` (e.g. 0 for cases that have no
mask), dividing by the batch size, not by the number of weighted cases, so that the loss of a batch split
over several processes averages to the loss of the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn

from medlrp.errors import InputError

__all__ = [
    "BackgroundRelevanceLoss",
    "ReferenceLoss",
    "GuidanceLoss",
    "RelevanceMassLoss",
    "RelevanceOutsideLoss",
    "align_mask",
    "masked_reference",
]


def align_mask(mask: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a float tensor that broadcasts against ``relevance``.

    Singleton dimensions are inserted behind the batch dimension until the number of dimensions matches,
    so ``(N, H, W)`` and ``(N, 1, H, W)`` masks both fit ``(N, C, H, W)`` and ``(N, K, C, H, W)`` maps.

    Raises:
        InputError: the batch size or the spatial shape does not fit.
    """
    if mask.ndim < 2 or mask.ndim > relevance.ndim or mask.shape[0] != relevance.shape[0]:
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not fit relevance of shape {tuple(relevance.shape)}"
        )
    m = mask.to(dtype=relevance.dtype, device=relevance.device)
    while m.ndim < relevance.ndim:
        m = m.unsqueeze(1)
    try:
        torch.broadcast_shapes(m.shape, relevance.shape)
    except RuntimeError:
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not fit relevance of shape {tuple(relevance.shape)}"
        ) from None
    return m


def _per_sample_sum(t: torch.Tensor, start_dim: int = 1) -> torch.Tensor:
    return t.flatten(start_dim).sum(-1)


def _scale(logit: torch.Tensor | None, relevance: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-case unit ``max(|logit|, sum |R|, tau)``, detached.

    Detached, so no gradient rewards inflating it; ``max`` with the logit, so cancelling relevance the
    model adds inside the mask does not shrink the loss below its share of the decision; scale-free, so
    shrinking every logit (and with it every relevance) gains nothing, which otherwise drives a model
    to stop learning at all (a constant output explains nothing and costs nothing).
    """
    total = _per_sample_sum(relevance.detach().abs())
    if logit is not None:
        total = torch.maximum(total, logit.detach().abs().to(total.dtype))
    return total.clamp_min(tau)


def _reduce(per_case: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is not None:
        per_case = per_case * weight.to(per_case.dtype)
    return per_case.sum() / max(per_case.shape[0], 1)


def _check_logit(logit: torch.Tensor | None, relevance: torch.Tensor, name: str) -> None:
    if logit is not None and logit.shape != relevance.shape[:1]:
        raise InputError(f"{name}: logit must have shape ({relevance.shape[0]},), got {tuple(logit.shape)}")


class RelevanceOutsideLoss(nn.Module):
    """Relevance outside the mask (right for the right reasons, with LRP instead of input gradients).

    Per case: ``(sum over outside pixels of |R|**p) ** (1/p) / max(|logit|, sum |R|)`` (``p=1``: the
    share of the absolute relevance that lies outside, in ``[0, 1]``; the unit is detached, see
    :func:`_scale`).

    Args:
        p: Norm of the outside relevance (1 or 2).
        tau: Added to the unit so that an all-zero map does not divide by zero.
        squared: Square the per-case value (smoother near zero).
    """

    def __init__(self, p: float = 1.0, tau: float = 1e-6, squared: bool = False) -> None:
        super().__init__()
        if p <= 0:
            raise InputError(f"p must be positive, got {p}")
        self.p, self.tau, self.squared = float(p), float(tau), bool(squared)

    def forward(
        self,
        relevance: torch.Tensor,
        mask: torch.Tensor,
        logit: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of the batch.

        Args:
            relevance: ``(N, ...)`` relevance maps.
            mask: Region that should matter (1) and should not (0).
            logit: ``(N,)`` the explained quantity (what relevance started from); part of the unit.
            weight: ``(N,)`` per-case weights (0 for cases without a mask).
        """
        _check_logit(logit, relevance, "RelevanceOutsideLoss")
        outside = relevance * (1 - align_mask(mask, relevance))
        if self.p == 1:
            norm = _per_sample_sum(outside.abs())
        else:
            # eps inside the root: its gradient is infinite at 0 (a perfectly clean map)
            norm = (_per_sample_sum(outside.abs() ** self.p) + 1e-12) ** (1 / self.p)
        per_case = norm / _scale(logit, relevance, self.tau)
        if self.squared:
            per_case = per_case**2
        return _reduce(per_case, weight)


class RelevanceMassLoss(nn.Module):
    """The mask region must explain the logit: ``((logit - R_in) / max(|logit|, sum |R|)) ** 2`` per case.

    ``R_in`` is the signed relevance inside the mask. With conservative, bias-free rules ``logit - R_in``
    is the relevance outside (signed); with biases and saturated units it also holds what they absorb, the
    place where a shortcut hides when the relevance outside is already zero. The share of the logit that
    the mask explains is ``R_in / logit``.

    Args:
        tau: Added to the (detached) unit so that an all-zero map does not divide by zero.
    """

    def __init__(self, tau: float = 1e-6) -> None:
        super().__init__()
        self.tau = float(tau)

    def forward(
        self,
        relevance: torch.Tensor,
        mask: torch.Tensor,
        logit: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of the batch (arguments as in :class:`RelevanceOutsideLoss`)."""
        if logit is None:
            raise InputError("RelevanceMassLoss needs the explained logit")
        _check_logit(logit, relevance, "RelevanceMassLoss")
        inside = _per_sample_sum(relevance * align_mask(mask, relevance))
        per_case = ((logit.to(relevance.dtype) - inside) / _scale(logit, relevance, self.tau)) ** 2
        return _reduce(per_case, weight)


class BackgroundRelevanceLoss(nn.Module):
    """Background relevance of every class, in the spirit of ISNet (Bassi et al. 2022).

    ISNet explains every class, so that a shortcut cannot move into a logit nobody looks at. Here
    ``relevance`` is ``(N, K, ...)`` with one map per class and ``logits`` is ``(N, K)``. Per case and
    class: the absolute background relevance in the detached unit ``max(|logit|, sum |R|)`` (see the
    module docstring; ISNet divides by the map's own sum with its graph), passed through ISNet-like
    saturation ``x / (1 + x)`` so that one bad map does not dominate, then averaged over classes.

    Args:
        tau: Added to the unit so that an all-zero map does not divide by zero.
    """

    def __init__(self, tau: float = 1e-6) -> None:
        super().__init__()
        self.tau = float(tau)

    def forward(
        self,
        relevance: torch.Tensor,
        mask: torch.Tensor,
        logits: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of the batch.

        Args:
            relevance: ``(N, K, C, *spatial)`` one relevance map per class.
            mask: Region that should matter.
            logits: ``(N, K)`` the logits the maps start from.
            weight: ``(N,)`` per-case weights (0 for cases without a mask).
        """
        if relevance.ndim < 3 or logits.shape != relevance.shape[:2]:
            raise InputError(
                f"BackgroundRelevanceLoss: logits must have shape {tuple(relevance.shape[:2])}, "
                f"got {tuple(logits.shape)}"
            )
        background = relevance * (1 - align_mask(mask, relevance))
        per_class = _per_sample_sum(background.abs(), start_dim=2)
        total = _per_sample_sum(relevance.detach().abs(), start_dim=2)
        unit = torch.maximum(total, logits.detach().abs().to(total.dtype)).clamp_min(self.tau)
        ratio = per_class / unit
        per_case = (ratio / (1 + ratio)).mean(dim=1)
        return _reduce(per_case, weight)


class GuidanceLoss(nn.Module):
    """The default explanation loss of ``medlrp train --guided``: outside relevance plus mass.

    ``outside * RelevanceOutsideLoss + mass * RelevanceMassLoss``: the first penalises relevance outside
    the mask pixel by pixel (no cancellation between pixels), the second asks the mask region to explain
    the logit (catches what biases and saturated units hide). Use it on relevance that starts from the
    logit difference (:func:`medlrp.train.guided.logit_difference`) so that no class logit escapes.

    Args:
        outside: Weight of :class:`RelevanceOutsideLoss`.
        mass: Weight of :class:`RelevanceMassLoss`.
        tau: Passed to both (added to the detached unit).
    """

    def __init__(self, outside: float = 1.0, mass: float = 1.0, tau: float = 1e-6, p: float = 1.0) -> None:
        super().__init__()
        self.outside_weight, self.mass_weight = float(outside), float(mass)
        self.outside = RelevanceOutsideLoss(p=p, tau=tau)
        self.mass = RelevanceMassLoss(tau=tau)

    def forward(
        self,
        relevance: torch.Tensor,
        mask: torch.Tensor,
        logit: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of the batch (arguments as in :class:`RelevanceMassLoss`)."""
        loss = relevance.new_zeros(())
        if self.outside_weight:
            loss = loss + self.outside_weight * self.outside(relevance, mask, logit, weight)
        if self.mass_weight:
            loss = loss + self.mass_weight * self.mass(relevance, mask, logit, weight)
        return loss


def masked_reference(
    x: torch.Tensor, mask: torch.Tensor, partner: torch.Tensor | None = None
) -> torch.Tensor:
    """Each case inside its mask, its partner's content outside it (default: the previous case's).

    The reference point of :class:`ReferenceLoss`: whatever the region outside the mask carries (a
    token, a marker, the scanner's background) comes from another case, nothing inside changes. Not a
    constant fill: a fill computed from the case itself (its outside mean) still tells the token apart
    (measured: a guided model read the fill level), and another case's background carries no
    information about this case's label.

    Args:
        x: ``(N, C, *spatial)`` cases.
        mask: Their masks.
        partner: ``(N, C, *spatial)`` whose content goes outside the masks (default ``x.roll(1, 0)``:
            each case's predecessor in the batch, cyclically).
    """
    m = align_mask(mask, x)
    other = x.roll(1, dims=0) if partner is None else partner
    if other.shape != x.shape:
        raise InputError(
            f"partner of shape {tuple(other.shape)} does not fit cases of shape {tuple(x.shape)}"
        )
    return x * m + other * (1 - m)


class ReferenceLoss(nn.Module):
    """What the region outside the mask does to the explained logit, relative to a reference point.

    Per case: ``((e - e_ref) / max(|e|, |e_ref|, tau)) ** 2`` with ``e`` the explained quantity (e.g. the
    logit difference) of the case and ``e_ref`` that of its reference (:func:`masked_reference`: the
    same inside the mask). By completeness ``e - e_ref`` is the total relevance of ``f(x) - f(x_ref)``, all of
    it outside the mask, including what units switched off by the outside region carry, which
    relevance of ``f(x)`` alone cannot show. The unit is detached (see :func:`_scale`).

    Args:
        tau: Lower bound of the unit, in logits: an untrained network's logits are tiny, and a unit tied
            to them alone lets this loss's gradient outweigh the cross-entropy by their inverse
            (measured: guided models then never start learning).
    """

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)

    def forward(
        self, explained: torch.Tensor, explained_ref: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the scalar loss of the batch.

        Args:
            explained: ``(N,)`` the explained quantity of each case.
            explained_ref: ``(N,)`` the same for each case's reference.
            weight: ``(N,)`` per-case weights.
        """
        if explained.shape != explained_ref.shape or explained.ndim != 1:
            raise InputError(
                f"ReferenceLoss: explained {tuple(explained.shape)} and reference "
                f"{tuple(explained_ref.shape)} must both have shape (N,)"
            )
        unit = torch.maximum(explained.detach().abs(), explained_ref.detach().abs()).clamp_min(self.tau)
        return _reduce(((explained - explained_ref) / unit) ** 2, weight)
