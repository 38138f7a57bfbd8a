"""Baselines: what a perturbed feature is replaced with (a value, a per-sample statistic, blur, noise).

A baseline is one of

* a number (every perturbed feature gets it; Quantus ``perturb_baseline=<float>``),
* ``"black"``/``"min"``, ``"white"``/``"max"``, ``"mean"``: each sample's own minimum, maximum or mean over
  all its channels and voxels (Quantus ``"black"``/``"white"``; its batched ``"mean"`` is recomputed from
  the already perturbed input at each step, ours from the original input),
* ``"blur"``: a Gaussian-blurred copy of the input (sigma 5 voxels; :func:`blur` for another sigma),
* ``"noise"``: the input plus Gaussian noise of each sample's standard deviation (:func:`noise`),
* a tensor broadcastable to the input, or a callable ``x -> tensor``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medlrp.errors import InputError

Baseline = float | int | str | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of ``(N, C, *spatial)`` with a separable Gaussian (reflect padding), 2D or 3D."""
    n, c, *spatial = x.shape
    dims = len(spatial)
    out = x.reshape(n * c, 1, *spatial)
    for axis, size in enumerate(spatial):
        # One 1-D pass per axis; reflect padding needs a radius below the axis length.
        r = min(max(1, math.ceil(3 * sigma)), size - 1)
        if r < 1:
            continue
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = (kernel / kernel.sum()).reshape(
            [1, 1] + [2 * r + 1 if i == axis else 1 for i in range(dims)]
        )
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = r  # F.pad lists the last axis first
        out = _CONV[dims](F.pad(out, pad, mode="reflect"), kernel)
    return out.reshape(x.shape)


def blur(sigma: float = 5.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A baseline that replaces features by a Gaussian-blurred input (``sigma`` in voxels)."""
    return lambda x: gaussian_blur(x, sigma)


def noise(std: float = 1.0, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A baseline: the input plus Gaussian noise of ``std`` times each sample's standard deviation."""

    def make(x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        scale = x.reshape(x.shape[0], -1).std(dim=1).reshape(-1, *[1] * (x.ndim - 1))
        return x + std * scale * eps

    return make


def _per_sample(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return fn(x.reshape(x.shape[0], -1)).reshape(-1, *[1] * (x.ndim - 1)).expand(x.shape)


_NAMED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "black": lambda x: _per_sample(x, lambda f: f.amin(dim=1)),
    "min": lambda x: _per_sample(x, lambda f: f.amin(dim=1)),
    "white": lambda x: _per_sample(x, lambda f: f.amax(dim=1)),
    "max": lambda x: _per_sample(x, lambda f: f.amax(dim=1)),
    "mean": lambda x: _per_sample(x, lambda f: f.mean(dim=1)),
    "blur": blur(),
    "noise": noise(),
}


def make_baseline(baseline: Baseline, x: torch.Tensor) -> torch.Tensor:
    """Return the replacement values as a tensor of ``x``'s shape (possibly an expanded view)."""
    if isinstance(baseline, bool):
        raise InputError(f"baseline must be a number, a name or a tensor, not {baseline!r}")
    if isinstance(baseline, (int, float)):
        return torch.full((1,) * x.ndim, float(baseline), dtype=x.dtype, device=x.device).expand(x.shape)
    if isinstance(baseline, str):
        try:
            fn = _NAMED[baseline.lower()]
        except KeyError:
            known = ", ".join(sorted(_NAMED))
            raise InputError(f"unknown baseline {baseline!r}; known: {known}, a number or a tensor") from None
        return fn(x)
    if isinstance(baseline, torch.Tensor):
        value = baseline.to(device=x.device, dtype=x.dtype)
    elif callable(baseline):
        value = baseline(x)
    else:
        raise InputError(f"baseline must be a number, a name, a tensor or a callable, not {type(baseline)}")
    try:
        return value.expand(x.shape)
    except RuntimeError:
        raise InputError(
            f"baseline of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape)}"
        ) from None
