"""Gradient methods equal Captum (float64): Saliency (abs=False), InputXGradient, IntegratedGradients
with each quadrature rule, Occlusion in 2D and 3D; SmoothGrad from its definition."""

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Occlusion, Saliency
from torch import nn

import medlrp


def make_model(dims: int) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    torch.manual_seed(0)
    return (
        nn.Sequential(
            conv(2, 4, 3, padding=1),
            nn.Softplus(),  # smooth, so the quadrature rules really differ
            conv(4, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4**dims, 3),
        )
        .double()
        .eval()
    )


def batch(dims: int, n: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 2, *([8] * dims), dtype=torch.float64)


TARGET = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_and_input_x_gradient_equal_captum(dims):
    model, x = make_model(dims), batch(dims)
    g = medlrp.explain(model, x, TARGET, method="gradient").relevance
    torch.testing.assert_close(g, Saliency(model).attribute(x.clone().requires_grad_(), TARGET, abs=False))
    assert (g < 0).any()  # signed: nothing clamped away
    ixg = medlrp.explain(model, x, TARGET, method="input-x-gradient").relevance
    torch.testing.assert_close(ixg, InputXGradient(model).attribute(x.clone().requires_grad_(), TARGET))


@pytest.mark.parametrize(
    "rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_integrated_gradients_equals_captum(rule):
    model, x = make_model(2), batch(2)
    baseline = torch.full_like(x[:1], 0.25)
    e = medlrp.explain(
        model, x, TARGET, method="integrated-gradients", steps=9, rule=rule, baseline=baseline, batch_size=7
    )
    ref = IntegratedGradients(model).attribute(x, baselines=baseline, target=TARGET, n_steps=9, method=rule)
    # Captum computes its quadrature points in float32: agreement to ~1e-8.
    torch.testing.assert_close(e.relevance, ref, rtol=1e-6, atol=1e-8)
    assert e.options["rule"] == rule and e.options["steps"] == 9


def test_integrated_gradients_3d_completeness():
    """IG completeness: attributions sum to f(x) - f(baseline), up to the quadrature error at kinks."""
    model, x = make_model(3), batch(3, 2)
    e = medlrp.explain(model, x, [1, 2], method="integrated-gradients", steps=64)
    ref = IntegratedGradients(model).attribute(x, target=torch.tensor([1, 2]), n_steps=64)
    torch.testing.assert_close(e.relevance, ref, rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        delta = (
            model(x).gather(1, torch.tensor([[1], [2]]))[:, 0] - model(torch.zeros_like(x))[:, 1:3].diagonal()
        )
    torch.testing.assert_close(e.relevance.flatten(1).sum(1), delta, rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize(
    ("dims", "window", "stride"),
    [(2, 3, 2), (2, (4, 2), (4, 1)), (2, 8, 8), (3, 4, 3), (3, (2, 4, 8), (2, 3, 8))],
)
def test_occlusion_equals_captum(dims, window, stride):
    model, x = make_model(dims), batch(dims)
    e = medlrp.explain(
        model, x, TARGET, method="occlusion", window=window, stride=stride, baseline=0.5, batch_size=10
    )
    win = (window,) * dims if isinstance(window, int) else window
    st = (stride,) * dims if isinstance(stride, int) else stride
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(2, *win), strides=(2, *st), target=TARGET, baselines=0.5
    )
    assert ref.abs().max() > 0
    # Captum divides (and returns) in float32.
    assert e.relevance.dtype == torch.float64
    torch.testing.assert_close(e.relevance, ref.double(), rtol=1e-6, atol=1e-7)


def test_occlusion_rejects_gaps():
    with pytest.raises(medlrp.InputError, match="stride"):
        medlrp.explain(make_model(2), batch(2), method="occlusion", window=2, stride=3)


def test_smoothgrad_is_mean_gradient_over_seeded_noise():
    model, x = make_model(2), batch(2)
    e = medlrp.explain(model, x, TARGET, method="smoothgrad", samples=5, noise=0.2, seed=7, batch_size=4)
    eps = torch.randn((5, *x.shape[1:]), generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    sigma = 0.2 * (x.flatten(1).max(1).values - x.flatten(1).min(1).values)
    expected = torch.stack(
        [Saliency(model).attribute(x + sigma.view(-1, 1, 1, 1) * eps[k], TARGET, abs=False) for k in range(5)]
    ).mean(0)
    torch.testing.assert_close(e.relevance, expected)
    again = medlrp.explain(model, x, TARGET, method="smoothgrad", samples=5, noise=0.2, seed=7)
    torch.testing.assert_close(again.relevance, e.relevance)  # seeded
    other = medlrp.explain(model, x, TARGET, method="smoothgrad", samples=5, noise=0.2, seed=8)
    assert not torch.allclose(other.relevance, e.relevance)
    plain = medlrp.explain(model, x, TARGET, method="smoothgrad", samples=2, noise=0.0)
    torch.testing.assert_close(plain.relevance, medlrp.explain(model, x, TARGET, method="gradient").relevance)
