"""A BatchNorm merged into the linear layer before it: the algebra of merged products and coefficients.

The BatchNorm ``y = s * z + t`` (per output channel) makes the layer ``V = s W``, ``beta = s b + t``.
Nothing is recomputed: the merged layer's products are per-channel combinations of the unmerged ones
(``(sW)+ x = s+ W+ x + s- W- x``), and so are the coefficients on the way back. Then the coefficients
of virtual products are moved to the physical ones (``B = Z - b - A`` for inputs >= 0,
``D = Z - b - A - B - C``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from medlrp.lrp.products import PARTNER
from medlrp.lrp.rules import Product

Tensor = torch.Tensor


class Scale:
    """A per-output-channel scale ``s`` (a merged BatchNorm), with its signed parts."""

    def __init__(self, s: Tensor, flag: Callable[[Tensor], bool] = bool) -> None:
        self.s = s
        # all positive: the common case (trained or fresh BatchNorm), where merging is a plain rescale;
        # ``flag`` reads the value (the engine's, so a captured pass can replay it)
        self.mixed = flag((s < 0).any())
        self.pos = s.clamp(min=0) if self.mixed else s
        self.neg = s.clamp(max=0) if self.mixed else None


def merged_products(
    keys: tuple[Product, ...], canonical: Callable[[Product], Tensor | float], scale: Scale | None
) -> dict[Product, Tensor | float]:
    """The merged layer's product values from the unmerged ones (``canonical``)."""
    out: dict[Product, Tensor | float] = {}
    for key in keys:
        val = canonical(key)
        if scale is not None and key is not Product.F:  # flat ignores the weights
            if key is Product.Q:
                val = scale.s * scale.s * val
            elif scale.mixed and key in PARTNER:
                val = scale.pos * val + scale.neg * canonical(PARTNER[key])
            else:
                val = scale.s * val
        out[key] = val
    return out


class Owned:
    """Coefficient sums built in place where a tensor is known to be fresh (read by nobody else).

    Without a graph, tensors made here (or returned once by the rule) may be changed in place; with one
    (``fresh=False``) every sum is a new tensor.
    """

    def __init__(self, fresh: bool, given: Mapping[Product, Tensor], inputs: list[Any]) -> None:
        self.fresh = fresh
        uses: dict[int, int] = {}
        for c in given.values():
            uses[id(c)] = uses.get(id(c), 0) + 1
        taken = {id(v) for v in inputs}  # a custom rule may hand its inputs back
        self.mine = {i for i, n in uses.items() if n == 1 and i not in taken} if fresh else set()
        self.sums: dict[Product, Tensor] = {}

    def _new(self, t: Tensor) -> Tensor:
        if self.fresh:
            self.mine.add(id(t))
        return t

    def add(self, key: Product, c: Tensor, sign: float = 1.0) -> None:
        """``sums[key] += sign * c``."""
        have = self.sums.get(key)
        if have is None:
            self.sums[key] = c if sign > 0 else self._new(-c)
        elif id(have) in self.mine:
            have.add_(c, alpha=sign)
        else:
            self.sums[key] = self._new(torch.add(have, c, alpha=sign))

    def scaled(self, c: Tensor, factor: Tensor) -> Tensor:
        """``factor * c``, in place where ``c`` is fresh and keeps its shape."""
        if id(c) in self.mine and c.shape == torch.broadcast_shapes(c.shape, factor.shape):
            return c.mul_(factor)
        return self._new(factor * c)


def unmerge(
    merged: Mapping[Product, Tensor],
    scale: Scale | None,
    nonneg: bool,
    fresh: bool,
    inputs: list[Any],
) -> dict[Product, Tensor]:
    """Coefficients of the physical products from the merged rule's coefficients.

    Args:
        merged: The rule's coefficients on the merged layer's products.
        scale: The merged BatchNorm's scale, or ``None``.
        nonneg: The input is >= 0 (``C``/``D`` vanish, ``B`` is virtual).
        fresh: No graph: fresh tensors may be summed in place.
        inputs: The tensors the rule read (never changed in place).
    """
    acc = Owned(fresh, merged, inputs)
    for key, c in merged.items():
        if scale is None or key is Product.F:
            acc.add(key, c)
        elif key is Product.Q:
            acc.add(key, acc.scaled(c, scale.s * scale.s))
        elif scale.mixed and key in PARTNER:
            acc.add(key, acc._new(scale.pos * c))
            acc.add(PARTNER[key], acc._new(scale.neg * c))
        else:
            acc.add(key, acc.scaled(c, scale.s))
    sums = acc.sums
    # virtual products: B = Z - b - A (input >= 0), D = Z - b - A - B - C
    if nonneg:
        sums.pop(Product.C, None)
        sums.pop(Product.D, None)
        if Product.B in sums:
            cb = sums.pop(Product.B)
            acc.add(Product.A, cb, -1.0)
            acc.add(Product.Z, cb)
    elif Product.D in sums:
        cd = sums.pop(Product.D)
        for k in (Product.A, Product.B, Product.C):
            acc.add(k, cd, -1.0)
        acc.add(Product.Z, cd)
    return sums
