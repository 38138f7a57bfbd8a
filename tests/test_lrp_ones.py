"""Convolutions of an input of ones from border masks (``medlrp.lrp.ones``) equal the convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlrp.lrp.geometry import conv_geometry
from medlrp.lrp.ones import OnesThrough, ones_product

DT = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.mark.parametrize(
    ("dims", "size", "kernel", "stride", "padding", "dilation", "groups"),
    [
        (1, (11,), (3,), 1, 1, 1, 1),
        (2, (9, 12), (3, 5), (2, 1), (1, 2), 1, 1),
        (2, (10, 10), (3, 3), 3, 0, 2, 2),
        (3, (7, 8, 6), (3, 3, 3), 2, 1, 1, 1),
        (3, (6, 6, 6), (2, 3, 1), (1, 2, 1), (0, 1, 0), (2, 1, 1), 3),
    ],
)
def test_ones_product_equals_the_convolution_of_ones(dims, size, kernel, stride, padding, dilation, groups):
    torch.manual_seed(0)
    c_in, c_out = 3 * groups, 2 * groups
    weight = torch.randn(c_out, c_in // groups, *kernel, dtype=DT)
    ones = torch.ones(1, c_in, *size, dtype=DT)
    conv = CONV[dims]
    geometry = conv_geometry(conv, (stride, padding, dilation, groups), {})
    assert geometry is not None
    expected = conv(ones, weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(ones_product(geometry, size, weight), expected, rtol=1e-12, atol=1e-12)
    # one kernel per case, and the gradient: the convolution's own
    kernels = torch.randn(3, *weight.shape, dtype=DT)
    leaf = torch.ones(3, c_in, *size, dtype=DT, requires_grad=True)
    out = OnesThrough.apply(leaf, kernels, geometry)
    ref_leaf = leaf.detach().clone().requires_grad_(True)
    ref = torch.cat(
        [conv(ref_leaf[k : k + 1], kernels[k], None, stride, padding, dilation, groups) for k in range(3)]
    )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    (grad,) = torch.autograd.grad(out, leaf, g)
    (ref_grad,) = torch.autograd.grad(ref, ref_leaf, g)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
