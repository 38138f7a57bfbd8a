"""The engine behind every perturbation curve: ordered units, in-place updates, batched forwards.

Each sample's units (voxels with all their channels, single elements, or the voxels of a patch) are
perturbed in a given order; step ``s`` has the first ``counts[n, s]`` of them replaced. The perturbed input
of one step differs from the previous one in a few units only, so it is built by scattering those into a
running copy and copying the result into a reusable chunk buffer (a memory copy per input, no full
``where`` over the chunk: that was the cost that dominated cheap models). Each chunk of steps then goes
through the model as one batch. With a model that costs nothing (the linear model of the benchmark) what
is left is per-operation overhead, so the loop does two operations per step (a scatter of the step's
slice, prepared for the whole path at once, and a copy), the raw outputs are scored once at the end (one
softmax, one gather), and units are ranked by one NumPy sort of packed integer keys.
"""

from __future__ import annotations

import math
import sys

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
    # bits ^ flip where bits < 0 (arithmetic shift: all ones there), without a where
    return bits ^ ((bits >> (bits.element_size() * 8 - 1)) & flip)


def _packed_order(values: np.ndarray, descending: bool) -> torch.Tensor:
    """Stable argsort along axis 1 of int32 or float32 ``values (N, U)`` on CPU, as int64 indices.

    Why: each key (a float's IEEE bits, negatives flipped, as :func:`_sort_key`) and its position packed
    into one int64 (key in the high half) are all distinct, so a plain sort of the packed values is
    stable; NumPy's SIMD sort of values is about 3x faster than its argsort and 20x faster than torch's
    stable sort on CPU. The positions are then the low halves. The keys are made in place in the packed
    array (no temporary tensors: with a cheap model the ranking is a visible part of a curve's cost).
    """
    n, u = values.shape
    packed = np.empty((n, u, 2), dtype=np.int32)
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    packed[..., low] = np.arange(u, dtype=np.int32)
    key = packed[..., high]
    if values.dtype == np.float32:
        np.add(values, np.float32(0.0), out=key.view(np.float32))  # + 0.0 turns -0.0 into 0.0
        flip = np.right_shift(key, 31)  # all ones where negative (arithmetic shift)
        np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
        np.bitwise_xor(key, flip, out=key)
    else:
        key[...] = values
    if descending:
        np.invert(key, out=key)  # ~k reverses the order, ties stay in position order
    flat = np.sort(packed.view(np.int64).reshape(n, u), axis=1)
    np.bitwise_and(flat, 0xFFFFFFFF, out=flat)  # the position (non-negative: the low half, unsigned)
    return torch.from_numpy(flat)


def _fits_packed(key: torch.Tensor) -> bool:
    return key.device.type == "cpu" and key.dtype == torch.int32 and key.ndim == 2 and key.shape[1] < 2**31


def stable_argsort(key: torch.Tensor) -> torch.Tensor:
    """Ascending argsort along dim 1 with ties in position order."""
    if _fits_packed(key):
        return _packed_order(key.contiguous().numpy(), descending=False)
    return torch.sort(key, dim=1, stable=True).indices


def unit_order(scores: torch.Tensor, order: str, seed: int = 0) -> torch.Tensor:
    """Unit indices per sample in perturbation order: ``scores (N, U) -> long (N, U)``.

    ``order``: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"``.
    Ties keep their flat position order (a stable sort), so results are deterministic. NaN scores have
    no defined place.
    """
    key = order.lower()
    if key in ("morf", "lerf"):
        if scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.ndim == 2:
            return _packed_order(scores.detach().contiguous().numpy(), descending=key == "morf")
        k = _sort_key(scores)
        if _fits_packed(k):
            return _packed_order(k.numpy(), descending=key == "morf")
        return stable_argsort(~k if key == "morf" else k)  # ~k reverses the order
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
    # Raw model outputs, one (steps, b, classes) tensor per block of samples; scored after the loop (one
    # softmax and one gather for the whole path instead of a few small operations per chunk).
    blocks: list[tuple[int, int, torch.Tensor]] = []
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
            if regular:
                blocks.append((lo, hi, _block_outputs(model, x, baseline, order, counts, lo, hi, regular,
                                                      batch_size, whole_voxels, insert)))  # fmt: skip
        shared_out = None
        if any(shared):
            shared_out = _scores(predict(model, baseline[:1].contiguous(), False), softmax)[0]
    classes = blocks[0][2].shape[-1] if blocks else shared_out.shape[-1]  # type: ignore[union-attr]
    if t is None:
        if target is None:  # starts_clean: the first regular step is the clean input of the one block
            t = resolve_target(None, _scores(blocks[0][2][0], softmax))
        else:
            t = resolve_target(target, x.new_empty(n, classes))
    first = blocks[0][2] if blocks else shared_out
    assert first is not None
    result = torch.empty(n, num_steps, dtype=first.dtype, device=first.device)
    consecutive = regular == list(range(regular[0], regular[0] + len(regular))) if regular else True
    for lo, hi, out in blocks:
        b = hi - lo
        scores = _scores(out, softmax).gather(2, t[lo:hi].view(1, b, 1).expand(len(regular), b, 1))[..., 0].T
        if consecutive:  # a slice, not an index list
            result[lo:hi, regular[0] : regular[0] + len(regular)] = scores
        else:
            result[lo:hi, regular] = scores
    if shared_out is not None:
        cols = [s for s in range(num_steps) if shared[s]]
        result[:, cols] = shared_out[t][:, None].expand(n, len(cols))
    return result


def _scores(out: torch.Tensor, softmax: bool) -> torch.Tensor:
    return out.softmax(dim=-1) if softmax else out


def _block_outputs(
    model: torch.nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    lo: int,
    hi: int,
    regular: list[int],
    batch_size: int,
    whole_voxels: bool,
    insert: bool,
) -> torch.Tensor:
    """Raw outputs ``(len(regular), hi - lo, classes)`` of the regular steps for samples ``lo:hi``.

    The running state gets each step's new units by one scatter and is copied into the chunk buffer (two
    operations per step: with a model that costs nothing, per-operation overhead is what is left).
    """
    b, c = hi - lo, x.shape[1]
    voxels = math.prod(x.shape[2:])
    start, source = (baseline, x) if insert else (x, baseline)
    state = torch.empty((b, c, voxels), dtype=x.dtype, device=x.device)
    state.copy_(start[lo:hi].reshape(b, c, voxels))
    src = source[lo:hi].reshape(b, c, voxels)
    if not whole_voxels:  # one unit per element: index the flattened (C * voxels) axis
        state, src = state.view(b, 1, c * voxels), src.reshape(b, 1, c * voxels)
    per_chunk = max(1, batch_size // b)
    m_max = max(1, min(per_chunk, len(regular)))
    buf = torch.empty((m_max, b, *x.shape[1:]), dtype=x.dtype, device=x.device)
    rows = buf.unbind(0)
    idx, values, widths = _plan(src, order[lo:hi], counts[lo:hi])
    parts = list(zip(idx.split(widths, dim=2), values.split(widths, dim=2), strict=True))
    applied = 0  # steps whose units are already in ``state``
    flat_state = state.view(b, *x.shape[1:])
    outs = []
    for c0 in range(0, len(regular), per_chunk):
        steps_here = regular[c0 : c0 + per_chunk]
        m = len(steps_here)
        for j, step in enumerate(steps_here):
            while applied <= step:
                if widths[applied]:
                    state.scatter_(2, *parts[applied])
                applied += 1
            rows[j].copy_(flat_state)
        out = model(buf[:m].view(m * b, *x.shape[1:]) if m < m_max else buf.view(m * b, *x.shape[1:]))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            predict(model, buf[:1].view(b, *x.shape[1:]), False)  # raises the usual InputError
        outs.append(out)
    return torch.cat(outs).view(len(regular), b, -1)


def _plan(
    src: torch.Tensor, order: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Where and what to write along the whole path, gathered at once (a step is then one scatter).

    Returns ``(index, values, widths)``: ``index``/``values`` of shape ``(b, channels, columns)`` list the
    units in the order they are perturbed, step after step, and step ``s`` takes the next ``widths[s]``
    columns. When every sample moves by the same number of units per step (pixel flipping; equal patches)
    the columns are the order itself. Otherwise ranges are ragged across samples: a sample with fewer new
    units in a step than the widest repeats the last unit of its range (or, with none new, its last
    perturbed unit), writing the same value twice, so every scatter stays deterministic.
    """
    b, steps = counts.shape
    prev = torch.cat([torch.zeros_like(counts[:, :1]), counts[:, :-1]], dim=1)
    if b == 1 or bool((counts == counts[:1]).all()):
        widths = (counts[0] - prev[0]).clamp_min(0).tolist()
        total = int(counts[0].max()) if steps else 0
        idx = order[:, None, :total].expand(-1, src.shape[1], -1)
        return idx, src.gather(2, idx), widths
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
    return idx, src.gather(2, idx), widths
