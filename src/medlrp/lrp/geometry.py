"""The geometry of a functional convolution call, and its input gradient without a forward pass.

A linear layer's products are calls of the same functional op with other weights
(:mod:`medlrp.lrp.products`). Where the op is ``convNd`` or ``conv_transposeNd`` its geometry (stride,
padding, dilation, output padding, groups) is read from the call, so that a product's gradient can be
computed by the convolution's own backward kernel without running the product forward: its value may
come from elsewhere (a stacked call, a convolution of ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor

#: The functional convolutions whose geometry is read: ``func -> (spatial dims, transposed)``.
_CONVOLUTIONS = {
    torch.conv1d: (1, False),
    torch.conv2d: (2, False),
    torch.conv3d: (3, False),
    torch.conv_transpose1d: (1, True),
    torch.conv_transpose2d: (2, True),
    torch.conv_transpose3d: (3, True),
}
_NAMES = {
    False: ("stride", "padding", "dilation", "groups"),
    True: ("stride", "padding", "output_padding", "groups", "dilation"),
}


@dataclass(frozen=True)
class Geometry:
    """Stride, padding, dilation (and output padding) per spatial dimension, groups, transposed."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @property
    def dims(self) -> int:
        """The number of spatial dimensions."""
        return len(self.stride)


def _per_dim(value: Any, dims: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, Sequence) and len(value) == dims and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def conv_geometry(func: Any, rest: tuple[Any, ...], kw: dict[str, Any]) -> Geometry | None:
    """The geometry of ``func(x, w, b, *rest, **kw)`` if ``func`` is a convolution (else ``None``).

    ``None`` too for string padding other than ``"valid"`` (``"same"`` may pad unevenly).
    """
    found = _CONVOLUTIONS.get(func)
    if found is None:
        return None
    dims, transposed = found
    names = _NAMES[transposed]
    values: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}
    values.update(zip(names, rest, strict=False))
    values.update({k: v for k, v in kw.items() if k in names})
    if values["padding"] == "valid":
        values["padding"] = 0
    per_dim = {n: _per_dim(values[n], dims) for n in ("stride", "padding", "dilation", "output_padding")}
    if any(v is None for v in per_dim.values()) or not isinstance(values["groups"], int):
        return None
    return Geometry(
        per_dim["stride"],  # type: ignore[arg-type]
        per_dim["padding"],  # type: ignore[arg-type]
        per_dim["dilation"],  # type: ignore[arg-type]
        values["groups"],
        transposed,
        per_dim["output_padding"] if transposed else (),  # type: ignore[arg-type]
    )


def input_grad(geometry: Geometry, grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """The gradient at ``x`` of ``conv(x, weight)`` (this geometry) for output gradient ``grad``."""
    g = geometry
    return torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        list(g.stride),
        list(g.padding),
        list(g.dilation),
        g.transposed,
        list(g.output_padding) if g.transposed else [0] * g.dims,
        g.groups,
        [True, False, False],
    )[0]
