"""Gradient methods: gradient, input-x-gradient, integrated gradients, SmoothGrad, occlusion.

Segmentation models (output ``(N, classes, *spatial)``) take ``region=`` (see :mod:`medlrp.region`):
"the target logit" below is then class ``target``'s logit sum over the region.

Every method returns relevance of the input's shape, raw and signed (no absolute value, no clamping:
Captum's ``Saliency`` takes ``abs`` by default; here ``gradient`` is the signed gradient). The model
runs in eval mode for the call (restored after it), so a sample's map never depends on the rest of the
batch, and gradients are taken with ``torch.autograd.grad`` with respect to the input only, so the
parameters' ``.grad`` are never touched. Definitions follow Captum (the reference of the tests):

- ``gradient``: ``d logit_t / d x``.
- ``input-x-gradient``: ``x * d logit_t / d x``.
- ``integrated-gradients`` (Sundararajan et al. 2017): ``(x - b) * sum_k s_k grad(b + a_k (x - b))``
  with Captum's quadratures (``rule="gausslegendre"`` by default, or ``riemann_left/right/middle/
  trapezoid``), ``steps`` points and ``baseline`` (a number or a tensor broadcastable to ``x``).
- ``smoothgrad`` (Smilkov et al. 2017): the mean gradient at ``x + sigma * eps_k``, ``k < samples``,
  ``sigma = noise * (max(x_i) - min(x_i))`` per sample. The draws ``eps_k`` come from a generator
  seeded with ``seed`` alone and are the same for every sample, so a sample's map depends on nothing
  but the sample, the model and the seed (not on its place in the batch).
- ``occlusion`` (Zeiler & Fergus 2014): a ``window`` (all channels, the given spatial extent) slides
  with ``stride`` (default: the window) and is filled with ``baseline``; every voxel gets the mean drop
  of the target logit over the windows covering it. Window placement equals Captum's ``Occlusion``:
  ``ceil((size - window) / stride) + 1`` positions per dim, the last window clipped at the border.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medlrp.cam.guard import check_input, explaining, logits, reject_unknown
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.region import Goal, Region, resolve_goal
from medlrp.registry import METHODS
from medlrp.targets import Target

Baseline = float | torch.Tensor

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, goal: Goal) -> torch.Tensor:
    """``d score / d x`` for every sample of ``x`` (eval mode: samples are independent).

    The score is the target logit (classifiers) or the target's logit sum over the region
    (segmentation); ``x`` may stack copies of the batch (see :meth:`Goal.score`).
    """
    xin = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = logits(model(xin))
        (grad,) = torch.autograd.grad(goal.score(out).sum(), xin, allow_unused=True)
    if grad is None:
        raise InputError("the target logit does not depend on the input")
    return grad


def _forward(
    model: torch.nn.Module, x: torch.Tensor, target: Target, region: Region
) -> tuple[torch.Tensor, Goal]:
    with torch.no_grad():
        out = logits(model(x.detach()))
    return out, resolve_goal(out, target, region)


def _baseline(baseline: Baseline, x: torch.Tensor, method: str) -> torch.Tensor:
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(b, x.shape)
    except RuntimeError:
        raise InputError(
            f"{method}: baseline of shape {tuple(b.shape)} does not broadcast to the input {tuple(x.shape)}"
        ) from None


def _positive(value: int, name: str, method: str) -> int:
    if int(value) < 1:
        raise InputError(f"{method}: {name} must be at least 1, got {value}")
    return int(value)


def gradient(
    model: torch.nn.Module, x: torch.Tensor, target: Target = None, *, region: Region = None, **unknown: Any
) -> Explanation:
    """The signed gradient of the target logit with respect to the input."""
    reject_unknown("gradient", unknown)
    x = check_input(x, "gradient")
    with explaining(model):
        out, goal = _forward(model, x, target, region)
        grad = _input_gradient(model, x, goal)
    return Explanation(grad.detach(), out, goal.target, "gradient", {}, goal.region)


def input_x_gradient(
    model: torch.nn.Module, x: torch.Tensor, target: Target = None, *, region: Region = None, **unknown: Any
) -> Explanation:
    """The input times the gradient of the target logit."""
    reject_unknown("input-x-gradient", unknown)
    x = check_input(x, "input-x-gradient")
    with explaining(model):
        out, goal = _forward(model, x, target, region)
        grad = _input_gradient(model, x, goal)
    return Explanation((x.detach() * grad).detach(), out, goal.target, "input-x-gradient", {}, goal.region)


def quadrature(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """Weights and points ``(s_k, a_k)`` on ``[0, 1]`` of an integration ``rule`` (Captum's rules)."""
    if steps < 2:
        raise InputError(f"integrated-gradients: steps must be at least 2, got {steps}")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    n = steps
    sizes = [1 / n] * n
    if rule == "riemann_trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        return sizes, np.linspace(0, 1, n).tolist()
    starts = {
        "riemann_left": (0.0, 1 - 1 / n),
        "riemann_right": (1 / n, 1.0),
        "riemann_middle": (0.5 / n, 1 - 0.5 / n),
    }
    if rule not in starts:
        raise InputError(f"integrated-gradients: unknown rule {rule!r}; known: {', '.join(RULES)}")
    return sizes, np.linspace(*starts[rule], n).tolist()


def integrated_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    region: Region = None,
    baseline: Baseline = 0.0,
    steps: int = 50,
    rule: str = "gausslegendre",
    batch_size: int = 64,
    **unknown: Any,
) -> Explanation:
    """Integrated gradients from ``baseline`` to ``x`` with ``steps`` points of quadrature ``rule``.

    ``batch_size`` scaled inputs go through the model at once.
    """
    reject_unknown("integrated-gradients", unknown)
    x = check_input(x, "integrated-gradients")
    batch_size = _positive(batch_size, "batch_size", "integrated-gradients")
    sizes, alphas = quadrature(rule, int(steps))
    x = x.detach()
    base = _baseline(baseline, x, "integrated-gradients")
    n = x.shape[0]
    with explaining(model):
        out, goal = _forward(model, x, target, region)
        total = torch.zeros_like(x)
        # Step k of sample i is row k * n + i; chunks of whole steps keep the targets aligned.
        per_chunk = max(1, batch_size // n)
        for k0 in range(0, len(alphas), per_chunk):
            a = torch.tensor(alphas[k0 : k0 + per_chunk], dtype=x.dtype, device=x.device)
            s = torch.tensor(sizes[k0 : k0 + per_chunk], dtype=x.dtype, device=x.device)
            shape = (-1, *[1] * x.ndim)
            scaled = base + a.view(shape) * (x - base)  # (k, n, ...)
            grads = _input_gradient(model, scaled.flatten(0, 1), goal)
            total += (s.view(shape) * grads.view(len(a), *x.shape)).sum(0)
    options = {"steps": int(steps), "rule": rule, "baseline": _describe(baseline), "batch_size": batch_size}
    return Explanation((x - base) * total, out, goal.target, "integrated-gradients", options, goal.region)


def smoothgrad(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    region: Region = None,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 64,
    **unknown: Any,
) -> Explanation:
    """SmoothGrad: the mean gradient over ``samples`` noisy copies (noise ``noise * range`` per sample)."""
    reject_unknown("smoothgrad", unknown)
    x = check_input(x, "smoothgrad")
    samples = _positive(samples, "samples", "smoothgrad")
    batch_size = _positive(batch_size, "batch_size", "smoothgrad")
    if float(noise) < 0:
        raise InputError(f"smoothgrad: noise must be non-negative, got {noise}")
    x = x.detach()
    n = x.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((samples, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
    flat = x.flatten(1)
    sigma = (float(noise) * (flat.max(1).values - flat.min(1).values)).view(1, n, *[1] * (x.ndim - 1))
    with explaining(model):
        out, goal = _forward(model, x, target, region)
        total = torch.zeros_like(x)
        per_chunk = max(1, batch_size // n)
        for k0 in range(0, samples, per_chunk):
            e = eps[k0 : k0 + per_chunk, None]  # (k, 1, ...): the same draws for every sample
            noisy = (x[None] + sigma * e).flatten(0, 1)
            total += _input_gradient(model, noisy, goal).view(len(e), *x.shape).sum(0)
    options = {"samples": samples, "noise": float(noise), "seed": int(seed), "batch_size": batch_size}
    return Explanation(total / samples, out, goal.target, "smoothgrad", options, goal.region)


def _per_dim(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != dims or min(values) < 1:
        raise InputError(f"occlusion: {name} must be a positive int or {dims} positive ints, got {value}")
    return values


def occlusion_starts(size: int, window: int, stride: int) -> list[int]:
    """Window start positions along one dim (Captum's: the last window is clipped at the border)."""
    return [i * stride for i in range(math.ceil(max(size - window, 0) / stride) + 1)]


def occlusion(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    region: Region = None,
    window: int | Sequence[int] = 8,
    stride: int | Sequence[int] | None = None,
    baseline: Baseline = 0.0,
    batch_size: int = 64,
    **unknown: Any,
) -> Explanation:
    """Occlusion: the mean drop of the target logit when a sliding window is set to ``baseline``.

    ``window`` and ``stride`` are one int or one per spatial dim (2D or 3D alike); ``batch_size``
    occluded inputs go through the model at once.
    """
    reject_unknown("occlusion", unknown)
    x = check_input(x, "occlusion", min_spatial=1).detach()
    spatial = tuple(x.shape[2:])
    win = tuple(min(w, s) for w, s in zip(_per_dim(window, len(spatial), "window"), spatial, strict=True))
    step = _per_dim(win if stride is None else stride, len(spatial), "stride")
    if any(st > w and w < s for st, w, s in zip(step, win, spatial, strict=True)):
        raise InputError(f"occlusion: stride {step} larger than window {win} would leave voxels unoccluded")
    batch_size = _positive(batch_size, "batch_size", "occlusion")
    base = _baseline(baseline, x, "occlusion")
    n = x.shape[0]
    starts = list(
        itertools.product(*(occlusion_starts(s, w, st) for s, w, st in zip(spatial, win, step, strict=True)))
    )
    with explaining(model), torch.no_grad():
        out, goal = _forward(model, x, target, region)
        reference = goal.score(out)
        total = torch.zeros(spatial, dtype=x.dtype, device=x.device).expand(n, *spatial).clone()
        count = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        per_chunk = max(1, batch_size // n)
        for p0 in range(0, len(starts), per_chunk):
            regions = [
                tuple(slice(a, a + w) for a, w in zip(p, win, strict=True))
                for p in starts[p0 : p0 + per_chunk]
            ]
            occluded = x.repeat(len(regions), *[1] * (x.ndim - 1)).view(len(regions), *x.shape)
            for j, region in enumerate(regions):
                occluded[(j, slice(None), slice(None), *region)] = base[(slice(None), slice(None), *region)]
            scores = goal.score(logits(model(occluded.flatten(0, 1))))
            drops = reference[None] - scores.view(len(regions), n).to(x.dtype)
            for j, region in enumerate(regions):
                total[(slice(None), *region)] += drops[j].view(n, *[1] * len(spatial))
                count[region] += 1
    relevance = (total / count).unsqueeze(1).expand_as(x).clone()
    options = {
        "window": list(win),
        "stride": list(step),
        "baseline": _describe(baseline),
        "batch_size": batch_size,
    }
    return Explanation(relevance, out, goal.target, "occlusion", options, goal.region)


def _describe(baseline: Baseline) -> float | str:
    """A JSON-friendly description of a baseline."""
    if isinstance(baseline, torch.Tensor):
        return f"tensor{tuple(baseline.shape)}"
    return float(baseline)


METHODS.add("gradient", gradient)
METHODS.add("input-x-gradient", input_x_gradient)
METHODS.add("integrated-gradients", integrated_gradients)
METHODS.add("smoothgrad", smoothgrad)
METHODS.add("occlusion", occlusion)
