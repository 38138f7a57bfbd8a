"""The engine behind every perturbation curve: ranked units, cumulative masks, batched forwards.

Each unit (a voxel, a channel-voxel or a patch) has a rank per sample; step ``s`` perturbs the units whose
rank is below ``counts[s]``. All steps of a chunk are built with one broadcast ``torch.where`` and sent
through the model as one batch, so the cost is the forward passes plus one write per input element.
"""

from __future__ import annotations

import torch

from medlrp.errors import InputError
from medlrp.metrics._common import inference_mode_of, predict
from medlrp.targets import Target, resolve_target


def rank_units(scores: torch.Tensor, order: str, seed: int = 0) -> torch.Tensor:
    """Rank of each unit per sample: ``scores (N, U) -> int32 (N, U)``, 0 = perturbed first.

    ``order``: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"``.
    Ties keep their flat position order (a stable sort), so results are deterministic.
    """
    key = order.lower()
    if key == "morf":
        idx = torch.argsort(scores, dim=1, descending=True, stable=True)
    elif key == "lerf":
        idx = torch.argsort(scores, dim=1, stable=True)
    elif key == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        idx = torch.argsort(torch.rand(scores.shape, generator=gen), dim=1).to(scores.device)
    else:
        raise InputError(f"unknown order {order!r}; expected 'morf', 'lerf' or 'random'")
    rank = torch.empty(idx.shape, dtype=torch.int32, device=scores.device)
    ar = torch.arange(idx.shape[1], dtype=torch.int32, device=scores.device)
    return rank.scatter_(1, idx, ar.expand(idx.shape))


def perturbation_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    rank: torch.Tensor,
    counts: torch.Tensor,
    target: Target,
    *,
    softmax: bool,
    batch_size: int,
    insert: bool = False,
) -> torch.Tensor:
    """Model scores of the target class along a perturbation path.

    Args:
        model: The classifier (evaluated in eval mode without gradients; its flags are restored).
        x: Input ``(N, C, *spatial)``.
        baseline: Replacement values of ``x``'s shape (an expanded view is fine).
        rank: ``(N, 1 or C, *spatial)`` integer rank of the unit each element belongs to.
        counts: ``(S,)`` number of perturbed units at each step (non-decreasing).
        target: The explained class per sample (``None``: the argmax on ``x``).
        softmax: Score with probabilities (True) or logits (False).
        batch_size: At most this many perturbed inputs per forward pass (at least one step of a block).
        insert: Perturbed units take ``x``'s values and the rest the baseline (insertion curves).

    Returns:
        ``(N, S)`` scores.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    n = x.shape[0]
    counts = counts.to(device=x.device, dtype=torch.int32)
    num_steps = counts.numel()
    shape_c = (-1,) + (1,) * x.ndim
    result: torch.Tensor | None = None
    with inference_mode_of(model):
        # The target comes from the clean input; a deletion path over one block starts with it (no extra
        # pass), other paths need one.
        lazy = target is None and not insert and int(counts[0]) == 0 and n <= batch_size
        if not lazy:
            clean = torch.cat(
                [predict(model, x[i : i + batch_size], softmax) for i in range(0, n, batch_size)]
            )
            t = resolve_target(target, clean)
        else:
            t = None
        for lo in range(0, n, batch_size):
            xs, bs, rk = x[lo : lo + batch_size], baseline[lo : lo + batch_size], rank[lo : lo + batch_size]
            b = xs.shape[0]
            per_chunk = max(1, batch_size // b)
            for s0 in range(0, num_steps, per_chunk):
                c = counts[s0 : s0 + per_chunk]
                mask = rk.unsqueeze(0) < c.view(shape_c)
                inputs = torch.where(mask, xs, bs) if insert else torch.where(mask, bs, xs)
                out = predict(model, inputs.reshape(-1, *x.shape[1:]), softmax).reshape(c.numel(), b, -1)
                if t is None:
                    t = resolve_target(None, out[0])
                if result is None:
                    result = torch.empty(n, num_steps, dtype=out.dtype, device=out.device)
                tb = t[lo : lo + b].view(1, b, 1).expand(c.numel(), b, 1)
                result[lo : lo + b, s0 : s0 + c.numel()] = out.gather(2, tb)[..., 0].T
    assert result is not None
    return result
