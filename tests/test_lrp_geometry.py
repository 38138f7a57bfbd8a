"""A convolution call's geometry (``medlrp.lrp.geometry``) and the products that use it.

Gamma and alpha-beta on an input >= 0 send the gradients of ``Z`` and ``W+ x`` through one backward call
with the stacked weight: equal to the rule's coefficients routed by autograd (``create_graph=True``
takes the general path), on convolutions and transposed convolutions, 2D and 3D.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medlrp
from medlrp.lrp import AlphaBeta, Composite, Gamma
from medlrp.lrp.geometry import Geometry, conv_geometry, input_grad

DT = torch.float64


def test_conv_geometry_reads_the_call_or_declines():
    assert conv_geometry(F.conv2d, (), {"stride": 2, "padding": "valid"}) == Geometry(
        (2, 2), (0, 0), (1, 1), 1
    )
    assert conv_geometry(F.conv2d, (1, "same"), {}) is None  # may pad unevenly
    assert conv_geometry(F.conv_transpose2d, (2, 1, 1), {"groups": 2}) == Geometry(
        (2, 2), (1, 1), (1, 1), 2, True, (1, 1)
    )
    assert conv_geometry(F.linear, (), {}) is None


@pytest.mark.parametrize("transposed", [False, True])
def test_input_grad_is_the_convolutions_backward(transposed):
    """The gradient from the geometry alone equals autograd's through the call (3D, stride 2, groups 2)."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 6, 4, dtype=DT, requires_grad=True)
    if transposed:
        w = torch.randn(4, 3, 3, 3, 3, dtype=DT)
        args = (2, 1, 1, 2)  # stride, padding, output_padding, groups
        func = F.conv_transpose3d
    else:
        w = torch.randn(6, 2, 3, 3, 3, dtype=DT)
        args = (2, 1, 1, 2)  # stride, padding, dilation, groups
        func = F.conv3d
    out = func(x, w, None, *args)
    g = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, g)
    geometry = conv_geometry(func, args, {})
    assert geometry is not None and geometry.transposed is transposed
    torch.testing.assert_close(input_grad(geometry, g, x.detach(), w), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", [Gamma(0.25), AlphaBeta(2.0, 1.0)], ids=repr)
@pytest.mark.parametrize("dims", [2, 3])
def test_paired_backward_equals_the_rule(rule, dims):
    """ReLU outputs (>= 0) into a convolution and a transposed one, merged BatchNorm, batch of two."""
    torch.manual_seed(3)
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    bn = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    model = nn.Sequential(
        conv(2, 4, 3, padding=1),
        nn.ReLU(),
        conv(4, 6, 3, stride=2, padding=1),
        bn(6),
        nn.ReLU(),
        up(6, 3, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.Flatten(),
    ).double()
    with torch.no_grad():
        model[3].running_mean.uniform_(-0.5, 0.5)
        model[3].running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 2, *[6] * dims, dtype=DT)
    r0 = torch.rand(model(x).shape, dtype=DT)
    lrp = medlrp.LRP(model, Composite(conv=rule), start=lambda o, t: r0)
    fast = lrp.relevance(x, 0)
    dual = lrp.relevance(x, 0, create_graph=True).detach()
    # alpha-beta's fused form differs from its coefficients by a few 1e-9 relative where the two
    # normalisers nearly cancel (the same without the paired backward); a wrong weight is off by O(1)
    torch.testing.assert_close(fast, dual, rtol=1e-7, atol=1e-10)
    assert fast.abs().sum() > 0
