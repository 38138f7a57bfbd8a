"""Max pooling that keeps one byte per output element for the backward pass instead of eight.

Max pooling passes the relevance to the winner of each window: its plain gradient is the exact LRP
message. Autograd keeps the winners as ``int64`` indices into the input plane, an eighth of a plain
pass's saved memory on VGG-like networks; the position inside the window (``kernel`` positions, at
most 256 for the usual kernels) fits in one byte and gives the same index back in the backward pass.
Used in the fast path only (``create_graph=True`` keeps autograd's own node, whose graph it needs).
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
    """The pooling arguments as tuples, or ``None`` where the compact node does not apply."""
    named = dict(zip(_ARGS, args, strict=False))
    named.update({k: v for k, v in kwargs.items() if k in _ARGS})
    if named.get("return_indices") or "kernel_size" not in named or set(kwargs) - set(_ARGS) - {"input"}:
        return None
    kernel = _tuple(named["kernel_size"], dims)
    stride = named.get("stride")
    if stride is None or (isinstance(stride, (list, tuple)) and not stride):
        stride = kernel  # torch's default
    return {
        "kernel": kernel,
        "stride": _tuple(stride, dims),
        "padding": _tuple(named.get("padding", 0), dims),
        "dilation": _tuple(named.get("dilation", 1), dims),
        "ceil_mode": bool(named.get("ceil_mode", False)),
    }


def _starts(out_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> list[Tensor]:
    """Per spatial dimension, each output position's window start, shaped to broadcast."""
    n = len(out_shape)
    grids = []
    for i, (size, s, p) in enumerate(zip(out_shape, stride, padding, strict=True)):
        shape = [1] * n
        shape[i] = size
        grids.append((torch.arange(size) * s - p).reshape(shape))
    return grids


#: Elements per block of the index arithmetic: the int64 temporaries stay a few MB, never input-sized.
_BLOCK = 1 << 18


def _offsets(index: Tensor, spatial_in: Sequence[int], starts: list[Tensor], p: dict[str, Any]) -> Tensor:
    """Flat input-plane indices -> positions inside the window (mixed radix over the kernel)."""
    rest = index
    coords = []
    for size in reversed(spatial_in):
        coords.append(rest % size)
        rest = rest // size
    offset = torch.zeros((), dtype=torch.int64, device=index.device)
    for i, coord in enumerate(reversed(coords)):
        offset = offset * p["kernel"][i] + (coord - starts[i]) // p["dilation"][i]
    return offset


def _indices(offset: Tensor, spatial_in: Sequence[int], starts: list[Tensor], p: dict[str, Any]) -> Tensor:
    """Positions inside the window -> flat input-plane indices (the inverse of :func:`_offsets`)."""
    offset = offset.to(torch.int64)
    steps = []
    for k in reversed(p["kernel"]):
        steps.append(offset % k)
        offset = offset // k
    index = torch.zeros((), dtype=torch.int64, device=offset.device)
    for i, step in enumerate(reversed(steps)):
        index = index * spatial_in[i] + (starts[i] + step * p["dilation"][i])
    return index


def _blocks(rows: int, per_row: int) -> list[slice]:
    step = max(1, _BLOCK // max(per_row, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class _CompactMaxPool(torch.autograd.Function):
    """``max_poolNd`` whose backward pass rebuilds the winners' indices from one byte per output."""

    @staticmethod
    def forward(ctx, x: Tensor, dims: int, p: dict[str, Any]) -> Tensor:  # type: ignore[override]
        """Pool; keep each winner's position inside its window (``uint8`` for up to 256 positions)."""
        out, index = _FUNCS[dims](
            x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], return_indices=True
        )
        spatial_in, spatial_out = x.shape[-dims:], out.shape[-dims:]
        starts = [g.to(x.device) for g in _starts(spatial_out, p["stride"], p["padding"])]
        positions = _numel(p["kernel"])
        rows = index.reshape(-1, *spatial_out)
        small = torch.uint8 if positions <= 256 else torch.int32
        offset = torch.empty(rows.shape, dtype=small, device=x.device)
        for block in _blocks(rows.shape[0], _numel(spatial_out)):
            offset[block] = _offsets(rows[block], spatial_in, starts, p)
        del index, rows
        ctx.offset, ctx.dims, ctx.p, ctx.in_shape = offset, dims, p, x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        """Scatter the gradient to the winners, one block of rows at a time."""
        dims, p, offset = ctx.dims, ctx.p, ctx.offset
        ctx.offset = None
        spatial_in, spatial_out = ctx.in_shape[-dims:], grad.shape[-dims:]
        starts = [g.to(grad.device) for g in _starts(spatial_out, p["stride"], p["padding"])]
        per_row = _numel(spatial_out)
        g = grad.reshape(-1, per_row)
        out = grad.new_zeros((g.shape[0], _numel(spatial_in)))
        for block in _blocks(g.shape[0], per_row):
            index = _indices(offset[block], spatial_in, starts, p).reshape(-1, per_row)
            out[block].scatter_add_(1, index, g[block])
        return out.reshape(ctx.in_shape), None, None


def compact_max_pool(x: Tensor, dims: int, p: dict[str, Any]) -> Tensor:
    """``max_pool{dims}d(x, **p)`` (``p`` from :func:`pool_arguments`) with the compact backward node."""
    return _CompactMaxPool.apply(x, dims, p)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


__all__ = ["compact_max_pool", "pool_arguments"]
