"""The engine behind every perturbation curve: ordered units, in-place updates, batched forwards.

Each sample's units (voxels with all their channels, single elements, or the voxels of a patch) are
perturbed in a given order; step ``s`` has the first ``counts[n, s]`` of them replaced. The perturbed input
of one step differs from the previous one in a few units only, so it is built by scattering those into a
running copy and copying the result into a reusable chunk buffer (a memory copy per input, no full
``where`` over the chunk: that was the cost that dominated cheap models). Each chunk of steps then goes
through the model as one batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medlrp.errors import InputError
from medlrp.metrics._common import inference_mode_of, predict, resolve_batch_size
from medlrp.targets import Target, resolve_target


def _sort_key(scores: torch.Tensor) -> torch.Tensor:
    """Integer keys in the order of the float scores (IEEE bits, negatives flipped; -0.0 equals 0.0).

    A stable sort of integers is several times faster than one of floats on CPU (radix sort), and sorts
    in exactly the same order, ties included.
    """
    f = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
    if not f.is_floating_point():
        return scores.long()
    itype, flip = (torch.int32, 0x7FFFFFFF) if f.dtype == torch.float32 else (torch.int64, 0x7FFFFFFFFFFFFFFF)
    bits = (f + 0.0).contiguous().view(itype)  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, bits ^ flip, bits)


def stable_argsort(key: torch.Tensor) -> torch.Tensor:
    """Ascending argsort along dim 1 with ties in position order."""
    if key.device.type == "cpu" and key.dtype == torch.int32:
        # Key and position packed into one int64 make every key unique, so any sort is stable; NumPy's
        # SIMD sort of those is several times faster than torch's stable sort on CPU.
        packed = (key.long() << 32) | torch.arange(key.shape[1])
        return torch.from_numpy(np.argsort(packed.numpy(), axis=1))
    return torch.sort(key, dim=1, stable=True).indices


def unit_order(scores: torch.Tensor, order: str, seed: int = 0) -> torch.Tensor:
    """Unit indices per sample in perturbation order: ``scores (N, U) -> long (N, U)``.

    ``order``: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"``.
    Ties keep their flat position order (a stable sort), so results are deterministic. NaN scores have
    no defined place.
    """
    key = order.lower()
    if key == "morf":
        return stable_argsort(~_sort_key(scores))  # ~k reverses the order
    if key == "lerf":
        return stable_argsort(_sort_key(scores))
    if key == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return torch.argsort(torch.rand(scores.shape, generator=gen), dim=1).to(scores.device)
    raise InputError(f"unknown order {order!r}; expected 'morf', 'lerf' or 'random'")


def rank_units(scores: torch.Tensor, order: str, seed: int = 0) -> torch.Tensor:
    """Rank of each unit per sample (0 = perturbed first): ``scores (N, U) -> int32 (N, U)``."""
    idx = unit_order(scores, order, seed)
    ar = torch.arange(idx.shape[1], dtype=torch.int32, device=scores.device)
    rank = torch.empty(idx.shape, dtype=torch.int32, device=scores.device)
    return rank.scatter_(1, idx, ar.expand(idx.shape))


def perturbation_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    target: Target,
    *,
    softmax: bool,
    batch_size: int | None,
    insert: bool = False,
) -> torch.Tensor:
    """Model scores of the target class along a perturbation path.

    Args:
        model: The classifier (evaluated in eval mode without gradients; its flags are restored).
        x: Input ``(N, C, *spatial)``.
        baseline: Replacement values of ``x``'s shape (an expanded view is fine).
        order: ``(N, U)`` unit indices, first perturbed first. A unit is a voxel with all its channels when
            ``U`` is the number of voxels, else one element of ``(C, *spatial)``.
        counts: ``(N, S)`` units perturbed after each step (non-decreasing along a row).
        target: The explained class per sample (``None``: the argmax on ``x``).
        softmax: Score with probabilities (True) or logits (False).
        batch_size: At most this many perturbed inputs per forward pass (at least one step of a block);
            ``None``: see :func:`~medlrp.metrics._common.resolve_batch_size`.
        insert: Perturbed units take ``x``'s values and the rest the baseline (insertion curves).

    Returns:
        ``(N, S)`` scores.
    """
    batch_size = resolve_batch_size(batch_size, x)
    n, c = x.shape[:2]
    voxels = math.prod(x.shape[2:])
    whole_voxels = order.shape[1] == voxels and c > 1
    counts = counts.to(device=x.device, dtype=torch.long)
    order = order.to(x.device)
    num_steps = counts.shape[1]
    # A step whose input is the baseline for every sample (everything deleted, or nothing inserted yet)
    # needs one forward pass, not one per sample, when the baseline is shared by the batch (a number).
    shared = [False] * num_steps
    if n > 1 and baseline.stride(0) == 0:
        shared = counts.eq(0 if insert else order.shape[1]).all(dim=0).tolist()
    regular = [s for s in range(num_steps) if not shared[s]]
    result: torch.Tensor | None = None
    with inference_mode_of(model):
        # A given target is checked against the first output's shape (no extra pass). Without one, the
        # argmax on the clean input is needed: a deletion path over one block starts with it, other paths
        # need a pass of their own.
        starts_clean = not insert and int(counts[:, 0].max()) == 0 and n <= batch_size
        t = None
        if target is None and not starts_clean:
            chunks = [predict(model, x[i : i + batch_size], softmax) for i in range(0, n, batch_size)]
            t = resolve_target(None, torch.cat(chunks))
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            b = hi - lo
            start, source = (baseline, x) if insert else (x, baseline)
            state = torch.empty((b, c, voxels), dtype=x.dtype, device=x.device)
            state.copy_(start[lo:hi].reshape(b, c, voxels))
            src = source[lo:hi].reshape(b, c, voxels)
            if not whole_voxels:  # one unit per element: index the flattened (C * voxels) axis
                state, src = state.view(b, 1, c * voxels), src.reshape(b, 1, c * voxels)
            per_chunk = max(1, batch_size // b)
            buf = torch.empty(
                (max(1, min(per_chunk, len(regular))), b, *x.shape[1:]), dtype=x.dtype, device=x.device
            )
            idx, values, ends = _plan(src, order[lo:hi], counts[lo:hi])
            done = 0  # columns of the plan already written into ``state``
            flat_state = state.view(b, *x.shape[1:])
            for c0 in range(0, len(regular), per_chunk):
                steps_here = regular[c0 : c0 + per_chunk]
                m = len(steps_here)
                for j, step in enumerate(steps_here):
                    upto = ends[step]
                    if upto > done:
                        state.scatter_(2, idx[..., done:upto], values[..., done:upto])
                        done = upto
                    buf[j].copy_(flat_state)
                out = predict(model, buf[:m].view(m * b, *x.shape[1:]), softmax).reshape(m, b, -1)
                if t is None:
                    t = resolve_target(target, out[0] if target is None else out.new_empty(n, out.shape[-1]))
                if result is None:
                    result = torch.empty(n, num_steps, dtype=out.dtype, device=out.device)
                tb = t[lo:hi].view(1, b, 1).expand(m, b, 1)
                scores = out.gather(2, tb)[..., 0].T
                if steps_here[-1] - steps_here[0] == m - 1:  # consecutive: a slice, not an index list
                    result[lo:hi, steps_here[0] : steps_here[0] + m] = scores
                else:
                    result[lo:hi, steps_here] = scores
        if any(shared):
            out = predict(model, baseline[:1].contiguous(), softmax)
            if t is None:  # every step shared: only possible with a given target (no clean step)
                t = resolve_target(target, out.new_empty(n, out.shape[-1]))
            if result is None:
                result = torch.empty(n, num_steps, dtype=out.dtype, device=out.device)
            cols = [s for s in range(num_steps) if shared[s]]
            result[:, cols] = out[0, t][:, None].expand(n, len(cols))
    assert result is not None
    return result


def _plan(
    src: torch.Tensor, order: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Where and what to write along the whole path, gathered at once (a step is then one scatter).

    Returns ``(index, values, ends)``: ``index``/``values`` of shape ``(b, channels, columns)`` list the
    units in the order they are perturbed, step after step, and step ``s`` ends at column ``ends[s]``.
    Ranges are ragged across samples: a sample with fewer new units in a step than the widest repeats the
    last unit of its range (or, with none new, its last perturbed unit), writing the same value twice,
    so every scatter stays deterministic.
    """
    b, steps = counts.shape
    prev = torch.cat([torch.zeros_like(counts[:, :1]), counts[:, :-1]], dim=1)
    gaps = (counts - prev).amax(dim=0).clamp_min(0)
    # Why: a sample still at zero units while others move on would have no unit to repeat harmlessly.
    if bool(((counts == 0) & (gaps > 0)[None]).any()):
        raise InputError("internal: a perturbation path must move every sample from its first step")
    widths = gaps.tolist()
    ends = torch.tensor(widths).cumsum(0).tolist()
    total = ends[-1] if ends else 0
    device = order.device
    step_of = torch.repeat_interleave(torch.arange(steps, device=device), gaps.to(device))
    first = torch.tensor([0, *ends[:-1]], device=device, dtype=torch.long)
    within = torch.arange(total, device=device) - first.index_select(0, step_of)
    last = (counts - 1).clamp_min(0)
    pos = torch.minimum(prev.index_select(1, step_of) + within, last.index_select(1, step_of))
    idx = order.gather(1, pos)[:, None, :].expand(-1, src.shape[1], -1)
    return idx, src.gather(2, idx), ends
