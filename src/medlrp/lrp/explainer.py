"""``medlrp.LRP``: the reusable explainer, and the ``lrp`` method of ``medlrp.explain``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.lrp.composites import Composite, resolve_composite
from medlrp.lrp.engine import Engine, WeightCache
from medlrp.lrp.handlers import HANDLERS
from medlrp.lrp.reads import Read
from medlrp.lrp.replay import Replay
from medlrp.region import Goal, Region, check_main_head, resolve_goal
from medlrp.registry import METHODS
from medlrp.targets import STARTS, StartFn, Target

Tensor = torch.Tensor


class LRP:
    """Layer-wise Relevance Propagation for a model; reusable, and it never changes the model.

    The rules are written into the model's forward pass (see :mod:`medlrp.lrp.engine`), so one
    ordinary backward pass gives the relevance as ``input * grad``. The model is not modified: no
    hooks, no parameter swap, no patching; its train/eval mode is left alone (BatchNorm with batch
    statistics or active dropout is refused with an :class:`~medlrp.errors.InputError`: call
    ``model.eval()`` first).

    Args:
        model: A classifier ``(N, C, *spatial) -> (N, classes)``, or a segmentation network
            ``(N, C, *spatial) -> (N, classes, *spatial)`` (explained over a region, see
            :mod:`medlrp.region`; a deep-supervision network must be in eval mode).
        composite: A registered composite name (``medlrp.COMPOSITES.names()``), a
            :class:`~medlrp.lrp.composites.Composite`, or ``None`` (``epsilon-plus-flat`` for CNNs).
        start: The initial relevance at the output: ``"logit"`` (the target logit, default),
            ``"one-hot"`` (1 at the target), ``"logit-difference"`` (target logit minus the mean of
            the other logits), ``"all-classes"`` (every logit), or ``start(output, target) -> R0``.
        graphs: Capture the pass once per input shape and replay it (:mod:`medlrp.lrp.replay`):
            ``"auto"`` (default) for CUDA inputs, ``True`` on every device (on the CPU the same protocol
            runs the pass eagerly: a check, not a speed-up), ``False`` never. Differentiable relevance
            (``create_graph=True``) and segmentation outputs always run eagerly. Results equal the eager
            pass's.
        **options: Options of the named composite (``epsilon=``, ``gamma=``, ``low=``, ``high=`` ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        composite: str | Composite | None = None,
        *,
        start: str | StartFn = "logit",
        graphs: bool | str = "auto",
        **options: Any,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise InputError(
                "LRP cannot see inside a TorchScript model (its operations run in C++): explain the "
                "Python model (a medlrp checkpoint), or use a gradient or CAM method"
            )
        if not callable(start) and start not in STARTS:
            raise InputError(f"unknown start {start!r}; known: {', '.join(STARTS)} or a callable")
        if graphs not in (True, False, "auto"):
            raise InputError(f"graphs must be True, False or 'auto', not {graphs!r}")
        self.model = model
        self.composite = resolve_composite(model, composite, **options)
        self.start = start
        self._select = self.composite.selector(model)
        self._handlers = {**HANDLERS, **self.composite.handlers}
        self._weights = WeightCache()
        self.graphs = graphs
        #: The captured passes (:mod:`medlrp.lrp.replay`); ``None`` with ``graphs=False``.
        self.replay = None if graphs is False else Replay(self._pass, model, check=self._check_model)

    def __call__(self, x: Tensor, target: Target = None, region: Region = None) -> Explanation:
        """Explain ``x``: an :class:`~medlrp.explanation.Explanation` with ``method="lrp"``.

        For a segmentation model (output ``(N, C, *spatial)``) the explained quantity is class
        ``target``'s logit sum over ``region`` (see :mod:`medlrp.region`); ``region`` is refused for a
        classifier.
        """
        relevance, output, goal = self._attribute(x, target, False, region)
        options: dict[str, Any] = {
            "composite": self.composite.name or "custom",
            "start": self.start if isinstance(self.start, str) else "custom",
            "rules": self.composite.options(),
        }
        return Explanation(relevance.detach(), output.detach(), goal.target, "lrp", options, goal.region)

    def relevance(
        self, x: Tensor, target: Target = None, create_graph: bool = False, *, region: Region = None
    ) -> Tensor:
        """The relevance of ``x`` (``x``'s shape).

        With ``create_graph=True`` the result is differentiable w.r.t. the model's parameters and
        ``x`` (if it requires grad), with exact derivatives (for explanation-guided training).
        ``region``: segmentation models only (see :meth:`__call__`).
        """
        return self._attribute(x, target, create_graph, region)[0]

    def attribute(
        self, x: Tensor, target: Target = None, create_graph: bool = False, *, region: Region = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(relevance, logits, target)``; logits carry their graph when ``create_graph``."""
        relevance, output, goal = self._attribute(x, target, create_graph, region)
        return relevance, output, goal.target

    def _attribute(
        self, x: Tensor, target: Target, create_graph: bool, region: Region
    ) -> tuple[Tensor, Tensor, Goal]:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise InputError("x must be a floating-point tensor with a batch dimension")
        if self._replays(x, create_graph, region):
            return self.replay(x, target)  # type: ignore[misc]  # it runs _check_model but on a replay
        self._check_model()
        return self._pass(x, lambda output: resolve_goal(output, target, region), None, create_graph)

    def _check_model(self) -> None:
        """Refuse a model the pass would explain wrongly or change (train-mode heads, batch statistics)."""
        check_main_head(self.model)  # the more specific refusal of a train-mode model first
        _refuse_batch_statistics(self.model)

    def _replays(self, x: Tensor, create_graph: bool, region: Region) -> bool:
        """Whether this call goes through the captured passes (see ``graphs``)."""
        if self.replay is None or create_graph or region is not None:
            return False
        return self.graphs is True or x.device.type == "cuda"

    def _pass(
        self,
        x: Tensor,
        goal_of: Callable[[Tensor], Goal],
        reads: Read | None = None,
        create_graph: bool = False,
    ) -> tuple[Tensor, Tensor, Goal]:
        """One LRP pass: ``(relevance, logits, goal)``, the goal made from the logits by ``goal_of``.

        ``reads``: how the engine reads the values rules branch on (:mod:`medlrp.lrp.reads`); a pass
        given them (a recorded or captured one) keeps no derived weights between passes, whose memory
        a replay could not see change.
        """
        weights = self._weights if reads is None else None
        engine = Engine(self.model, self._handlers, self._select, create_graph, {}, weights)
        engine.reads = reads
        try:
            with torch.enable_grad():
                output, routed, references = self._forward(engine, x, create_graph)
                goal = goal_of(output)
                grad_out = self._start_gradient(output if create_graph else output.detach(), goal)
                leaves = [engine.routed_input] + [ref for _, ref in references]
                grads = torch.autograd.grad(
                    routed, leaves, grad_outputs=grad_out, create_graph=create_graph, allow_unused=True
                )
        finally:
            engine.release()
        source = x if create_graph else x.detach()
        relevance = _times(source, grads[0])
        for (value, _), g in zip(references, grads[1:], strict=True):
            if g is not None:
                relevance = relevance + value * g
        return relevance, output, goal

    def _forward(
        self, engine: Engine, x: Tensor, create_graph: bool
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """Run the model under ``engine``: ``(logits, routed logits, references)``."""
        leaf = x.detach().requires_grad_(True)
        if create_graph:
            # a fresh alias of x (never tag the caller's tensor), keeping x's graph
            true = x.view_as(x) if x.requires_grad else x.detach()
        else:
            true = leaf
        engine.routed_input = leaf
        engine.track(true, leaf).is_input = True
        with engine.running(), engine:
            output = _logits(self.model(true))
        if not isinstance(output, Tensor) or output.dim() < 2:
            raise InputError(
                "LRP needs a model returning logits of shape (N, classes) or, for segmentation, "
                "(N, classes, *spatial)"
            )
        if engine.node(output) is None:
            raise InputError("the model output does not depend on the input")
        return output, engine.routed(output), list(engine.references)

    def _start_gradient(self, out: Tensor, goal: Goal) -> Tensor:
        """The gradient at the logits whose product with the logits is the initial relevance.

        For a segmentation output every start is taken position by position and weighted by the region.
        """
        start = self.start
        if start == "logit":
            return goal.seed(out)  # one-hot times the region, in one tensor
        one_hot = Goal(goal.target).seed(out)
        if start == "all-classes":
            grad = torch.ones_like(out)
        elif start == "logit-difference":
            others = out.shape[1] - 1
            grad = one_hot - (1 - one_hot) / max(others, 1)
        else:
            r0 = one_hot if start == "one-hot" else start(out, goal.target)  # type: ignore[operator]
            if not isinstance(r0, Tensor) or r0.shape != out.shape:
                raise InputError("start(output, target) must return a tensor of the output's shape")
            zero = out == 0
            grad = torch.where(zero, 0.0, r0 / torch.where(zero, 1.0, out))
        return grad if goal.region is None else grad * goal.region


def _refuse_batch_statistics(model: torch.nn.Module) -> None:
    """Refuse BatchNorm in train mode before the forward pass.

    Run, it would count the batch (``num_batches_tracked``) before the engine could refuse it, and so
    change the user's model.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            raise InputError(
                f"{name or 'the model'} ({type(module).__name__}) uses batch statistics (model in train "
                "mode), which couples the samples of a batch: call model.eval() before LRP"
            )


def _logits(output: object) -> object:
    """The logits of a model output.

    The tensor itself, the first element of a tuple or list (MONAI's ViT returns
    ``(logits, hidden_states)``), or the ``.logits`` of a Hugging Face style output.
    """
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


def _times(x: Tensor, g: Tensor | None) -> Tensor:
    return torch.zeros_like(x) if g is None else x * g


@METHODS.register("lrp", composite=True, conserving=True)
def lrp_method(
    model: torch.nn.Module,
    x: Tensor,
    target: Target = None,
    composite: str | Composite | None = None,
    region: Region = None,
    **options: Any,
) -> Explanation:
    """``medlrp.explain(..., method="lrp", composite=...)``.

    A one-call explainer, so nothing is captured unless ``graphs=`` is given: a capture pays off over
    the calls of one reused :class:`LRP`.
    """
    options.setdefault("graphs", False)
    return LRP(model, composite, **options)(x, target, region)
