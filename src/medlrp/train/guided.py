"""Explanation-guided training: cross-entropy plus an explanation loss on the cases that have a mask.

:class:`GuidedLoss` is a plain :class:`torch.nn.Module` for any training loop::

    crit = GuidedLoss(guidance_weight=0.3)                 # LRP + reference term, logit difference
    loss, parts = crit(model, x, y, mask=mask, has_mask=has_mask)
    loss.backward()                                        # exact gradients through the relevance

and :meth:`GuidedLoss.loss_fn` adapts it to the ``loss_fn(model, batch)`` seam of
:func:`medlrp.train.fit` (``medlrp train --guided``).

Design decisions, each with its reason:

- Relevance starts from the logit *difference* by default: the label's logit minus the mean of the
  others. Explaining only the label's logit lets a shortcut move into the other logits; the softmax
  depends on differences only, so for two classes the difference is all there is to the decision.
- The relevance explains the function being trained: the model runs in ``eval()`` mode (restored
  afterwards) with the batch statistics of the training forward (with their graph) held in the
  BatchNorm buffers (restored afterwards), so the LRP engine merges each BatchNorm with exactly the
  normalisation the training forward used, and the guidance gradient flows through the statistics as
  the cross-entropy's does. Explaining with the running statistics instead is a loophole: the model
  keeps its shortcut under batch statistics while the explained (running-statistics) model looks clean.
  Holding the statistics constant made guided models stop learning (measured, BENCHMARKS.md). The
  cross-entropy runs on the model in its own (training) mode, on every case.
- The default composite sees inhibition (:func:`guidance_composite`): z+ rules ignore inhibitory
  paths, an obvious place for a guided model to keep a shortcut.
- A reference-point term (:class:`~medlrp.train.guided_losses.ReferenceLoss`, on by default): the
  explained logit of each case must not change when everything outside its mask is replaced by
  another case's content. LRP explains ``f(x)`` along the paths the input switches *on*; evidence
  carried by a unit the shortcut switches off, or spread over the image by a normalisation, is
  invisible to any such map, while the logit change against a reference that agrees inside the mask
  is, by completeness, exactly the relevance of ``f(x) - f(x_ref)``, all of it outside the mask.
  Neither term alone worked for the CNN on the phantom (measured, BENCHMARKS.md): without the
  reference the model kept the shortcut unseen, without the LRP term it stopped learning.
- The label on the reference (``counterfactual_weight=3``, on every case: ``reference_every=1``): each
  referenced case's reference, which has another case's content outside the mask, is also a training
  case with the case's own label. On it the shortcut carries no information, so the cross-entropy there
  pulls towards the region inside the mask where the terms above only push away from the outside.
  Without it a guided CNN that had stopped reading the shortcut still learnt the lesion worse than the
  same CNN trained on unconfounded data (82-93 % of the accuracy gap recovered on three of five seeds,
  60 % on one where it kept the token under some CPU kernels). With weight 1 on every second case:
  79-125 % over five seeds, three kernels and four kinds of shortcut, the worst runs those where the
  guided model had dropped the shortcut and learnt the lesion less well; on every case with weight 3 the
  references outweigh the confounded originals (BENCHMARKS.md). Weight 10 was no better over the same 20
  runs (median 99 % against 100 % of the gap, min 89 % against 93 %, 2000 test cases) and left more of
  the shortcut's effect (0.07x the typical logit against 0.03x; BENCHMARKS.md, session 9). It needs no
  forward or backward of its own: the reference term's are reused.
- Losses are measured in units of at least one logit (``tau=1``): an untrained network's logits are
  tiny, and a unit tied to them alone lets the guidance gradient outweigh the cross-entropy by their
  inverse, so that the model never starts learning (measured: cross-entropy stuck at log 2).
- The mask is the region that MAY matter (the organ, the body), not the lesion: a right model puts most
  of its relevance outside a tight lesion mask too (it reads the lesion against its context), so a
  lesion mask barely prefers it to a shortcut model; what a shortcut adds lies outside the anatomy
  (markers, labels, the scanner's background). See ``docs/`` and BENCHMARKS.md.
- Normalise intensities with a map that does not depend on the region outside the mask (a fixed
  scale, or statistics inside the mask): a per-image z-score over the whole image moves every pixel
  when a token appears in a corner, which hands the shortcut to the region inside the mask.
- Only every ``explain_every``-th case is explained (counted over the run, by position in the
  batches, cases without a mask skipped) and its loss is weighted by ``explain_every``: an unbiased
  estimate of the loss over all cases (the batches are shuffled, so every case is explained every few
  epochs); ``explain_every`` beyond the batch explains one case every few steps. The reference term
  likewise uses every ``reference_every``-th case. Differentiable LRP costs several plain steps per
  case (a forward with both graphs and a double backward), a reference one plain forward and backward
  per case; the defaults (every case referenced, every 64th case explained by the bounded term, whose
  bound costs a second backward) make a guided step 2.5-3.7x a plain one, depending on the model and
  the CPU (BENCHMARKS.md). ``explain_every=1`` explains every case.
- The explanation term can start late (``explain_start`` training steps; the reference term runs from
  the first step): the relevance of an untrained network is noise spread over the whole input, and
  penalising it from the first step holds a tiny ViT at chance (measured: cross-entropy stuck at
  log 2 for 40 epochs, with every weight, unit and term tried; BENCHMARKS.md), while the reference term
  alone already keeps the shortcut out and lets the network learn. The CNN needs no delay.
- The explanation term's gradient is bounded (``guidance_bound``: at most 0.3x the gradient of
  cross-entropy plus reference term, every step) wherever the relevance is the default one, and a
  transformer's guidance relevance uses attnlrp with epsilon 0.1: the gradient of a loss on LRP
  relevance is rough at the scale of rounding (ViT runs 1e-8 apart saw gradients of 0.1 and 1e3; the
  guided CNN's averaged 0.1-0.4x the rest's with epochs of 3x and 17x, single spikes), Adam makes a
  full step of any spike, and the guided model's outcome depended on the CPU's kernels (the ViT 20-108 %
  of the gap recovered; one CNN 60 % on one CPU, 96 % on another); bounded, it does not
  (BENCHMARKS.md). The bound costs a second backward in the steps that explain a case, so a bounded
  term explains every 64th case (one in every second step with batches of 32).
- Reductions divide by the batch size (not by the number of explained cases), so that a batch split
  over processes (:mod:`medlrp.train.guided_dist`) gives the same gradient as the whole batch.

A relevance function (``relevance_fn``) is any callable ``(model, x, target, start) -> (relevance,
logits)``, differentiable w.r.t. the parameters; :func:`lrp_relevance` (default) and
:func:`input_x_gradient_relevance` are provided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlrp.cam.guard import explaining
from medlrp.errors import InputError
from medlrp.targets import STARTS, StartFn, logit_difference, one_hot_logit, resolve_start
from medlrp.train.guided_clip import bounded_sum
from medlrp.train.guided_losses import GuidanceLoss, ReferenceLoss, masked_reference

__all__ = [
    "GuidedLoss",
    "GUIDANCE_CNN_COMPOSITE",
    "class_relevance",
    "guidance_composite",
    "guidance_options",
    "GUIDANCE_TRANSFORMER_EPSILON",
    "GUIDANCE_BOUND",
    "EXPLAIN_EVERY_BOUNDED",
    "EXPLAIN_EVERY_UNBOUNDED",
    "RelevanceFn",
    "StartFn",
    "eval_mode",
    "grow_mask",
    "input_x_gradient_relevance",
    "logit_difference",
    "lrp_relevance",
    "resolve_start",
]

#: ``relevance_fn(model, x, target, start) -> (relevance, logits)``, both differentiable
RelevanceFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, StartFn], tuple[torch.Tensor, torch.Tensor]]


def input_x_gradient_relevance(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, start: StartFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable input x gradient of ``start(model(x), target)`` (a reference and a fallback)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(start(logits, target).sum(), x, create_graph=True)
    return x * grad, logits


#: The guidance composite where the engine's default would use z+ rules (CNNs).
GUIDANCE_CNN_COMPOSITE = "epsilon-alpha2-beta1-flat"


def guidance_composite(model: nn.Module) -> str:
    """The composite :func:`lrp_relevance` uses by default: the engine's, with z+ replaced by alpha2-beta1.

    z+ rules (``epsilon-plus*``, the engine's CNN default) do not see inhibitory evidence, so a model
    trained against them may carry a shortcut through inhibition unseen. alpha2-beta1 attributes
    inhibition too and stays smooth enough to train against; it guided best in BENCHMARKS.md (the plain
    epsilon rule is too noisy to train against; with gamma, guided models stopped learning).
    Transformers keep the engine's default (``attnlrp``).
    """
    from medlrp.lrp.composites import CNN_DEFAULT, default_composite_name

    name = default_composite_name(model)
    return GUIDANCE_CNN_COMPOSITE if name == CNN_DEFAULT else name


#: The stabiliser of the linear layers' epsilon rule when a transformer is explained for guidance.
#: ``attnlrp``'s own 1e-6 makes the guidance loss rough at the scale of rounding (its gradient jumped
#: from ~0.1 to ~1e3 between runs 1e-8 apart, so the outcome depended on the CPU's kernels; 0.1 keeps
#: the tiny ViT's outcome the same under every kernel, BENCHMARKS.md).
GUIDANCE_TRANSFORMER_EPSILON = 0.1


def guidance_options(model: nn.Module) -> dict[str, Any]:
    """Options :func:`lrp_relevance` gives :func:`guidance_composite` by default (a transformer's epsilon)."""
    from medlrp.lrp.composites import TRANSFORMER_DEFAULT

    if guidance_composite(model) == TRANSFORMER_DEFAULT:
        return {"epsilon": GUIDANCE_TRANSFORMER_EPSILON}
    return {}


def lrp_relevance(composite: str | None = None, **options: Any) -> RelevanceFn:
    """A relevance function running :class:`medlrp.LRP` with ``create_graph=True``.

    Args:
        composite: LRP composite name (``None``: :func:`guidance_composite`, i.e.
            ``epsilon-alpha2-beta1-flat`` for CNNs, ``attnlrp`` with ``epsilon=``
            :data:`GUIDANCE_TRANSFORMER_EPSILON` for transformers).
        **options: Further options of :class:`medlrp.LRP` (e.g. ``low=``, ``high=`` for z-box,
            ``epsilon=``).
    """
    names = {id(fn): name for name, fn in STARTS.items()}

    def fn(
        model: nn.Module, x: torch.Tensor, target: torch.Tensor, start: StartFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from medlrp.lrp import LRP  # late: plain training never needs the engine

        # the engine's own names skip a division by the logits
        engine_start: Any = names.get(id(start), start)
        name = composite if composite is not None else guidance_composite(model)
        defaults = guidance_options(model) if composite is None else {}
        explainer = LRP(model, composite=name, start=engine_start, **{**defaults, **options})
        relevance, logits, _ = explainer.attribute(x, target, create_graph=True)
        return relevance, logits

    return fn


def class_relevance(
    model: nn.Module, x: torch.Tensor, relevance_fn: RelevanceFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One relevance map per class, for :class:`~medlrp.train.guided_losses.BackgroundRelevanceLoss`.

    Runs ``relevance_fn`` (default :func:`lrp_relevance`) once per class, starting from that class's
    logit. Returns ``(relevance (N, K, *x.shape[1:]), logits (N, K))``, both differentiable.
    """
    fn = relevance_fn if relevance_fn is not None else lrp_relevance()
    maps, logits = [], None
    for c in range(_num_classes(model, x)):
        target = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
        r, out = fn(model, x, target, one_hot_logit)
        maps.append(r)
        logits = out if logits is None else logits
    assert logits is not None
    return torch.stack(maps, dim=1), logits


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards (also on error).

    The eval guard every method shares (:func:`medlrp.cam.guard.explaining`).
    """
    with explaining(model):
        yield model


BatchStats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None
    ]


@contextmanager
def record_batch_statistics(
    model: nn.Module, stats: BatchStats, keep_graph: bool = True
) -> Iterator[BatchStats]:
    """During this block, store each training BatchNorm's batch mean and (biased) variance in ``stats``.

    With ``keep_graph`` the statistics carry their graph, so a loss on the relevance also differentiates
    through them, as the training forward does. Held constant instead, the guidance gradient ignores
    BatchNorm's invariance to the scale of its input: a guided model then drifted to predicting one class
    in eval mode. The hooks live only inside the block (removed also on error).
    """

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0] if keep_graph else args[0].detach()
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        # two passes by hand: Tensor.var over (0, 2, ...) is ~5x slower on the CPU (measured: 12.7 ms
        # against 2.5 ms for a (32, 16, 64, 64) batch; cnn2d's guided step fell from ~2.83 to ~2.62
        # plain steps)
        centred = x - mean.reshape((1, -1) + (1,) * (x.dim() - 2))
        stats[module] = (mean, (centred * centred).mean(dim=dims))

    handles = [m.register_forward_pre_hook(hook) for m in _batch_norms(model)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def batch_statistics_as_running(stats: BatchStats) -> Iterator[None]:
    """Hold the recorded batch statistics in the BatchNorms' running buffers; restore them afterwards.

    In eval mode the network then computes exactly what the training forward computed (with the
    statistics held constant), so relevance explains the function being trained. Explaining with the
    running statistics instead lets the model behave one way in training and another way where it is
    explained (a loophole a guided model finds: it keeps the shortcut with batch statistics).
    """
    # Rebind the buffers to the statistics (no in-place write: the relevance graph keeps what it
    # read, and the running statistics' own tensors stay untouched), then put the originals back.
    saved = [(m, m.running_mean, m.running_var) for m in stats]
    try:
        for m, (mean, var) in stats.items():
            m.running_mean, m.running_var = mean, var
        yield
    finally:
        for m, mean, var in saved:
            m.running_mean, m.running_var = mean, var


def forward_with_statistics(model: nn.Module, x: torch.Tensor, stats: BatchStats) -> torch.Tensor:
    """``model(x)`` in eval mode with the recorded batch statistics, differentiable through them.

    ``F.batch_norm`` refuses running statistics that require grad, so each BatchNorm runs on detached
    statistics and a forward hook replaces its output by the same affine map computed from the
    statistics with their graph (as in the training forward and the LRP pass).
    """

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        mean, var = stats[module]
        inp = args[0]
        shape = (1, -1) + (1,) * (inp.dim() - 2)
        scale = torch.rsqrt(var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        out = (inp - mean.reshape(shape)) * scale.reshape(shape)
        return out if module.bias is None else out + module.bias.reshape(shape)

    detached = {m: (mean.detach(), var.detach()) for m, (mean, var) in stats.items()}
    handles = [m.register_forward_hook(hook) for m in stats]
    try:
        with eval_mode(model), batch_statistics_as_running(detached):
            return model(x)
    finally:
        for h in handles:
            h.remove()


def grow_mask(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Dilate ``(N, 1, *spatial)`` masks (2D or 3D) by ``margin`` pixels (a cube/square neighbourhood)."""
    if margin <= 0:
        return mask
    pool = F.max_pool2d if mask.dim() == 4 else F.max_pool3d
    return pool(mask.float(), 2 * margin + 1, stride=1, padding=margin).to(mask.dtype)


#: ``GuidedLoss(explain_every="auto")``: every 64th case is explained where the term is bounded (the
#: default relevance; one case every second step with batches of 32), every 32nd where it is not: the
#: bound costs a second backward, and with every case referenced (the defaults) a guided ``vit2d`` step
#: cost 3.0x a plain one at every 32nd case, 2.5x at every 64th (BENCHMARKS.md).
EXPLAIN_EVERY_BOUNDED, EXPLAIN_EVERY_UNBOUNDED = 64, 32


#: ``GuidedLoss(guidance_bound="auto")`` with the default relevance: the explanation term's gradient is
#: at most this share of the rest's (cross-entropy and reference term) in every step. The LRP term's
#: gradient is rough (the attnlrp term's norm was 3-300x the rest's, epoch means, in the guided ViT; the
#: CNN's epochs of 3x and 17x among 0.1-0.4x) and Adam makes a full step of any spike; bounded at 0.3 the
#: guided models' outcome no longer depended on the CPU's kernels (BENCHMARKS.md, "A guided recipe that
#: does not depend on rounding" and session 11). A BatchNorm CNN's statistics feed both parts, so the
#: bound differentiates its training forward twice in the steps that explain a case.
GUIDANCE_BOUND = 0.3


class GuidedLoss(nn.Module):
    """Cross-entropy on every case plus ``guidance_weight`` times the explanation losses on masked cases.

    ``loss = ce + guidance_weight * (criterion(relevance) + reference_weight * reference)
    + counterfactual_weight * ce_reference``.

    Args:
        guidance_weight: Weight of the explanation loss (0 trains plainly).
        criterion: Explanation loss ``criterion(relevance, mask, logit) -> scalar`` (mean over its
            cases; default :class:`~medlrp.train.guided_losses.GuidanceLoss` with ``tau=1``).
        relevance_fn: How relevance is computed (default :func:`lrp_relevance` with ``composite``).
        composite: LRP composite for the default relevance function (see :func:`lrp_relevance`).
        start: ``"logit-difference"`` (default), ``"logit"`` or a callable ``start(output, target)``.
        explain_every: Explain every n-th case (counted over the run, see :meth:`selection` and the
            module docstring); 1 explains all; ``"auto"`` (default): :data:`EXPLAIN_EVERY_BOUNDED`
            where the term is bounded (:meth:`bound_for`), else :data:`EXPLAIN_EVERY_UNBOUNDED`.
        mask_margin: Grow each mask by this many pixels (voxels) before the loss: the region that may
            carry relevance then includes the lesion's surroundings (a classifier reads a lesion
            against its context, so a tight lesion mask also penalises right reasons).
        reference_weight: Weight of :class:`~medlrp.train.guided_losses.ReferenceLoss` relative to the
            explanation loss (both are scaled by ``guidance_weight``), on every ``reference_every``-th
            masked case (the explained logit relative to the case with another case's content outside
            its mask: it sees what units switched off by the outside carry, which relevance of the
            case alone cannot show; one plain forward per case). 0 leaves it out.
        reference_every: Use every n-th masked case for the reference term (by position, weighted by
            n: an unbiased estimate, as for ``explain_every``).
        counterfactual_weight: Weight of the cross-entropy of each referenced case's label on its
            reference (the case with another case's content outside its mask; no extra forward or
            backward: the reference term's are reused), relative to the cross-entropy. 0 leaves it out;
            it needs the reference term (``reference_weight > 0``).
        explain_start: Training steps (calls with the model in training mode, counted in ``steps``)
            before the explanation term starts; the reference term runs from the first step.
        explain_ramp: Training steps over which the explanation term's weight rises linearly from 0 to
            ``guidance_weight`` after ``explain_start`` (0: a hard start).
        guidance_bound: Largest ratio of the explanation term's gradient norm to that of the rest of
            the loss (cross-entropy and reference term) in a training step
            (:func:`~medlrp.train.guided_clip.bounded_sum`); ``None``: unbounded; ``"auto"`` (default):
            :data:`GUIDANCE_BOUND` when the relevance is the default one (no ``relevance_fn``, no
            ``composite``), else unbounded. Under DDP the bound applies to the whole batch's
            gradient.
    """

    def __init__(
        self,
        guidance_weight: float = 0.3,
        criterion: nn.Module | None = None,
        relevance_fn: RelevanceFn | None = None,
        composite: str | None = None,
        start: str | StartFn = "logit-difference",
        explain_every: int | str = "auto",
        mask_margin: int = 0,
        reference_weight: float = 3.0,
        reference_every: int = 1,
        explain_start: int = 0,
        explain_ramp: int = 0,
        guidance_bound: float | str | None = "auto",
        counterfactual_weight: float = 3.0,
    ) -> None:
        super().__init__()
        if not guidance_weight >= 0:
            raise InputError(f"guidance weight must be >= 0, got {guidance_weight}")
        if explain_every != "auto" and not (isinstance(explain_every, int) and explain_every >= 1):
            raise InputError(f"explain_every must be at least 1 or 'auto', got {explain_every!r}")
        self.guidance_weight = float(guidance_weight)
        # a unit of at least one logit: an untrained network's logits are tiny, and a unit tied to them
        # lets the guidance gradient outweigh the cross-entropy by their inverse (measured: the model
        # never starts learning, cross-entropy stuck at log 2)
        self.criterion = criterion if criterion is not None else GuidanceLoss(tau=1.0)
        self.relevance_fn = relevance_fn if relevance_fn is not None else lrp_relevance(composite)
        self.start = resolve_start(start)
        self.explain_every: int | str = explain_every
        if mask_margin < 0:
            raise InputError(f"mask_margin must be >= 0, got {mask_margin}")
        self.mask_margin = int(mask_margin)
        if not reference_weight >= 0:
            raise InputError(f"reference weight must be >= 0, got {reference_weight}")
        self.reference_weight = float(reference_weight)
        if reference_every < 1:
            raise InputError(f"reference_every must be at least 1, got {reference_every}")
        self.reference_every = int(reference_every)
        if explain_start < 0:
            raise InputError(f"explain_start must be >= 0, got {explain_start}")
        self.explain_start = int(explain_start)
        if explain_ramp < 0:
            raise InputError(f"explain_ramp must be >= 0, got {explain_ramp}")
        self.explain_ramp = int(explain_ramp)
        if isinstance(guidance_bound, str) and guidance_bound != "auto":
            raise InputError(f"guidance_bound must be a number >= 0, None or 'auto', got {guidance_bound!r}")
        if not isinstance(guidance_bound, str | None) and not guidance_bound >= 0:
            raise InputError(f"guidance_bound must be >= 0, None or 'auto', got {guidance_bound}")
        self.guidance_bound: float | str | None = (
            guidance_bound if isinstance(guidance_bound, str | None) else float(guidance_bound)
        )
        if not counterfactual_weight >= 0:
            raise InputError(f"counterfactual weight must be >= 0, got {counterfactual_weight}")
        self.counterfactual_weight = float(counterfactual_weight)
        self._default_relevance = relevance_fn is None and composite is None
        self.steps = 0
        #: Cases of the training batches so far (whole batches; see :meth:`selection`).
        self.seen = 0
        #: Set by :mod:`medlrp.train.guided_dist`: the size of the whole batch a shard belongs to.
        self.whole_batch: int | None = None
        self.reference = ReferenceLoss()
        #: Set by :mod:`medlrp.train.guided_dist`: this shard's gradients -> the whole batch's, so that
        #: ``guidance_bound`` applies to the whole batch as in one process.
        self.reduce_gradients: Callable[[torch.Tensor], torch.Tensor] | None = None

    def bound_for(self, model: nn.Module) -> float | None:
        """The guidance bound used for ``model`` (``"auto"`` resolved: see the class docstring)."""
        if self.guidance_bound != "auto":
            return self.guidance_bound  # type: ignore[return-value]
        return GUIDANCE_BOUND if self._default_relevance else None

    def explain_every_for(self, model: nn.Module) -> int:
        """``explain_every`` for ``model`` (``"auto"`` resolved: see the class docstring)."""
        if isinstance(self.explain_every, int):
            return self.explain_every
        return EXPLAIN_EVERY_BOUNDED if self.bound_for(model) is not None else EXPLAIN_EVERY_UNBOUNDED

    def ramp(self, step: int) -> float:
        """The explanation term's share of ``guidance_weight`` at training step ``step`` (0 to 1)."""
        if step < self.explain_start:
            return 0.0
        if self.explain_ramp == 0:
            return 1.0
        return min(1.0, (step - self.explain_start + 1) / (self.explain_ramp + 1))

    def selection(
        self,
        n: int,
        has_mask: torch.Tensor | None,
        offset: int = 0,
        every: int | None = None,
        seen: int | None = None,
    ) -> torch.Tensor:
        """Which of ``n`` cases to explain: bool ``(n,)``.

        Cases are counted over the whole run (training batches one after another), so that every n-th
        case is taken also where n exceeds the batch: ``explain_every=64`` with batches of 32 explains
        one case in every second step.

        Args:
            n: Cases in the batch.
            has_mask: Which cases have a mask (``None``: all).
            offset: Position of the first case in the whole batch (for a shard of a distributed batch).
            every: Take every n-th case (default ``explain_every``, which must then be a number: pass
                :meth:`explain_every_for` where it is ``"auto"``; the reference term passes its own).
            seen: Cases of training batches before this batch (default :attr:`seen`).
        """
        first = offset + (self.seen if seen is None else seen)
        if every is None:
            if not isinstance(self.explain_every, int):
                raise InputError("explain_every is 'auto': pass every=explain_every_for(model)")
            every = self.explain_every
        picked = (torch.arange(n) + first) % every == 0
        if has_mask is not None:
            picked = picked & has_mask.detach().cpu().bool()
        return picked

    def forward(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        has_mask: torch.Tensor | None = None,
        offset: int = 0,
        partner: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss, parts)``; ``parts``: the detached ``ce``, ``guidance``, ``acc`` (``reference``).

        With the bound on (:meth:`bound_for`), ``guidance_grad_ratio`` too: the explanation term's
        gradient norm over the rest's before the bound. ``guidance`` is the batch-mean explanation
        loss (estimated from the explained cases), unweighted.

        Args:
            model: The model being trained (the plain module: not a DistributedDataParallel wrapper).
            x: Input batch ``(N, C, *spatial)``.
            y: Labels ``(N,)``; relevance explains each case's label.
            mask: ``(N, ...)`` masks (``None``: train plainly).
            has_mask: ``(N,)`` bool, which cases have a mask (default: all, when ``mask`` is given).
            offset: Position of ``x[0]`` in the whole batch (see :meth:`selection`).
            partner: What goes outside each case's mask in its reference (default ``x.roll(1, 0)``;
                a shard of a distributed batch passes its cases' predecessors in the whole batch).
        """
        stats: BatchStats = {}
        with record_batch_statistics(model, stats):
            logits = model(x)
        ce = F.cross_entropy(logits, y)
        parts = {
            "ce": ce.detach(),
            "guidance": ce.new_zeros(()),
            "acc": (logits.detach().argmax(dim=1) == y).float().mean(),
        }
        step, seen = self.steps, self.seen
        training = model.training
        if training:
            self.steps += 1
            self.seen += self.whole_batch if self.whole_batch is not None else x.shape[0]
        if mask is None or self.guidance_weight == 0:
            return ce, parts
        loss = ce
        if self.reference_weight and self.guidance_weight:
            if partner is None:
                partner = x.roll(1, dims=0)
            reference, counterfactual = self._reference(
                model, x, y, logits, mask, has_mask, stats, parts, offset, partner, seen
            )
            loss = loss + self.guidance_weight * self.reference_weight * reference
            if counterfactual is not None:
                loss = loss + self.counterfactual_weight * counterfactual
        every = self.explain_every_for(model)
        picked = self.selection(x.shape[0], has_mask, offset, every, seen).to(x.device)
        share = self.ramp(step)
        if share == 0 or not bool(picked.any()):
            return loss, parts
        region = grow_mask(mask[picked], self.mask_margin)
        with eval_mode(model), batch_statistics_as_running(stats):
            relevance, out = self.relevance_fn(model, x[picked], y[picked], self.start)
        explained = self.start(out, y[picked]).sum(dim=1)
        guidance = self.criterion(relevance, region, explained)
        # mean over the explained cases -> unbiased estimate of the mean over the batch
        guidance = guidance * (float(picked.sum()) * every / x.shape[0])
        parts["guidance"] = guidance.detach()
        term = share * self.guidance_weight * guidance
        bound = self.bound_for(model)
        if bound is None or not (training and torch.is_grad_enabled()):
            return loss + term, parts
        params = [p for p in model.parameters() if p.requires_grad]
        bounded, ratio = bounded_sum(loss, term, params, bound, self.reduce_gradients)
        parts["guidance_grad_ratio"] = torch.tensor(ratio)
        return bounded, parts

    def _reference(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        has_mask: torch.Tensor | None,
        stats: BatchStats,
        parts: dict[str, torch.Tensor],
        offset: int,
        partner: torch.Tensor,
        seen: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:class:`ReferenceLoss` on every ``reference_every``-th masked case (a plain forward of each).

        Returns ``(reference loss, counterfactual cross-entropy or None)``, both batch-mean estimates.
        """
        picked = self.selection(x.shape[0], has_mask, offset, self.reference_every, seen).to(x.device)
        if not bool(picked.any()):
            return logits.new_zeros(()), None
        region = grow_mask(mask[picked], self.mask_margin)
        out_ref = forward_with_statistics(model, masked_reference(x[picked], region, partner[picked]), stats)
        e, e_ref = self.start(logits[picked], y[picked]).sum(dim=1), self.start(out_ref, y[picked]).sum(dim=1)
        # mean over the used cases, weighted back to the batch: an unbiased estimate of the batch mean
        share = float(picked.sum()) * self.reference_every / x.shape[0]
        loss = self.reference(e, e_ref) * share
        parts["reference"] = loss.detach()
        if not self.counterfactual_weight:
            return loss, None
        # each case's label on its reference: there the outside comes from another case and tells nothing
        summed = F.cross_entropy(out_ref, y[picked], reduction="sum")
        counterfactual = summed * (self.reference_every / x.shape[0])
        parts["counterfactual_ce"] = counterfactual.detach()
        return loss, counterfactual

    def loss_fn(self) -> Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]:
        """This loss as ``loss_fn(model, batch) -> (loss, parts as floats)`` for :func:`medlrp.train.fit`.

        ``batch`` is a :class:`medlrp.data.Batch` (``x``, ``label``, ``mask``, ``has_mask``).
        """

        def fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            loss, parts = self(model, batch.x, batch.label, batch.mask, batch.has_mask)
            return loss, {k: float(v) for k, v in parts.items()}

        return fn
