"""A loss term whose gradient may not outweigh the rest of the loss: the guidance term's bound.

The gradient of a loss on an LRP explanation is rough: at the scale of rounding (1e-8 in the
parameters) the guidance gradient of a tiny ViT jumped from ~0.1 to ~1e3 from one step to the next
(BENCHMARKS.md, "Why the guided ViT depends on the CPU's rounding"), and Adam turns any such spike into
a full-size step, so the run's outcome depended on the CPU's kernels. :func:`bounded_sum` returns a
scalar whose value is ``rest + term`` and whose gradient is ``grad(rest) + s * grad(term)`` with
``s = min(1, bound * |grad(rest)| / |grad(term)|)`` (norms over all parameters together): the term can
steer, never dominate, and a spike is cut to the size of an ordinary step.

Both gradients are taken here (``torch.autograd.grad``), the returned scalar only deposits their
bounded sum on ``backward()``: the cost is one backward of each part, as for ``(rest + term).backward()``
when the two parts share no intermediate tensors (a ViT); where they do (a BatchNorm CNN's batch
statistics feed the explanation), the shared part is differentiated twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["bounded_sum", "gradient_norm"]


def gradient_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The Euclidean norm of several gradients taken together (``None`` counts as zero)."""
    squares = [g.detach().double().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros((), dtype=torch.float64)


def bounded_sum(
    rest: torch.Tensor,
    term: torch.Tensor,
    params: Sequence[torch.Tensor],
    bound: float,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float]:
    """``rest + term`` whose gradient w.r.t. ``params`` has the term's part at most ``bound`` x the rest's.

    Args:
        rest: Scalar loss (e.g. cross-entropy plus the reference term).
        term: Scalar loss whose gradient is bounded (the explanation term).
        params: The parameters both are differentiated with respect to (those that require grad).
        bound: Largest ratio of the term's gradient norm to the rest's (0: the term moves nothing).
        reduce: Maps this process's flat gradients (rest's and term's, stacked as ``(2, P)``) to the
            whole batch's (a weighted all-reduce under DDP, :mod:`medlrp.train.guided_dist`); the bound
            then holds for the whole batch's gradient, and every process returns that gradient.

    Returns:
        ``(loss, ratio)``: a scalar with the value of ``rest + term`` (no graph beyond ``params``) whose
        ``backward()`` accumulates the bounded gradient into ``params``; ``ratio`` is the term's gradient
        norm over the rest's before the bound (``inf`` when the rest's gradient vanishes).
    """
    params = list(params)
    g_term = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    g_rest = torch.autograd.grad(rest, params, allow_unused=True)
    if reduce is not None:
        flat = torch.stack([_flat(g_rest, params), _flat(g_term, params)])
        flat = reduce(flat)
        g_rest, g_term = _unflat(flat[0], params), _unflat(flat[1], params)
    n_term, n_rest = gradient_norm(g_term), gradient_norm(g_rest)
    ratio = float(n_term / n_rest) if n_rest > 0 else (float("inf") if n_term > 0 else 0.0)
    scale = 1.0 if ratio <= bound else (bound / ratio if n_rest > 0 else 0.0)
    grads = [_combine(a, b, scale) for a, b in zip(g_rest, g_term, strict=True)]
    used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    value = (rest + term).detach()
    return _Deposit.apply(value, [g for _, g in used], *(p for p, _ in used)), ratio


def _combine(a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    if b is None:
        return a
    return scale * b if a is None else a + scale * b


class _Deposit(torch.autograd.Function):
    """``value`` as a function of ``params`` whose gradient is ``grads`` (times the incoming gradient)."""

    @staticmethod
    def forward(
        ctx: Any, value: torch.Tensor, grads: list[torch.Tensor], *params: torch.Tensor
    ) -> torch.Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, *(g * grad_out.to(g.dtype) for g in ctx.grads))


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    pairs = zip(grads, params, strict=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in pairs])


def _unflat(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in params:
        out.append(flat[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out
