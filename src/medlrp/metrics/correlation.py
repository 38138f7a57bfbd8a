"""Faithfulness correlation (Bhatt et al. 2020): do random subsets with more relevance matter more?"""

from __future__ import annotations

import math

import torch

from medlrp.errors import InputError
from medlrp.metrics._common import (
    broadcast_map,
    check_batch,
    inference_mode_of,
    predict,
    resolve_batch_size,
)
from medlrp.metrics.baselines import Baseline, make_baseline
from medlrp.metrics.similarity import pearson
from medlrp.targets import Target, resolve_target


def faithfulness_correlation(
    model: torch.nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: Target = None,
    *,
    subset_size: int | None = None,
    runs: int = 100,
    baseline: Baseline = 0.0,
    softmax: bool = True,
    batch_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Pearson correlation, over ``runs`` random feature subsets, of summed relevance and score drop.

    Each run replaces a random subset of ``subset_size`` features (voxels with all channels for a
    channel-1 map) by the baseline; the drop ``f(x) - f(x_subset)`` of the target's score is correlated with
    the relevance summed over the subset. Same definition as ``quantus.FaithfulnessCorrelation``
    (Quantus draws its subsets with NumPy's global random state, so single runs differ).

    Args:
        model: Classifier; never changed.
        x: Input batch, 2D or 3D.
        relevance: ``x``'s shape or ``(N, 1, *spatial)``.
        target: Class per sample; ``None`` takes the argmax.
        subset_size: Features per subset; ``None``: a sixteenth of them.
        runs: Number of random subsets per sample.
        baseline: The replacement (see :mod:`medlrp.metrics.baselines`).
        softmax: Score probabilities (default) or logits.
        batch_size: Perturbed inputs per forward pass; ``None`` picks a size from the input's size.
        seed: Seed of the subsets.

    Returns:
        ``(N,)`` in ``[-1, 1]`` (higher is better).
    """
    check_batch(x)
    broadcast_map(relevance, x.shape, "relevance")
    r = relevance.detach().to(x.device)
    n = x.shape[0]
    units = r[0].numel()
    k = subset_size if subset_size is not None else max(1, math.ceil(units / 16))
    if not 1 <= k <= units or runs < 2:
        raise InputError(f"need 1 <= subset_size <= {units} and runs >= 2, got {k} and {runs}")
    base = make_baseline(baseline, x)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    flat_r = r.reshape(n, -1)
    drops, sums = [], []
    per_chunk = max(1, resolve_batch_size(batch_size, x) // n)
    with inference_mode_of(model):
        clean = predict(model, x, softmax)
        t = resolve_target(target, clean)
        f0 = clean.gather(1, t[:, None])[:, 0]
        for start in range(0, runs, per_chunk):
            m = min(per_chunk, runs - start)
            pick = torch.rand(m, n, units, generator=gen).topk(k, dim=2).indices.to(x.device)
            chosen = torch.zeros(m, n, units, dtype=torch.bool, device=x.device).scatter_(2, pick, True)
            mask = chosen.reshape(m, *r.shape)
            inputs = torch.where(mask, base.unsqueeze(0), x.unsqueeze(0)).reshape(-1, *x.shape[1:])
            out = predict(model, inputs, softmax).reshape(m, n, -1)
            drops.append(f0[None] - out.gather(2, t.view(1, n, 1).expand(m, n, 1))[..., 0])
            sums.append((flat_r.unsqueeze(0) * chosen).sum(dim=2))
    return pearson(torch.cat(sums).T, torch.cat(drops).T)
