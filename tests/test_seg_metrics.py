"""Metrics of a region's explanation: relevance share in the (grown) region, curves of the region's score."""

import itertools

import pytest
import torch

import medlrp
from medlrp import metrics
from test_lrp_engine import assert_unchanged, snapshot
from test_seg_api import inputs, make, region_sum, square_mask

DT = torch.float64


def brute_share(relevance, region, margin):
    """Positive relevance within Euclidean distance ``margin`` of the region, over all positive relevance."""
    out = []
    for r, m in zip(relevance, region, strict=True):
        inside = torch.nonzero(m[0]).to(DT)
        grown = torch.zeros(m.shape[1:], dtype=torch.bool)
        for p in itertools.product(*[range(s) for s in m.shape[1:]]):
            d = (inside - torch.tensor(p, dtype=DT)).pow(2).sum(1).min()
            grown[p] = bool(d <= margin**2)
        pos = r.clamp(min=0)
        out.append((pos * grown).sum() / pos.sum())
    return torch.stack(out)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("margin", [0, 2])
def test_region_relevance_share_equals_its_definition(dims, margin):
    torch.manual_seed(0)
    size = 10 if dims == 2 else 6
    relevance = torch.randn(2, 2, *[size] * dims, dtype=DT)
    region = torch.zeros(2, 1, *[size] * dims, dtype=torch.bool)
    region[(0, 0, *[slice(2, 4)] * dims)] = True
    region[(1, 0, *[slice(size - 2, size)] * dims)] = True
    got = metrics.region_relevance_share(relevance, region, margin=margin)
    torch.testing.assert_close(got, brute_share(relevance, region, margin))
    assert (got > 0).all() and (got < 1).all()
    if margin:
        assert (got > metrics.region_relevance_share(relevance, region)).all()


def test_region_relevance_share_edge_cases():
    relevance = torch.rand(1, 1, 6, 6, dtype=DT)
    assert torch.isnan(metrics.region_relevance_share(relevance, torch.zeros(1, 1, 6, 6))).all()
    assert metrics.region_relevance_share(relevance, torch.ones(1, 1, 6, 6)).item() == pytest.approx(1.0)
    with pytest.raises(medlrp.InputError, match="margin must be >= 0"):
        metrics.region_relevance_share(relevance, torch.ones(1, 1, 6, 6), margin=-1)


def manual_pixel_flipping(model, x, relevance, target, mask, k, baseline):
    """The curve by hand: voxels most relevant first (ties by position), ``k`` per step, region fixed."""
    curves = []
    for i in range(len(x)):
        order = torch.argsort(-relevance[i].flatten(), stable=True)
        xi = x[i : i + 1].clone()
        scores = [region_sum(model, xi, [target[i]], mask[i : i + 1])]
        for s in range(0, order.numel(), k):
            xi.view(-1)[order[s : s + k]] = baseline
            scores.append(region_sum(model, xi, [target[i]], mask[i : i + 1]))
        curves.append(torch.cat(scores))
    return torch.stack(curves).detach()


def test_pixel_flipping_of_the_region_logit_sum():
    model, x = make(), inputs(size=8)
    mask = square_mask(x, 2, 6)
    target = [2, 0]
    e = medlrp.explain(model, x, target, region=mask, composite="epsilon")
    model.train()  # flags restored after the metric's eval-mode passes
    out, before = model(x), snapshot(model)
    curve = metrics.pixel_flipping(
        model, x, e.relevance, target, region=mask, features_per_step=16, baseline=0.5, batch_size=3
    )
    assert_unchanged(model, before, x, out)
    model.eval()
    want = manual_pixel_flipping(model, x, e.relevance, target, mask, 16, 0.5)
    assert curve.shape == (2, 5)
    torch.testing.assert_close(curve, want)
    torch.testing.assert_close(
        curve[:, 0],
        (e.output.gather(1, e.target[:, None, None, None].expand(2, 1, 8, 8)) * mask).flatten(1).sum(1),
    )


def test_region_perturbation_of_the_region_logit_sum():
    model, x = make(), inputs(size=8)
    mask = square_mask(x, 2, 6)
    rel = torch.zeros_like(x)
    rel[0, 0, 4:, 4:] = 2.0  # patch (1, 1) first, then (0, 0) ...
    rel[0, 0, :4, :4] = 1.0
    rel[1, 0, :4, 4:] = 1.0
    curve = metrics.region_perturbation(model, x, rel, 1, region=mask, patch_size=4, steps=2, baseline=0.0)
    xs = x.clone()
    xs[0, :, 4:, 4:] = 0
    xs[1, :, :4, 4:] = 0
    step1 = region_sum(model, xs, [1, 1], mask)
    xs[0, :, :4, :4] = 0
    xs[1, :, :4, :4] = 0  # ties: the first patch in position order
    step2 = region_sum(model, xs, [1, 1], mask)
    want = torch.stack([region_sum(model, x, [1, 1], mask), step1, step2], 1).detach()
    torch.testing.assert_close(curve, want)


def test_region_curves_refuse_what_does_not_apply():
    model, x = make(), inputs(size=8)
    rel = torch.rand_like(x)
    with pytest.raises(medlrp.InputError, match="softmax does not apply with region="):
        metrics.pixel_flipping(model, x, rel, 1, region="predicted", softmax=True)
    with pytest.raises(medlrp.InputError, match="segmentation model: pass region="):
        metrics.pixel_flipping(model, x, rel, 1)
    with pytest.raises(medlrp.InputError, match="is empty"):
        metrics.region_perturbation(model, x, rel, 1, region=torch.zeros(8, 8))
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).double()
    with pytest.raises(medlrp.InputError, match="region= applies to segmentation models"):
        metrics.pixel_flipping(clf, x, rel, 1, region="predicted")


def test_conservation_error_of_a_region_explanation():
    model, x = make(bias=False), inputs(size=8)
    mask = square_mask(x, 2, 6)
    e = medlrp.explain(model, x, [2, 1], region=mask, composite="epsilon")
    err = metrics.conservation_error(e)
    assert err.shape == (2,) and (err < 1e-4).all()
    e.relevance[0] *= 2  # twice the region's logit sum: an error of 1
    torch.testing.assert_close(
        metrics.conservation_error(e)[0], torch.tensor(1.0, dtype=DT), rtol=1e-3, atol=1e-3
    )
