"""Clamped weights of one LRP object follow parameter changes between calls (they are never kept)."""

import torch
from torch import nn

import medlrp


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).eval()


def test_cache_follows_in_place_parameter_changes() -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    lrp = medlrp.LRP(model, "epsilon-alpha2-beta1")
    first = lrp.relevance(x, 0)
    torch.testing.assert_close(lrp.relevance(x, 0), first, rtol=0, atol=0)
    with torch.no_grad():
        model[2].weight.mul_(-1.5)  # an in-place change bumps the version counter
    fresh = medlrp.LRP(model, "epsilon-alpha2-beta1").relevance(x, 0)
    torch.testing.assert_close(lrp.relevance(x, 0), fresh, rtol=0, atol=0)
    assert not torch.equal(fresh, first)


def test_cache_follows_replaced_parameters() -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    lrp = medlrp.LRP(model, "epsilon-gamma-box")
    lrp.relevance(x, 0)
    model[2].weight = nn.Parameter(torch.randn_like(model[2].weight))
    fresh = medlrp.LRP(model, "epsilon-gamma-box").relevance(x, 0)
    torch.testing.assert_close(lrp.relevance(x, 0), fresh, rtol=0, atol=0)


def test_create_graph_still_reaches_parameters() -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    lrp = medlrp.LRP(model, "epsilon-alpha2-beta1")
    lrp.relevance(x, 0)  # fills the cache on the fast path
    rel = lrp.relevance(x, 0, create_graph=True)
    (grad,) = torch.autograd.grad(rel.sum(), model[2].weight)
    assert grad.abs().sum() > 0
