"""What the fast path keeps for the backward pass: no max-pool indices, no clamped weights, no cheap state."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medlrp
from medlrp.lrp.pooling import compact_max_pool, pool_arguments
from medlrp.lrp.products import clamped_product

POOLS = [
    (2, (2, 3, 9, 11), {"kernel_size": 3, "stride": 3, "padding": 1}),
    (2, (2, 3, 8, 8), {"kernel_size": 2}),
    (1, (2, 3, 17), {"kernel_size": 3, "stride": 4, "ceil_mode": True}),
    (
        3,
        (1, 2, 7, 8, 9),
        {"kernel_size": (2, 3, 2), "stride": (2, 3, 2), "padding": (1, 1, 0), "dilation": 2},
    ),
    (2, (3, 9, 9), {"kernel_size": 3}),  # unbatched
]


@pytest.mark.parametrize(("dims", "shape", "kwargs"), POOLS)
def test_compact_max_pool_equals_autograd(dims: int, shape: tuple[int, ...], kwargs: dict) -> None:
    torch.manual_seed(dims)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    y = pool(x, **kwargs)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    rest = dict(kwargs)
    p = pool_arguments(dims, (rest.pop("kernel_size"),), rest)
    assert p is not None
    y2 = compact_max_pool(x, dims, p)
    (got,) = torch.autograd.grad(y2, x, g)
    assert torch.equal(y, y2)
    assert torch.equal(got, expected)


def test_pool_arguments_decline_indices_and_overlaps() -> None:
    assert pool_arguments(2, (2,), {"return_indices": True}) is None
    assert pool_arguments(2, (3, 2, 1), {}) is None
    assert pool_arguments(2, (3,), {})["stride"] == (3, 3)


def test_lrp_through_max_pool_equals_the_dual_pass() -> None:
    """The fast path (compact pooling) and the create_graph path (autograd's pooling) agree."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(6, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for name in ("epsilon", "epsilon-alpha2-beta1", "epsilon-gamma-box"):
        lrp = medlrp.LRP(model, name)
        fast = lrp.relevance(x, 1)
        dual = lrp.relevance(x, 1, create_graph=True).detach()
        torch.testing.assert_close(fast, dual, rtol=1e-9, atol=1e-12)


def test_clamped_product_recomputes_its_weight() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    for part, ref in (("W+", w.clamp(min=0)), ("W-", w.clamp(max=0)), ("|W|", w.abs())):
        y = clamped_product(lambda a, b, c: F.conv2d(a, b, c, padding=1), x, w, part)
        g = torch.randn_like(y)
        torch.testing.assert_close(y, F.conv2d(x, ref, padding=1))
        (got,) = torch.autograd.grad(y, x, g)
        (expected,) = torch.autograd.grad(F.conv2d(x, ref, padding=1), x, g)
        torch.testing.assert_close(got, expected)
    lin = torch.randn(5, 6, dtype=torch.float64)
    v = torch.rand(3, 6, dtype=torch.float64, requires_grad=True)
    y = clamped_product(F.linear, v, lin, "W+")  # F.linear saves a transposed view of the weight
    (got,) = torch.autograd.grad(y.sum(), v)
    torch.testing.assert_close(got, lin.clamp(min=0).sum(0).expand(3, 6))


def test_clamped_product_refuses_a_weight_changed_before_the_backward() -> None:
    w = torch.randn(4, 3, 3, 3)
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    y = clamped_product(F.conv2d, x, w, "W+")
    w.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


@pytest.mark.parametrize(
    "name", ["epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1", "epsilon-plus-flat"]
)
def test_cheap_layers_recompute_their_state(name: str, monkeypatch) -> None:
    """A one-channel first layer and a depthwise convolution (fan-in 9) keep no state; same relevance."""
    import medlrp.lrp.linear as linear

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 10 * 10, 3),
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    lrp = medlrp.LRP(model, name)
    fast = lrp.relevance(x, 2)
    dual = lrp.relevance(x, 2, create_graph=True).detach()
    torch.testing.assert_close(fast, dual, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(linear, "CHEAP_FAN_IN", 0)  # everything kept from the forward pass
    torch.testing.assert_close(lrp.relevance(x, 2), fast, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("channels", "kernel"), [(1, 3), (2, 5)], ids=["cheap", "kept"])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_cheap_z_box_layer_with_bounds_per_case_and_per_pixel(monkeypatch, channels, kernel, batch) -> None:
    """z-box bounds constant over a case take the one-case product of ones; per-pixel bounds the full one.

    Cheap (fan-in 9) and kept (fan-in 50) first layers, one to three cases (one product per case
    through ``low W+ + high W-`` up to two, one-case products of ones scaled per case beyond).
    """
    import medlrp.lrp.linear as linear

    torch.manual_seed(2)
    model = (
        nn.Sequential(
            nn.Conv2d(channels, 8, kernel, padding=kernel // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 10 * 10, 3),
        )
        .double()
        .eval()
    )
    x = torch.randn(batch, channels, 12, 12, dtype=torch.float64)
    low_map = -3.0 - torch.rand(1, channels, 12, 12, dtype=torch.float64)
    for options in ({}, {"low": -3.1, "high": 2.7}, {"low": low_map, "high": 3.0}):
        lrp = medlrp.LRP(model, "epsilon-gamma-box", **options)
        fast = lrp.relevance(x, 2)
        torch.testing.assert_close(
            fast, lrp.relevance(x, 2, create_graph=True).detach(), rtol=1e-9, atol=1e-12
        )
        monkeypatch.setattr(linear, "CHEAP_FAN_IN", 0)
        torch.testing.assert_close(lrp.relevance(x, 2), fast, rtol=1e-9, atol=1e-12)
        monkeypatch.setattr(linear, "CHEAP_FAN_IN", 32)
