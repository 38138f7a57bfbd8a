"""medlrp.metrics against Quantus 0.6.0 on the same inputs and settings (the mapping is in each docstring).

Quantus takes seconds to import and warns a lot: one module, few calls.
"""

import warnings

import numpy as np
import pytest
import torch

from medlrp import metrics as M

quantus = pytest.importorskip("quantus")
warnings.filterwarnings("ignore")


def _model():
    torch.manual_seed(0)
    layers = [
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    ]
    return torch.nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 20, 18, generator=g)
    a = torch.randn(5, 2, 20, 18, generator=g)
    y = np.array([0, 1, 2, 1, 0])
    mask = (torch.rand(5, 1, 20, 18, generator=g) > 0.7).float()
    mask[3] = 0  # an empty mask: NaN in both
    return _model(), x, a, y, mask


def _q(metric, model, x, y, a, **kw):
    out = metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=a.numpy(), device="cpu", **kw)
    return np.asarray(out)


@pytest.mark.parametrize("baseline,softmax", [(0.0, True), ("black", False)])
def test_pixel_flipping_equals_quantus(case, baseline, softmax):
    model, x, a, y, _ = case
    q = quantus.PixelFlipping(
        features_in_step=45, perturb_baseline=baseline, normalise=False, abs=False, disable_warnings=True
    )
    ours = M.pixel_flipping(
        model, x, a, torch.tensor(y), features_per_step=45, baseline=baseline, softmax=softmax, batch_size=7
    )
    assert ours.shape == (5, 720 // 45 + 1)
    np.testing.assert_allclose(ours[:, 1:].numpy(), _q(q, model, x, y, a, softmax=softmax), atol=2e-6)


def test_region_perturbation_equals_quantus(case):
    # 20 x 18 is not a multiple of 8: both pad centrally; "black" is each sample's minimum in both.
    model, x, a, y, _ = case
    q = quantus.RegionPerturbation(
        patch_size=8, regions_evaluation=5, perturb_baseline="black", normalise=False, abs=False,
        disable_warnings=True,
    )  # fmt: skip
    ours = M.region_perturbation(model, x, a, torch.tensor(y), patch_size=8, steps=5, baseline="black")
    np.testing.assert_allclose((ours[:, :1] - ours[:, 1:]).numpy(), _q(q, model, x, y, a), atol=2e-6)


def test_localisation_equals_quantus(case):
    # Quantus takes single-channel masks and maps here.
    model, x, a, y, mask = case
    a = a[:, :1]
    pairs = [
        (quantus.RelevanceMassAccuracy, M.relevance_mass_accuracy),
        (quantus.RelevanceRankAccuracy, M.relevance_rank_accuracy),
        (quantus.PointingGame, M.pointing_game),
    ]
    for cls, fn in pairs:
        q = _q(cls(normalise=False, abs=False, disable_warnings=True), model, x, y, a, s_batch=mask.numpy())
        ours = fn(a, mask).numpy()
        assert np.isnan(ours[3])  # empty mask
        # Quantus's pointing game writes NaN into a bool array (= True) for an empty mask: compare the rest.
        keep = [0, 1, 2, 4]
        np.testing.assert_allclose(ours[keep], q.astype(float)[keep], rtol=1e-5, err_msg=cls.__name__)


def test_sparseness_equals_quantus(case):
    model, x, a, y, _ = case
    q = quantus.Sparseness(
        abs=True, normalise=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)}, disable_warnings=True
    )
    np.testing.assert_allclose(M.sparseness(a).numpy(), _q(q, model, x, y, a), rtol=1e-5)


def _input_x_gradient(model, inputs, targets, **kwargs):
    xx = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
    out = model(xx).gather(1, torch.as_tensor(np.asarray(targets)).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, xx)
    return (g * xx).detach().numpy()


def test_randomisation_equals_quantus_mprt(case):
    model, x, _, y, _ = case
    before = [p.detach().clone() for p in model.parameters()]
    q = quantus.MPRT(abs=True, normalise=False, layer_order="top_down", seed=7, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y, explain_func=_input_x_gradient, device="cpu"
    )

    def explain(m, xx, t):
        return torch.as_tensor(_input_x_gradient(m, xx, t))

    ours = M.randomization_check(model, x, torch.tensor(y), explain, similarity="spearman", seed=7)
    assert list(ours) == ["6", "2", "0"] == [k for k in q if k != "original"]
    for layer, sim in ours.items():
        np.testing.assert_allclose(sim.numpy(), q[layer], atol=1e-10, err_msg=layer)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_similarities_equal_scipy_skimage_and_quantus():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 16, 12, generator=g, dtype=torch.float64)
    b = a + torch.randn(3, 16, 12, generator=g, dtype=torch.float64)
    a[0, :4] = 0.0  # ties: mean ranks as scipy
    b[1, :, :3] = 1.0
    for i in range(3):
        ref = spearmanr(a[i].flatten(), b[i].flatten())[0]
        assert M.spearman(a, b)[i].item() == pytest.approx(ref, abs=1e-12)
        rng = float(torch.cat([a[i], b[i]]).max() - torch.cat([a[i], b[i]]).min())
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=rng)
        assert M.ssim(a, b)[i].item() == pytest.approx(ref, abs=1e-12)
    flat_q = quantus.similarity_func.ssim(a.flatten(1).numpy(), b.flatten(1).numpy(), batched=True)
    np.testing.assert_allclose(M.ssim(a.flatten(1), b.flatten(1)).numpy(), flat_q, atol=1e-12)
