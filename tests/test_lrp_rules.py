"""Each rule against its equation in plain matrix form (float64), for every linear layer type.

The layer's weight matrix is taken from its Jacobian, so one reference serves Linear, Conv1d/2d/3d and
transposed convolutions: ``z = W x + b`` with ``W = d layer / d x`` and ``b = layer(0)``.
"""

import pytest
import torch
from torch import nn

import medlrp
from medlrp.lrp import AlphaBeta, Composite, Epsilon, Flat, Gamma, WSquare, ZBox, Zero, ZPlus

DT = torch.float64
EPS = 1e-6


def stab(d, eps=EPS):
    return torch.where(d >= 0, d + eps, d - eps)


def layers():
    g = torch.Generator().manual_seed(0)

    def init(m):
        for p in m.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        return m.double()

    return {
        "linear": (init(nn.Linear(6, 5)), (6,)),
        "conv1d": (init(nn.Conv1d(2, 3, 3, padding=1)), (2, 5)),
        "conv2d": (init(nn.Conv2d(2, 3, 3, stride=2, padding=1)), (2, 5, 5)),
        "conv3d": (init(nn.Conv3d(2, 2, 2)), (2, 3, 3, 3)),
        "conv_transpose2d": (init(nn.ConvTranspose2d(2, 3, 2, stride=2)), (2, 3, 3)),
    }


def matrix_form(layer, x):
    """``(W, b)`` with ``layer(x) = W x.flatten() + b`` for one sample."""
    flat = x.reshape(-1)
    b = layer(torch.zeros_like(x)[None]).reshape(-1).detach()
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(x.shape)[None]).reshape(-1), flat)
    return jac, b


def reference(rule, w, b, x, r, low=None, high=None):
    """The rule's equation: lower relevance from upper relevance ``r`` (all flattened, one sample)."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    bp, bn = b.clamp(min=0), b.clamp(max=0)
    z = w @ x + b
    if isinstance(rule, Epsilon):
        return x * (w.T @ (r / stab(z, rule.epsilon)))
    if isinstance(rule, Zero):
        return x * (w.T @ (r / z))
    if isinstance(rule, ZPlus):
        m = r / stab(wp @ xp + wn @ xn + bp)
        return xp * (wp.T @ m) + xn * (wn.T @ m)
    if isinstance(rule, AlphaBeta):
        mp = r / stab(wp @ xp + wn @ xn + bp)
        mn = r / stab(wn @ xp + wp @ xn + bn)
        return rule.alpha * (xp * (wp.T @ mp) + xn * (wn.T @ mp)) - rule.beta * (
            xp * (wn.T @ mn) + xn * (wp.T @ mn)
        )
    if isinstance(rule, Gamma):
        gm = rule.gamma
        w_up, w_dn = w + gm * wp, w + gm * wn
        sp = w_up @ xp + w_dn @ xn + b + gm * bp
        sn = w_dn @ xp + w_up @ xn + b + gm * bn
        u = torch.where(z > 0, r / stab(sp), 0.0)
        v = torch.where(z < 0, r / stab(sn), 0.0)
        return xp * (w_up.T @ u + w_dn.T @ v) + xn * (w_dn.T @ u + w_up.T @ v)
    if isinstance(rule, ZBox):
        m = r / stab(z - wp @ low - wn @ high - b)
        return x * (w.T @ m) - low * (wp.T @ m) - high * (wn.T @ m)
    if isinstance(rule, Flat):
        ones = (w != 0).to(w)  # the flat rule's weights: ones where the layer connects
        return ones.T @ (r / stab(ones @ torch.ones_like(x)))
    if isinstance(rule, WSquare):
        return (w * w).T @ (r / stab((w * w) @ torch.ones_like(x) + b * b))
    raise AssertionError(rule)


RULES = [
    Epsilon(),
    Epsilon(0.3),
    Zero(),
    ZPlus(),
    AlphaBeta(2, 1),
    AlphaBeta(1, 0),
    Gamma(0.25),
    Gamma(1.0),
    ZBox(-2.0, 2.0),
    Flat(),
    WSquare(),
]


@pytest.mark.parametrize("kind", list(layers()))
@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("signs", ["mixed", "nonneg"])
def test_rule_equals_matrix_form(kind, rule, signs):
    layer, shape = layers()[kind]
    model = nn.Sequential(layer, nn.Flatten())
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, *shape), generator=g, dtype=DT)
    if signs == "nonneg":
        x = x.clamp(min=0)
    r0 = torch.randn(model(x).shape, generator=g, dtype=DT)
    composite = Composite(name_map={"0": rule})
    lrp = medlrp.LRP(model, composite, start=lambda out, t: r0)
    rel = lrp.relevance(x, 0)
    for i in range(len(x)):
        w, b = matrix_form(layer, x[i])
        low = torch.full_like(x[i].reshape(-1), -2.0)
        high = torch.full_like(x[i].reshape(-1), 2.0)
        ref = reference(rule, w, b, x[i].reshape(-1), r0[i], low, high)
        torch.testing.assert_close(rel[i].reshape(-1), ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(
    "rule", [Epsilon(), ZPlus(), Gamma(0.25), AlphaBeta(2, 1), ZBox(-2.0, 2.0), Flat(), WSquare()], ids=repr
)
@pytest.mark.parametrize("negative_scale", [False, True])
def test_batchnorm_merge_equals_merged_layer(rule, negative_scale):
    """conv -> BN under a rule equals the rule on the conv with BN folded into its weight and bias."""
    g = torch.Generator().manual_seed(2)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1).double(), nn.BatchNorm2d(3).double()
    with torch.no_grad():
        for t in (conv.weight, conv.bias, bn.running_mean, bn.bias):
            t.copy_(torch.randn(t.shape, generator=g, dtype=DT) * 0.5)
        bn.running_var.copy_(torch.rand(3, generator=g, dtype=DT) + 0.5)
        bn.weight.copy_(torch.rand(3, generator=g, dtype=DT) + 0.5)
        if negative_scale:
            bn.weight[1] = -bn.weight[1]
    model = nn.Sequential(conv, bn, nn.Flatten()).eval()
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    merged = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        merged.weight.copy_(conv.weight * s[:, None, None, None])
        merged.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
    reference_model = nn.Sequential(merged, nn.Flatten())
    x = torch.randn(2, 2, 4, 4, generator=g, dtype=DT)
    r0 = torch.randn(2, 48, generator=g, dtype=DT)
    got = medlrp.LRP(model, Composite(name_map={"0": rule}), start=lambda o, t: r0).relevance(x, 0)
    want = medlrp.LRP(reference_model, Composite(name_map={"0": rule}), start=lambda o, t: r0).relevance(x, 0)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "pool",
    [nn.AvgPool1d(2), nn.AvgPool2d(2), nn.AvgPool3d(2), nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool3d(1)],
    ids=lambda m: type(m).__name__,
)
def test_average_pooling_is_proportional_split(pool):
    dims = {"1d": 1, "2d": 2, "3d": 3}[type(pool).__name__[-2:].lower()]
    x = torch.rand((2, 2) + (4,) * dims, dtype=DT) + 0.1
    model = nn.Sequential(pool, nn.Flatten())
    r0 = torch.randn(model(x).shape, dtype=DT)
    rel = medlrp.LRP(model, "epsilon", start=lambda o, t: r0).relevance(x, 0)
    w, b = matrix_form(pool, x[0])
    z = w @ x[0].reshape(-1)
    ref = x[0].reshape(-1) * (w.T @ (r0[0] / stab(z)))
    torch.testing.assert_close(rel[0].reshape(-1), ref)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.AdaptiveMaxPool3d(1)], ids=lambda m: type(m).__name__)
def test_max_pooling_gives_relevance_to_the_winner(pool):
    x = torch.rand((2, 2) + (4,) * (3 if "3d" in type(pool).__name__ else 2), dtype=DT) + 0.1
    model = nn.Sequential(pool, nn.Flatten())
    r0 = torch.randn(model(x).shape, dtype=DT)
    rel = medlrp.LRP(model, "epsilon", start=lambda o, t: r0).relevance(x, 0)
    assert torch.allclose(rel.sum(tuple(range(1, x.dim()))), r0.sum(1))
    assert (rel != 0).sum() == r0.numel()
