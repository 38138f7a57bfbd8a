"""``attnlrp`` / ``cp-lrp`` with ``linear="gamma"`` equals zennit's generalised gamma rule, written out.

The fast form in :mod:`medlrp.lrp.transformer_fast` computes the rule with ``|W|`` (two matrix products
each way); the reference below is the rule's own four-product definition (zennit 0.5.1 ``Gamma``, the
rule LXT 2.1 puts on a ViT's linear layers), message by message with einsum, in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medlrp

STAB = 1e-6


def stab(z: torch.Tensor) -> torch.Tensor:
    """zennit's stabiliser: ``z + eps * sign(z)`` with ``sign(0) = +1``."""
    return z + STAB * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def gamma_rule(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor, g: float) -> torch.Tensor:
    """R_i of ``z = W x + b`` under zennit's generalised gamma rule (four sign-split products).

    Outputs ``z_j > 0`` share ``R_j`` in proportion to the terms of ``(W + g W+) x+ + (W + g W-) x-``
    (bias ``b + g b+``), outputs ``z_j < 0`` to those of ``(W + g W-) x+ + (W + g W+) x-`` (``b + g b-``).
    """
    wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    z = torch.einsum("...i,ji->...j", x, w) + b
    # contributions c[..., j, i] of input i to output j
    pos = torch.einsum("...i,ji->...ji", xp, wp) + torch.einsum("...i,ji->...ji", xn, wn)
    neg = torch.einsum("...i,ji->...ji", xp, wn) + torch.einsum("...i,ji->...ji", xn, wp)
    sp = pos.sum(-1) + b + g * b.clamp(min=0)
    sn = neg.sum(-1) + b + g * b.clamp(max=0)
    share = torch.where(
        (z > 0)[..., None],
        pos / stab(sp)[..., None],
        torch.where((z < 0)[..., None], neg / stab(sn)[..., None], 0.0),
    )
    return torch.einsum("...ji,...j->...i", share, r)


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("gamma", [0.25, 2.0])
def test_gamma_on_linear_layers_equals_the_rule(act: str, gamma: float) -> None:
    torch.manual_seed(0)
    l1, l2, l3 = nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 4)
    # tanh: hidden inputs of both signs; relu: inputs >= 0 with exact zeros (the one-sign branch)
    a = nn.Tanh() if act == "tanh" else nn.ReLU()
    model = nn.Sequential(l1, a, l2, nn.Tanh(), l3).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    x[:, 2] = 0.0  # exact zeros in the input
    target = torch.tensor([0, 1, 2, 3, 0])
    ours = medlrp.LRP(model, "attnlrp", linear="gamma", gamma=gamma).relevance(x, target)

    with torch.no_grad():
        h1 = l1(x)
        a1 = a(h1)
        h2 = l2(a1)
        a2 = torch.tanh(h2)
        out = l3(a2)
        r = torch.zeros_like(out).scatter_(1, target[:, None], out.gather(1, target[:, None]))
        r = gamma_rule(a2, l3.weight, l3.bias, r, gamma)  # tanh, relu: identity rule (R passes)
        r = gamma_rule(a1, l2.weight, l2.bias, r, gamma)
        ref = gamma_rule(x, l1.weight, l1.bias, r, gamma)
    err = (ours - ref).norm(dim=1) / ref.norm(dim=1)
    assert (err < 1e-10).all(), err
    # not the epsilon rule (the test would pass for a wrong rule otherwise)
    eps = medlrp.LRP(model, "attnlrp").relevance(x, target)
    assert ((eps - ref).norm(dim=1) / ref.norm(dim=1) > 1e-3).any()


def test_gamma_cache_follows_weight_changes() -> None:
    """The cached ``|W|`` of an explainer is renewed when a weight changes in place (an optimiser step)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    lrp = medlrp.LRP(model, "attnlrp", linear="gamma")
    lrp.relevance(x, 0)
    with torch.no_grad():
        model[0].weight.mul_(-1.5)
    again = lrp.relevance(x, 0)
    fresh = medlrp.LRP(model, "attnlrp", linear="gamma").relevance(x, 0)
    assert torch.allclose(again, fresh, rtol=1e-12, atol=0)


@pytest.mark.parametrize("linear", ["epsilon", "gamma"])
def test_patch_embedding_fast_form_equals_the_engines_convolution_rule(linear: str) -> None:
    """A patch embedding (stride == kernel convolution) through the linear fast forms: same relevance."""
    import dataclasses
    import sys
    from pathlib import Path

    from medlrp.lrp import transformer_fast
    from medlrp.lrp.transformer import attnlrp

    sys.path.insert(0, str(Path(__file__).parent))
    import vit_zoo

    seen: list[tuple[int, ...]] = []
    patches = transformer_fast._patches

    def spy(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
        seen.append(kernel)
        return patches(x, kernel)

    for name in ("timm-vit", "monai3d"):  # Conv2d and Conv3d patch embeddings
        model, x = vit_zoo.make(name)
        seen.clear()
        transformer_fast._patches = spy
        try:
            fast = medlrp.LRP(model, "attnlrp", linear=linear).relevance(x, 0)
        finally:
            transformer_fast._patches = patches
        assert len(seen) == 1 and len(seen[0]) == x.dim() - 2, (name, seen)
        composite = attnlrp(linear=linear)
        handlers = {k: v for k, v in composite.handlers.items() if v is not transformer_fast._patch_conv}
        generic = medlrp.LRP(model, dataclasses.replace(composite, handlers=handlers)).relevance(x, 0)
        err = (fast - generic).flatten(1).norm(dim=1) / generic.flatten(1).norm(dim=1)
        assert (err < 1e-10).all(), (name, err)
