"""medlrp.metrics on their own: exact values on linear models, 2D and 3D, the model left untouched."""

import math

import pytest
import torch

import medlrp
from medlrp import metrics as M


def _linear(shape, classes=3, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(math.prod(shape), classes, dtype=torch.float64)
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval(), lin


@pytest.mark.parametrize("shape", [(1, 8, 6), (2, 4, 5, 3)], ids=["2d", "3d"])
def test_pixel_flipping_linear_is_cumulative_relevance(shape):
    # Linear model, logits, baseline 0, R = w * x: each step removes exactly the flipped relevance.
    model, lin = _linear(shape)
    x = torch.randn(3, *shape, dtype=torch.float64)
    t = torch.tensor([0, 2, 1])
    w = lin.weight[t].detach().reshape(3, *shape)
    r = w * x
    curve = M.pixel_flipping(model, x, r, t, features_per_step=5, softmax=False, batch_size=4)
    f = model(x).gather(1, t[:, None]).detach()
    sorted_r = r.flatten(1).sort(dim=1, descending=True).values
    steps = math.ceil(sorted_r.shape[1] / 5)
    expect = [f[:, 0] - sorted_r[:, : 5 * k].sum(dim=1) for k in range(steps + 1)]
    torch.testing.assert_close(curve, torch.stack(expect, dim=1))
    lerf = M.pixel_flipping(model, x, r, t, features_per_step=5, softmax=False, order="lerf")
    assert (M.aopc(curve) > M.aopc(lerf)).all()
    assert (M.area_between(curve, lerf) > 0).all()
    torch.testing.assert_close(M.area_between(curve, lerf), M.aopc(curve) - M.aopc(lerf))
    # Last step: everything replaced, identical for both orders.
    torch.testing.assert_close(curve[:, -1], lerf[:, -1])


def test_region_perturbation_3d_linear_matches_patch_loop():
    shape = (1, 5, 6, 4)
    model, lin = _linear(shape, classes=2)
    x = torch.randn(2, *shape, dtype=torch.float64)
    t = torch.tensor([1, 0])
    r = lin.weight[t].detach().reshape(2, *shape) * x
    curve = M.region_perturbation(model, x, r, t, patch_size=(2, 4, 3), steps=50, softmax=False)
    # Reference: pad centrally to (6, 8, 6) like Quantus, then loop over the 3 x 2 x 2 patches.
    rp = torch.nn.functional.pad(r[:, 0], (1, 1, 1, 1, 0, 1))
    sums = torch.stack(
        [rp[:, i : i + 2, j : j + 4, k : k + 3].sum(dim=(1, 2, 3)) for i in range(0, 6, 2)
         for j in range(0, 8, 4) for k in range(0, 6, 3)], dim=1,
    )  # fmt: skip
    assert curve.shape == (2, 12 + 1)  # steps capped at the number of patches
    drop = torch.cumsum(sums.sort(dim=1, descending=True).values, dim=1)
    f = model(x).gather(1, t[:, None]).detach()
    torch.testing.assert_close(f - curve[:, 1:], drop)
    torch.testing.assert_close(curve[:, 0], f[:, 0])


def _cnn(dims, channels=2, classes=3):
    torch.manual_seed(1)
    conv, bn, pool = (
        (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.AdaptiveAvgPool2d)
        if dims == 2
        else (torch.nn.Conv3d, torch.nn.BatchNorm3d, torch.nn.AdaptiveAvgPool3d)
    )
    return torch.nn.Sequential(
        conv(channels, 4, 3, padding=1), bn(4), torch.nn.ReLU(), pool(2), torch.nn.Flatten(),
        torch.nn.Linear(4 * 2**dims, classes),
    )  # fmt: skip


@pytest.mark.parametrize("dims", [2, 3])
def test_every_metric_runs_in_2d_and_3d_and_leaves_model_alone(dims):
    model = _cnn(dims).train()  # training mode on purpose: BatchNorm statistics must not move
    spatial = (10, 12) if dims == 2 else (8, 8, 9)
    x = torch.randn(3, 2, *spatial)
    r = torch.randn(3, 1, *spatial)  # a CAM-like map: one channel broadcasts
    mask = torch.zeros(3, 1, *spatial)
    mask[(slice(None), slice(None), *[slice(2, 7)] * dims)] = 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    rng = torch.get_rng_state()

    pf = M.pixel_flipping(model, x, r, None, features_per_step=17)
    assert pf.shape == (3, math.ceil(math.prod(spatial) / 17) + 1)
    assert ((pf >= 0) & (pf <= 1)).all()
    rp = M.region_perturbation(model, x, r, None, patch_size=4, steps=3, baseline="blur")
    assert rp.shape == (3, 4)
    torch.testing.assert_close(pf[:, 0], rp[:, 0])  # both start from the clean input's probability
    ins = M.insertion(model, x, r, None, features_per_step=97, baseline="noise")
    assert ins.shape[1] == math.ceil(math.prod(spatial) / 97) + 1
    assert M.auc(ins).shape == (3,)
    fc = M.faithfulness_correlation(model, x, r, None, runs=5, batch_size=8)
    assert fc.shape == (3,) and (fc.abs() <= 1 + 1e-6).all()
    for fn in (M.relevance_mass_accuracy, M.relevance_rank_accuracy, M.attribution_localisation):
        v = fn(r, mask)
        assert v.shape == (3,) and torch.isfinite(v).all()
    assert M.pointing_game(r, mask, tolerance=2).shape == (3,)
    for fn in (M.sparseness, M.entropy):
        assert fn(r).shape == (3,)

    def gradient(m, xx, t):
        xx = xx.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xx).gather(1, t[:, None]).sum(), xx)
        return g

    sims = M.randomization_check(model, x, None, gradient, similarity="ssim")
    assert list(sims) == ["5", "1", "0"] and all(v.shape == (3,) for v in sims.values())

    assert model.training and all(m.training for m in model.modules())
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # randomisation seeds a forked generator


def test_batch_size_and_target_none_agree():
    model = _cnn(2).eval()
    x, r = torch.randn(5, 2, 8, 8), torch.randn(5, 2, 8, 8)
    t = model(x).argmax(dim=1)
    a = M.pixel_flipping(model, x, r, None, features_per_step=16, batch_size=3)
    b = M.pixel_flipping(model, x, r, t, features_per_step=16, batch_size=1000)
    torch.testing.assert_close(a, b)
    c = M.region_perturbation(model, x, r, None, patch_size=3, steps=4, order="random", seed=3, batch_size=2)
    d = M.region_perturbation(model, x, r, t, patch_size=3, steps=4, order="random", seed=3)
    torch.testing.assert_close(c, d)


def test_insertion_runs_from_baseline_to_input():
    model = _cnn(2).eval()
    x, r = torch.randn(4, 2, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 1, 2, 0])
    curve = M.insertion(model, x, r, t, features_per_step=10, baseline=0.5, softmax=False)
    with torch.no_grad():
        f_x = model(x).gather(1, t[:, None])[:, 0]
        f_b = model(torch.full_like(x, 0.5)).gather(1, t[:, None])[:, 0]
    assert curve.shape == (4, 8)  # ceil(64 / 10) + 1
    torch.testing.assert_close(curve[:, 0], f_b)  # one shared forward for the common baseline
    torch.testing.assert_close(curve[:, -1], f_x)


def test_localisation_and_complexity_values():
    r = torch.zeros(2, 1, 4, 4)
    r[0, 0, 1, 1], r[0, 0, 3, 3] = 3.0, 1.0
    r[1] = 1.0
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2, :2] = 1
    torch.testing.assert_close(M.relevance_mass_accuracy(r, mask), torch.tensor([0.75, 0.25]))
    # Top 4: the 3, the 1 outside, then zeros / ones in flat order (stable ties).
    torch.testing.assert_close(M.relevance_rank_accuracy(r, mask), torch.tensor([0.75, 0.5]))
    assert M.pointing_game(r, mask).tolist() == [1.0, 1.0]
    far = torch.zeros(1, 1, 9, 9)
    far[0, 0, 8, 8] = 1.0
    m = torch.zeros(1, 1, 9, 9)
    m[0, 0, 5, 5] = 1
    assert M.pointing_game(far, m).item() == 0.0
    assert M.pointing_game(far, m, tolerance=4).item() == 0.0  # distance sqrt(18) > 4
    assert M.pointing_game(far, m, tolerance=5).item() == 1.0
    assert M.sparseness(r)[1].item() == pytest.approx(0.0, abs=1e-6)
    assert M.sparseness(r)[0].item() > 0.9
    assert M.entropy(r)[1].item() == pytest.approx(math.log(16))
    assert math.isnan(M.relevance_mass_accuracy(r, torch.zeros_like(mask))[0])


def test_conservation_error_and_bad_input():
    out = torch.tensor([[2.0, -4.0], [1.0, 0.5]])
    e = medlrp.Explanation(torch.full((2, 1, 2, 2), -0.5), out, torch.tensor([1, 0]), "lrp")
    torch.testing.assert_close(M.conservation_error(e), torch.tensor([2.0 / 4.0, 3.0]))
    model = _cnn(2).eval()
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(medlrp.InputError, match="does not fit"):
        M.pixel_flipping(model, x, torch.randn(2, 3, 8, 8))
    with pytest.raises(medlrp.InputError, match="unknown baseline"):
        M.pixel_flipping(model, x, torch.randn(2, 1, 8, 8), baseline="grey")
    with pytest.raises(medlrp.InputError, match="order"):
        M.region_perturbation(model, x, torch.randn(2, 1, 8, 8), order="best")
    with pytest.raises(medlrp.InputError, match="out of range"):
        M.pixel_flipping(model, x, torch.randn(2, 1, 8, 8), 7)
    with pytest.raises(medlrp.InputError, match="no layer"):
        M.randomization_check(torch.nn.Flatten(), x, 0, lambda m, a, t: a)


def test_faithfulness_correlation_is_one_for_exact_linear_relevance():
    model, lin = _linear((1, 6, 6), classes=2)
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    r = lin.weight[1].detach().reshape(1, 1, 6, 6) * x
    fc = M.faithfulness_correlation(model, x, r, 1, subset_size=5, runs=20, softmax=False)
    torch.testing.assert_close(fc, torch.ones(4, dtype=torch.float64))


def test_blur_baseline_keeps_constants_and_smooths():
    x = torch.full((1, 1, 6, 7, 5), 3.0)
    torch.testing.assert_close(M.gaussian_blur(x, 2.0), x)
    y = torch.zeros(1, 1, 15, 15)
    y[0, 0, 7, 7] = 1.0
    b = M.gaussian_blur(y, 1.5)
    assert b.sum().item() == pytest.approx(1.0, rel=1e-5) and b.max() < 0.2


def test_unit_order_is_a_stable_sort_for_every_dtype():
    from medlrp.metrics._curves import unit_order

    s = torch.tensor([[0.0, 2.0, -0.0, -1.0, 2.0, 0.0, -3.5, 1e-30]])
    ref_desc = sorted(range(8), key=lambda i: -float(s[0, i]))  # Python's sort is stable
    ref_asc = sorted(range(8), key=lambda i: float(s[0, i]))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = s.to(dtype)
        assert unit_order(t, "morf")[0].tolist() == ref_desc, dtype
        assert unit_order(t, "lerf")[0].tolist() == ref_asc, dtype
    perm = unit_order(torch.zeros(3, 50), "random", seed=1)
    assert all(sorted(p.tolist()) == list(range(50)) for p in perm)


def test_unit_order_ties_match_a_stable_sort_on_many_rows():
    """The packed-key sort keeps ties in position order on every row (many ties, both signs of zero)."""
    from medlrp.metrics._curves import stable_argsort, unit_order

    g = torch.Generator().manual_seed(0)
    s = torch.randint(-4, 5, (6, 999), generator=g).float()
    s[s == 0] = torch.tensor([0.0, -0.0]).repeat(999 * 6)[: int((s == 0).sum())]
    for dtype in (torch.float32, torch.float64):
        t = s.to(dtype)
        assert torch.equal(unit_order(t, "morf"), torch.sort(-t, dim=1, stable=True).indices), dtype
        assert torch.equal(unit_order(t, "lerf"), torch.sort(t, dim=1, stable=True).indices), dtype
    k = s.to(torch.int32)
    assert torch.equal(stable_argsort(k), torch.sort(k, dim=1, stable=True).indices)
