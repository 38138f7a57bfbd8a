"""The segmentation networks' layers against their equations in matrix form (float64).

Interpolation (every mode, ``align_corners`` both ways, 1D/2D/3D, ``nn.Upsample`` and the direct
``upsample_*`` kernels) is a bias-free linear map ``y = W x`` with ``W`` its Jacobian; its rule is
LRP-epsilon on that map, ``R_x = x * W^T (R_y / stab(W x))``. Transposed convolutions in 1D and 3D
follow the linear rules' equations (``test_lrp_rules`` covers 2D). PReLU passes relevance unchanged.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medlrp
from medlrp.lrp import AlphaBeta, Composite, Epsilon, Gamma, ZPlus
from test_lrp_rules import matrix_form, reference, stab

DT = torch.float64

INTERPOLATIONS = [
    ("linear", 1, None),
    ("linear", 1, True),
    ("bilinear", 2, None),
    ("bilinear", 2, True),
    ("bicubic", 2, None),
    ("bicubic", 2, True),
    ("trilinear", 3, None),
    ("trilinear", 3, True),
    ("nearest", 3, None),
    ("nearest-exact", 2, None),
    ("area", 2, None),
]


class Interpolate(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.interpolate(x, **self.kw).flatten(1)


def check_epsilon_map(model, layer, x, r0, eps=1e-6):
    """The engine's relevance equals ``x * W^T (r0 / stab(W x))`` per sample (``W`` the Jacobian).

    Nearest modes copy (one weight 1 per output): their rule is exact, ``eps=0``.
    """
    rel = medlrp.LRP(model, "epsilon", start=lambda out, t: r0).relevance(x, 0)
    for i in range(len(x)):
        w, b = matrix_form(layer, x[i])
        assert torch.count_nonzero(b) == 0
        xi = x[i].reshape(-1)
        ref = xi * (w.T @ (r0[i] / stab(w @ xi, eps)))
        torch.testing.assert_close(rel[i].reshape(-1), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("mode,dims,align", INTERPOLATIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("how", ["scale", "size"])
def test_interpolation_is_epsilon_on_its_linear_map(mode, dims, align, how):
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 2) + (4,) * dims, generator=g, dtype=DT)
    kw = {"scale_factor": 2} if how == "scale" else {"size": (7,) * dims}
    if mode == "area" and how == "scale":
        kw = {"size": (2,) * dims}  # area downsamples
    layer = Interpolate(mode=mode, align_corners=align, **kw)
    r0 = torch.randn(layer(x).shape, generator=g, dtype=DT)
    check_epsilon_map(layer, layer, x, r0, eps=0.0 if mode.startswith("nearest") else 1e-6)
    # conservation of every output's own value: the stabiliser (at most 1e-6 per output) is all it loses
    rel = medlrp.LRP(layer, "epsilon", start="all-classes").relevance(x, 0)
    y = layer(x)
    torch.testing.assert_close(rel.flatten(1).sum(1), y.sum(1), rtol=0, atol=1e-6 * y.shape[1])


@pytest.mark.parametrize("dims", [2, 3])
def test_nn_upsample_and_direct_kernels(dims):
    mode = {2: "bilinear", 3: "trilinear"}[dims]
    x = torch.rand((2, 3) + (4,) * dims, dtype=DT) + 0.1
    kernel = {2: torch._C._nn.upsample_bilinear2d, 3: torch._C._nn.upsample_trilinear3d}[dims]

    class Direct(nn.Module):
        def forward(self, v):
            return kernel(v, (8,) * dims, True, None).flatten(1)

    for layer in (
        nn.Sequential(nn.Upsample(scale_factor=2, mode=mode, align_corners=True), nn.Flatten()),
        Direct(),
    ):
        r0 = torch.randn(layer(x).shape, dtype=DT)
        check_epsilon_map(layer, layer, x, r0)


def test_unknown_interpolation_mode_names_the_module():
    class Odd(nn.Module):
        def forward(self, x):
            return torch._C._nn._upsample_lanczos2d_aa(x, (8, 8), False, None).flatten(1)

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Odd()).double()
    with pytest.raises(medlrp.UnsupportedLayerError, match="Odd"):
        medlrp.LRP(model, "epsilon")(torch.randn(1, 1, 6, 6, dtype=DT), 0)


def test_interpolation_keeps_the_sign_information_for_z_plus():
    """After ReLU + bilinear upsampling the input is known >= 0: z+ needs no product for negatives."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    model = nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear"), conv, nn.Flatten())
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    r0 = torch.randn(model(x).shape, dtype=DT)
    rel = medlrp.LRP(model, Composite(name_map={"2": ZPlus()}), start=lambda o, t: r0).relevance(x, 0)
    up = nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear"))
    for i in range(2):
        h = up(x[i : i + 1])[0]
        w, b = matrix_form(conv, h)
        r_h = reference(ZPlus(), w, b, h.reshape(-1), r0[i])
        wu, _ = matrix_form(up, x[i])
        ref = x[i].reshape(-1) * (wu.T @ (r_h / stab(wu @ x[i].reshape(-1))))
        torch.testing.assert_close(rel[i].reshape(-1), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("rule", [Epsilon(), ZPlus(), Gamma(0.25), AlphaBeta(2, 1)], ids=repr)
@pytest.mark.parametrize(
    "layer,shape",
    [
        (nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 4)),
        (nn.ConvTranspose3d(2, 2, 2, stride=2), (2, 2, 3, 2)),
    ],
    ids=["conv_transpose1d", "conv_transpose3d"],
)
def test_transposed_convolutions_follow_the_rules(rule, layer, shape):
    torch.manual_seed(4)
    layer = layer.double()
    model = nn.Sequential(layer, nn.Flatten())
    x = torch.randn((2, *shape), dtype=DT)
    r0 = torch.randn(model(x).shape, dtype=DT)
    rel = medlrp.LRP(model, Composite(name_map={"0": rule}), start=lambda o, t: r0).relevance(x, 0)
    for i in range(2):
        w, b = matrix_form(layer, x[i])
        ref = reference(rule, w, b, x[i].reshape(-1), r0[i])
        torch.testing.assert_close(rel[i].reshape(-1), ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("act", [nn.PReLU(3, init=0.3), nn.PReLU(), nn.LeakyReLU(0.1)], ids=repr)
def test_prelu_and_leaky_relu_pass_relevance(act):
    """``R_x = R_y`` elementwise: the relevance of a conv's output equals what reaches the activation."""
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False).double()
    model = nn.Sequential(conv, act.double(), nn.Flatten())
    x = torch.randn(2, 1, 5, 5, dtype=DT)
    r0 = torch.randn(model(x).shape, dtype=DT)
    rel = medlrp.LRP(model, "epsilon", start=lambda o, t: r0).relevance(x, 0)
    for i in range(2):
        w, b = matrix_form(conv, x[i])
        ref = reference(Epsilon(), w, b, x[i].reshape(-1), r0[i])  # the activation passes r0 unchanged
        torch.testing.assert_close(rel[i].reshape(-1), ref, rtol=1e-7, atol=1e-9)


def test_region_relevance_has_exact_derivatives_through_upsampling_and_prelu():
    """``create_graph=True``: float64 gradcheck of the relevance w.r.t. the input (fixed region)."""
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.PReLU(2),
        nn.AvgPool2d(2),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(2, 2, 1),
    ).double()
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1:3, :] = True
    lrp = medlrp.LRP(model, "epsilon")
    x = torch.randn(1, 1, 4, 4, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: lrp.relevance(v, 1, create_graph=True, region=mask), (x,))
