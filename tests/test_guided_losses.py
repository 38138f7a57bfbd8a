import pytest
import torch

from medlrp.errors import InputError
from medlrp.train.guided import logit_difference, resolve_start
from medlrp.train.guided_losses import (
    BackgroundRelevanceLoss,
    GuidanceLoss,
    ReferenceLoss,
    RelevanceMassLoss,
    RelevanceOutsideLoss,
    align_mask,
    masked_reference,
)


def _mask2d(n=2, size=8):
    m = torch.zeros(n, 1, size, size)
    m[:, :, 2:6, 2:6] = 1
    return m


def test_align_mask_fits_2d_3d_and_class_maps():
    r2 = torch.randn(2, 3, 8, 8)
    assert align_mask(torch.ones(2, 8, 8), r2).shape == (2, 1, 8, 8)
    assert align_mask(torch.ones(2, 1, 8, 8), r2).shape == (2, 1, 8, 8)
    r3 = torch.randn(2, 1, 4, 8, 8)
    assert align_mask(torch.ones(2, 1, 4, 8, 8), r3).shape == (2, 1, 4, 8, 8)
    per_class = torch.randn(2, 5, 1, 8, 8)
    assert align_mask(torch.ones(2, 1, 8, 8), per_class).shape == (2, 1, 1, 8, 8)
    with pytest.raises(InputError, match="does not fit"):
        align_mask(torch.ones(3, 1, 8, 8), r2)
    with pytest.raises(InputError, match="does not fit"):
        align_mask(torch.ones(2, 1, 7, 8), r2)


def test_outside_loss_is_the_share_outside_of_the_larger_of_logit_and_total():
    mask = _mask2d()
    r = torch.zeros(2, 1, 8, 8)
    r[:, :, 3, 3] = 5.0  # inside: free
    loss = RelevanceOutsideLoss()
    assert loss(r, mask).item() == 0.0
    r[0, 0, 0, 0] = -2.0  # outside, negative: counts by magnitude
    # case 0: 2 / max(|3|, 7); case 1: 0; mean over the batch
    assert loss(r, mask, torch.tensor([3.0, 1.0])).item() == pytest.approx(1 / 7)
    # a logit larger than the total absolute relevance is the unit (relevance absorbed elsewhere)
    assert loss(r, mask, torch.tensor([14.0, 1.0])).item() == pytest.approx(2 / 14 / 2)
    # a zero weight drops case 0, the division stays by the batch size
    assert loss(r, mask, torch.tensor([3.0, 1.0]), weight=torch.tensor([0.0, 1.0])).item() == 0.0
    assert RelevanceOutsideLoss(p=2)(r, mask).item() == pytest.approx(1 / 7, rel=1e-5)


def test_outside_loss_gives_no_gradient_towards_inflating_relevance_inside():
    """A ratio outside / total with the total in the graph rewards inflating (cancelling) relevance
    inside the mask; the loss's unit is detached, so its gradient inside the mask is exactly zero."""
    mask = _mask2d(1)
    r = torch.zeros(1, 1, 8, 8)
    r[0, 0, 0, 0] = 1.0
    r[0, 0, 3, 3] = 2.0
    r.requires_grad_(True)
    RelevanceOutsideLoss()(r, mask, torch.tensor([3.0])).backward()
    assert r.grad[0, 0, 3, 3] == 0 and r.grad[0, 0, 0, 0] > 0
    naive = r.detach().clone().requires_grad_(True)
    ((naive * (1 - mask)).abs().sum() / naive.abs().sum()).backward()
    assert naive.grad[0, 0, 3, 3] < 0  # the naive ratio drops as inside relevance grows


def test_mass_loss_wants_the_mask_to_explain_the_logit():
    mask = _mask2d(1)
    r = torch.zeros(1, 1, 8, 8, requires_grad=True)
    logit = torch.tensor([4.0])
    with torch.no_grad():
        r[0, 0, 3, 3] = 4.0
    assert RelevanceMassLoss()(r, mask, logit).item() == 0.0
    # relevance absorbed elsewhere (a bias, a saturated unit): nothing outside, still a loss
    with torch.no_grad():
        r[0, 0, 3, 3] = 1.0
    loss = RelevanceMassLoss()(r, mask, logit)
    assert loss.item() == pytest.approx((3.0 / 4.0) ** 2)
    loss.backward()
    assert r.grad[0, 0, 3, 3] < 0 and r.grad[0, 0, 0, 0] == 0  # pushes inside relevance up only
    with pytest.raises(InputError, match="logit"):
        RelevanceMassLoss()(r, mask, torch.ones(2))


def test_background_loss_all_classes_and_3d():
    mask = torch.zeros(2, 1, 4, 6, 6)
    mask[..., 1:3, 1:5, 1:5] = 1
    r = torch.zeros(2, 3, 1, 4, 6, 6)
    logits = torch.ones(2, 3)
    crit = BackgroundRelevanceLoss()
    assert crit(r, mask, logits).item() == 0.0
    r[1, 2, 0, 0, 0, 0] = 2.0  # one class of one case has background relevance
    # ratio 2 / (1 + 1) = 1 -> 1 / (1 + 1) = 0.5, averaged over 3 classes and 2 cases
    assert crit(r, mask, logits).item() == pytest.approx(0.5 / 3 / 2)
    with pytest.raises(InputError, match="logits"):
        crit(r, mask, torch.ones(2, 2))


def test_guidance_loss_is_weighted_sum_and_differentiable():
    torch.manual_seed(0)
    mask = _mask2d()
    r = torch.randn(2, 1, 8, 8, requires_grad=True)
    logit = torch.tensor([2.0, -1.0])
    total = GuidanceLoss(outside=2.0, mass=0.5)(r, mask, logit)
    expect = 2.0 * RelevanceOutsideLoss()(r, mask, logit) + 0.5 * RelevanceMassLoss()(r, mask, logit)
    assert total.item() == pytest.approx(expect.item())
    total.backward()
    assert torch.isfinite(r.grad).all() and r.grad.abs().sum() > 0


def test_logit_difference_start():
    out = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    t = torch.tensor([1, 1])
    assert logit_difference(out, t).sum(1).tolist() == [2.0, -3.0]
    out3 = torch.tensor([[1.0, 2.0, 4.0]])
    assert logit_difference(out3, torch.tensor([2])).sum().item() == pytest.approx(4.0 - 1.5)
    assert resolve_start("logit")(out, t).sum(1).tolist() == [3.0, -1.0]
    with pytest.raises(InputError, match="unknown relevance start"):
        resolve_start("nope")
    with pytest.raises(InputError, match="at least 2"):
        logit_difference(torch.ones(2, 1), torch.zeros(2, dtype=torch.long))


def test_background_loss_on_class_maps_of_a_model():
    from torch import nn

    from medlrp.train.guided import class_relevance, lrp_relevance

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 64, 3))
    x = torch.randn(2, 1, 8, 8)
    maps, logits = class_relevance(model, x, lrp_relevance("epsilon"))
    assert maps.shape == (2, 3, 1, 8, 8) and logits.shape == (2, 3)
    loss = BackgroundRelevanceLoss()(maps, _mask2d(), logits)
    loss.backward()
    assert 0 < loss.item() < 1 and model[0].weight.grad.abs().sum() > 0


def test_grow_mask_2d_and_3d():
    from medlrp.train.guided import GuidedLoss, grow_mask

    m2 = torch.zeros(1, 1, 7, 7)
    m2[0, 0, 3, 3] = 1
    assert grow_mask(m2, 1).sum() == 9 and grow_mask(m2, 0) is m2
    m3 = torch.zeros(1, 1, 5, 5, 5)
    m3[0, 0, 2, 2, 2] = 1
    assert grow_mask(m3, 1).sum() == 27 and grow_mask(m3, 1).shape == m3.shape
    with pytest.raises(InputError, match="mask_margin"):
        GuidedLoss(1.0, mask_margin=-1)


def test_masked_reference_keeps_the_inside_and_takes_the_partner_outside():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    mask = torch.zeros(2, 4, 4)
    mask[:, 1:3, 1:3] = 1
    ref = masked_reference(x, mask)
    inside = mask[:, None].bool().expand_as(x)
    assert torch.equal(ref[inside], x[inside])
    assert torch.equal(ref[~inside], x.roll(1, 0)[~inside])  # the previous case's outside
    other = torch.full_like(x, -7.0)
    assert torch.equal(masked_reference(x, mask, other)[~inside], other[~inside])
    with pytest.raises(InputError, match="partner"):
        masked_reference(x, mask, other[:1])


def test_reference_loss_is_the_relative_change_of_the_explained_logit():
    e = torch.tensor([2.0, -1.0, 0.1], requires_grad=True)
    e_ref = torch.tensor([1.0, -1.0, 0.3])
    loss = ReferenceLoss(tau=1.0)(e, e_ref)
    # units max(|e|, |e_ref|, tau): 2, 1, 1
    expected = ((1.0 / 2) ** 2 + 0.0 + 0.2**2) / 3
    assert loss.item() == pytest.approx(expected)
    (g,) = torch.autograd.grad(loss, e)
    assert g[1] == 0 and g[0] > 0 and g[2] < 0
    weighted = ReferenceLoss(tau=1.0)(e, e_ref, torch.tensor([0.0, 1.0, 1.0]))
    assert weighted.item() == pytest.approx(0.2**2 / 3)
    with pytest.raises(InputError):
        ReferenceLoss()(e, e_ref[:2])
