"""Max pooling that keeps no winners' indices for the backward pass.

Max pooling passes the relevance to the winner of each window: its plain gradient is the exact LRP
message. Autograd keeps the winners as ``int64`` indices (twice the pooled output's float32 size; on
VGG16 a sixth of a plain pass's saved memory), while the pooled input is kept anyway (the rules and
the ReLU read it). Pooling that input again in the backward pass finds the same winners, at the cost
of one pooling pass. Used in the fast path only (``create_graph=True`` keeps autograd's own node,
whose graph it needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_FUNCS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(a) for a in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def pool_arguments(dims: int, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The pooling arguments as tuples, or ``None`` where the compact node does not apply.

    It applies to windows that do not overlap (VGG's 2x2/2, U-Net encoders): there the indices are
    largest against the work, and pooling again costs one cheap pass.
    """
    named = dict(zip(_ARGS, args, strict=False))
    named.update({k: v for k, v in kwargs.items() if k in _ARGS})
    if named.get("return_indices") or "kernel_size" not in named or set(kwargs) - set(_ARGS) - {"input"}:
        return None
    kernel = _tuple(named["kernel_size"], dims)
    stride = named.get("stride")
    if stride is None or (isinstance(stride, (list, tuple)) and not stride):
        stride = kernel  # torch's default
    stride = _tuple(stride, dims)
    if any(s < k for s, k in zip(stride, kernel, strict=True)):
        # overlapping windows (ResNet's 3x3/2): pooling again costs more, the indices are fewer
        return None
    return {
        "kernel": kernel,
        "stride": stride,
        "padding": _tuple(named.get("padding", 0), dims),
        "dilation": _tuple(named.get("dilation", 1), dims),
        "ceil_mode": bool(named.get("ceil_mode", False)),
    }


def _pool(dims: int, p: dict[str, Any]) -> Any:
    def pool(x: Tensor) -> Tensor:
        return _FUNCS[dims](x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"])

    return pool


class _CompactMaxPool(torch.autograd.Function):
    """``max_poolNd`` that keeps no indices: the backward pass finds the winners again in its input."""

    @staticmethod
    def forward(ctx, x: Tensor, dims: int, p: dict[str, Any]) -> Tensor:  # type: ignore[override]
        """Pool; keep only the input (which the routed graph keeps alive anyway: no new memory)."""
        ctx.save_for_backward(x)
        ctx.pool = _pool(dims, p)
        return ctx.pool(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        """Pool the same input again (same winners, ties included) and send the gradient to them."""
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.pool(leaf), leaf, grad)
        return g, None, None


def compact_max_pool(x: Tensor, dims: int, p: dict[str, Any]) -> Tensor:
    """``max_pool{dims}d(x, **p)`` (``p`` from :func:`pool_arguments`) with the compact backward node."""
    return _CompactMaxPool.apply(x, dims, p)
