"""A convolution of an input of ones, from its kernel and the border masks: no convolution is run.

``conv(ones, V)`` at an output position sums ``V`` over the taps that fall inside the input (zero
padding). Along dimension ``d``, tap ``t`` of output ``o`` reads input index
``o * stride - padding + t * dilation``; it is inside iff that index is in ``[0, n_d)``. So::

    conv(ones, V)[c, o_1, ..., o_D] = sum_t S[c, t_1, ..., t_D] * M_1[o_1, t_1] * ... * M_D[o_D, t_D]

with ``S`` the kernel summed over its input channels (which also covers grouped convolutions: each
output channel reads its own group) and ``M_d`` the 0/1 mask of dimension ``d`` (output size x kernel
size). Contracted one dimension at a time this costs about ``k`` multiply-adds per output element instead
of ``C_in * k^D``, and equals the convolution up to the order of summation. z-box's bound product
(``medlrp.lrp.products``: bounds constant over a case are a constant times a product of ones) uses it for
the value; its gradient is the convolution's own backward.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch

from medlrp.lrp.geometry import Geometry, input_grad

Tensor = torch.Tensor


def _mask(n_in: int, k: int, stride: int, padding: int, dilation: int, like: Tensor) -> Tensor:
    """``M[o, t] = 1`` where tap ``t`` of output ``o`` reads inside ``[0, n_in)``."""
    n_out = (n_in + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    o = torch.arange(n_out, device=like.device).unsqueeze(1)
    t = torch.arange(k, device=like.device).unsqueeze(0)
    index = o * stride - padding + t * dilation
    return ((index >= 0) & (index < n_in)).to(like.dtype)


def ones_product(geometry: Geometry, spatial: Sequence[int], weight: Tensor) -> Tensor:
    """``conv(ones, weight)`` for an input of spatial size ``spatial``, without the convolution.

    Args:
        geometry: The convolution's geometry.
        spatial: The input's spatial size.
        weight: ``(*lead, C_out, C_in / groups, *kernel)``: a leading batch dim gives one kernel per
            case (the result then has it too).

    Returns:
        ``(*lead, C_out, *out_spatial)`` (``lead`` empty: ``(1, C_out, *out_spatial)``, a one-case batch).
    """
    dims = geometry.dims
    summed = weight.sum(dim=-(dims + 1))  # (*lead, C_out, *kernel)
    kernel = summed.shape[-dims:]
    masks = [
        _mask(n, k, s, p, d, summed)
        for n, k, s, p, d in zip(
            spatial, kernel, geometry.stride, geometry.padding, geometry.dilation, strict=True
        )
    ]
    letters = iter(string.ascii_lowercase)
    taps = [next(letters) for _ in range(dims)]
    outs = [next(letters) for _ in range(dims)]
    lead = "".join(next(letters) for _ in range(summed.dim() - dims))
    equation = f"{lead}{''.join(taps)}," + ",".join(o + t for o, t in zip(outs, taps, strict=True))
    out = torch.einsum(f"{equation}->{lead}{''.join(outs)}", summed, *masks)
    return out if weight.dim() > dims + 2 else out.unsqueeze(0)


class OnesThrough(torch.autograd.Function):
    """``conv(ones, V_k)`` for each case ``k`` (value by :func:`ones_product`), differentiable in ``ones``.

    The backward pass is the convolution's own input gradient, one per case.
    """

    @staticmethod
    def forward(ctx: Any, ones: Tensor, kernels: Tensor, geometry: Geometry) -> Tensor:
        """``(N, C_out, *out)`` from ``ones`` ``(N, C_in, *spatial)`` and ``kernels`` ``(N, *weight)``."""
        ctx.geometry = geometry
        ctx.save_for_backward(ones, kernels)
        return ones_product(geometry, ones.shape[2:], kernels)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        """The input gradient of each case's convolution."""
        ones, kernels = ctx.saved_tensors
        g: Geometry = ctx.geometry
        parts = [input_grad(g, grad[k : k + 1], ones[k : k + 1], kernels[k]) for k in range(grad.shape[0])]
        return parts[0] if len(parts) == 1 else torch.cat(parts), None, None
