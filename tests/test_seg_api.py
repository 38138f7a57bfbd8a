"""Segmentation targets: ``explain(model, x, target=c, region=r)`` for every method (float64, small nets).

The explained quantity is class ``c``'s logit sum over the region: LRP-epsilon conserves it, the
gradient methods equal Captum on that scalar, the CAMs equal pytorch-grad-cam with its
``SemanticSegmentationTarget``; defaults, mask forms and errors; the model is never changed.
"""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

import medlrp
from medlrp.region import resolve_goal
from test_lrp_engine import assert_unchanged, snapshot

DT = torch.float64
CAM_REFERENCES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "xgradcam": XGradCAM,
    "scorecam": ScoreCAM,
}


class TinySeg(nn.Module):
    """A two-level U-Net: conv, max-pool, conv + PReLU, upsampling, concatenated skip, 1x1 head."""

    def __init__(self, dims: int = 2, classes: int = 3, mode: str = "bilinear", bias: bool = True) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.enc = nn.Sequential(conv(1, 4, 3, padding=1, bias=bias), nn.ReLU())
        self.down = nn.Sequential(pool(2), conv(4, 6, 3, padding=1, bias=bias), nn.PReLU())
        self.up = nn.Upsample(scale_factor=2, mode=mode if dims == 2 else "trilinear")
        self.head = conv(10, classes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc(x)
        return self.head(torch.cat([a, self.up(self.down(a))], 1))


def make(dims: int = 2, classes: int = 3, bias: bool = True) -> TinySeg:
    torch.manual_seed(0)
    return TinySeg(dims, classes, bias=bias).double().eval()


def inputs(dims: int = 2, n: int = 2, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, *([size] * dims), dtype=DT)


def region_sum(model, x, target, mask):
    """``sum_p mask[i, p] out[i, t_i, p]``; ``x`` may stack copies of the batch (Captum's expansion)."""
    out = model(x)
    k = len(x) // len(mask)
    t = (
        torch.as_tensor(target)
        .repeat(k)
        .reshape(-1, *[1] * (out.dim() - 1))
        .expand(len(x), 1, *out.shape[2:])
    )
    return (out.gather(1, t) * mask.repeat(k, *[1] * (mask.dim() - 1))).flatten(1).sum(1)


def square_mask(x, lo=4, hi=12):
    m = torch.zeros(len(x), 1, *x.shape[2:], dtype=torch.bool)
    m[(slice(None), slice(None), *[slice(lo, hi)] * (x.dim() - 2))] = True
    return m


@pytest.mark.parametrize("dims", [2, 3])
def test_epsilon_conserves_the_region_logit_sum(dims):
    model, x = make(dims, bias=False), inputs(dims)
    mask = square_mask(x)
    mask[1] = False
    mask[1, :, :3] = True  # one region per sample
    target = [2, 0]
    e = medlrp.explain(model, x, target=target, region=mask, method="lrp", composite="epsilon")
    want = region_sum(model, x, target, mask)
    torch.testing.assert_close(
        e.relevance.flatten(1).sum(1), want.detach(), rtol=1e-4, atol=1e-8
    )  # the stabilisers
    assert e.target.tolist() == target and torch.equal(e.region, mask.to(DT))
    # LRP(...)(x, target, region=) and .relevance(..., region=) agree, and so does create_graph
    lrp = medlrp.LRP(model, "epsilon")
    torch.testing.assert_close(lrp(x, target, region=mask).relevance, e.relevance)
    dual = lrp.relevance(x, target, create_graph=True, region=mask)
    torch.testing.assert_close(dual.detach(), e.relevance)
    # a float mask weighs positions: twice the mask, twice the relevance
    torch.testing.assert_close(lrp.relevance(x, target, region=2.0 * mask), 2 * e.relevance)


def test_starts_are_weighted_by_the_region():
    model, x = make(bias=False), inputs()
    mask = square_mask(x)
    rel = medlrp.LRP(model, "epsilon", start="one-hot").relevance(x, 1, region=mask)
    torch.testing.assert_close(rel.flatten(1).sum(1), mask.flatten(1).sum(1).to(DT), rtol=1e-4, atol=1e-6)
    out = model(x).detach()
    rel = medlrp.LRP(model, "epsilon", start="all-classes").relevance(x, 1, region=mask)
    torch.testing.assert_close(rel.flatten(1).sum(1), (out * mask).flatten(1).sum(1), rtol=1e-4, atol=1e-6)


def test_defaults_predicted_region_and_target():
    x = inputs()
    two = make(classes=2)
    e = medlrp.explain(two, x)  # two classes: the foreground, where it wins the argmax
    out = two(x).detach()
    assert e.target.tolist() == [1, 1]
    assert torch.equal(e.region, (out.argmax(1, keepdim=True) == 1).to(DT))
    same = medlrp.explain(two, x, target=1, region="predicted")
    torch.testing.assert_close(same.relevance, e.relevance)
    one = make(classes=1)
    e1 = medlrp.explain(one, x, method="gradient")  # one channel (sigmoid): where the logit is > 0
    assert e1.target.tolist() == [0, 0] and torch.equal(e1.region, (one(x) > 0).to(DT))
    with pytest.raises(medlrp.InputError, match="3 classes: name the explained class"):
        medlrp.explain(make(classes=3), x)


def test_mask_forms_are_equivalent():
    model, x = make(), inputs()
    mask = square_mask(x)
    ref = medlrp.explain(model, x, target=2, region=mask).relevance
    forms = (mask[0, 0], mask[:, 0], mask[:1], mask.to(torch.float32), mask.to(torch.uint8), mask.numpy())
    for form in forms:
        torch.testing.assert_close(medlrp.explain(model, x, target=2, region=form).relevance, ref)


@pytest.mark.parametrize(
    "region,message",
    [
        (torch.zeros(2, 1, 16, 16, dtype=torch.bool), r"region of class\(es\) \[2, 2\] is empty in sample"),
        (torch.ones(2, 1, 8, 8), "does not match the output"),
        (torch.ones(3, 1, 16, 16), "does not match the output"),
        (-torch.ones(16, 16), "finite and >= 0"),
        (torch.full((16, 16), float("nan")), "finite and >= 0"),
        ("everywhere", "'predicted' or a mask"),
    ],
)
@pytest.mark.parametrize("method", ["lrp", "gradient", "gradcam", "occlusion"])
def test_bad_regions_are_input_errors_and_leave_the_model_untouched(region, message, method):
    model, x = make(), inputs()
    out, before = model(x), snapshot(model)
    with pytest.raises(medlrp.InputError, match=message):
        medlrp.explain(model, x, target=2, region=region, method=method)
    assert_unchanged(model, before, x, out)


def test_empty_predicted_region_is_an_input_error():
    model, x = make(classes=2), inputs()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([100.0, -100.0]))  # class 1 wins nowhere
    with pytest.raises(medlrp.InputError, match=r"predicted region of class\(es\) \[1, 1\] is empty"):
        medlrp.explain(model, x)


def test_region_on_a_classifier_is_an_input_error_and_classifiers_are_unchanged():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    clf = clf.double().eval()
    x = inputs()
    for method in ("lrp", "gradient", "gradcam", "smoothgrad"):
        with pytest.raises(medlrp.InputError, match="region= applies to segmentation models"):
            medlrp.explain(clf, x, target=1, region=torch.ones(16, 16), method=method)
        e = medlrp.explain(clf, x, target=1, method=method)
        assert e.region is None and e.target.tolist() == [1, 1]
    with pytest.raises(medlrp.InputError, match="region= applies"):
        medlrp.LRP(clf).relevance(x, 1, region="predicted")


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_methods_equal_autograd_and_captum_on_the_region_sum(dims):
    model, x = make(dims), inputs(dims, size=8)
    mask = square_mask(x, 2, 6)
    target = torch.tensor([2, 1])

    def score(v):
        return region_sum(model, v, target, mask)

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(xg).sum(), xg)
    g = medlrp.explain(model, x, target, region=mask, method="gradient")
    torch.testing.assert_close(g.relevance, grad)
    ixg = medlrp.explain(model, x, target, region=mask, method="input-x-gradient").relevance
    torch.testing.assert_close(ixg, x * grad)
    sg = medlrp.explain(model, x, target, region=mask, method="smoothgrad", noise=0.0, samples=2).relevance
    torch.testing.assert_close(sg, grad)

    def wrapped(v):
        return score(v)[:, None]

    ig = medlrp.explain(model, x, target, region=mask, method="integrated-gradients", steps=5, batch_size=4)
    ref = IntegratedGradients(wrapped).attribute(x, target=0, n_steps=5)
    torch.testing.assert_close(ig.relevance, ref, rtol=1e-6, atol=1e-8)
    occ = medlrp.explain(model, x, target, region=mask, method="occlusion", window=3, stride=2)
    window = (1, *[3] * dims)
    ref = Occlusion(wrapped).attribute(x, window, strides=(1, *[2] * dims), target=0)
    assert ref.abs().max() > 0
    torch.testing.assert_close(occ.relevance, ref.double(), rtol=1e-6, atol=1e-6)  # Captum's float32 division


@pytest.mark.parametrize("method", sorted(CAM_REFERENCES))
def test_cams_equal_pytorch_grad_cam_semantic_segmentation_target(method):
    """pytorch-grad-cam's raw map (``get_cam_image``) at the layer with ``SemanticSegmentationTarget``."""
    model, x = make(), inputs(size=12)
    mask = square_mask(x, 3, 9)
    mask[1, :, :2] = True
    target = [2, 0]
    cam = CAM_REFERENCES[method](model=model, target_layers=[model.down])
    try:
        targets = [SemanticSegmentationTarget(t, mask[i, 0].double().numpy()) for i, t in enumerate(target)]
        outputs = cam.activations_and_grads(x)
        if cam.uses_gradients:
            sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(x, model.down, targets, acts, grads, False)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    ref = torch.from_numpy(np.asarray(raw, dtype=np.float64))
    options = {"align_corners": True, "batch_size": 5} if method == "scorecam" else {}
    e = medlrp.explain(
        model, x, target, region=mask, method=method, layer="down", relu=False, upsample=False, **options
    )
    assert ref.abs().max() > 0
    tol = {"rtol": 1e-5, "atol": 1e-6} if method == "scorecam" else {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(e.relevance[:, 0], ref, **tol)  # scorecam: its float32 scores
    assert torch.equal(e.region, mask.to(DT))


@pytest.mark.parametrize("dims", [2, 3])
def test_every_method_and_composite_runs_with_a_region_and_leaves_the_model_untouched(dims):
    model, x = make(dims), inputs(dims, size=8)
    model.enc[0].weight.requires_grad_(False)
    out, before = model(x), snapshot(model)
    mask = square_mask(x, 2, 6)
    for name in medlrp.COMPOSITES.names():
        if name in ("attnlrp", "cp-lrp"):
            continue  # transformer composites: see test_seg_monai (UNETR, SwinUNETR)
        e = medlrp.explain(model, x, target=1, region=mask, composite=name)
        assert (
            e.relevance.shape == x.shape and torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
        )
        medlrp.LRP(model, name).relevance(x, 1, create_graph=True, region=mask).sum().backward()
    model.zero_grad(set_to_none=True)
    for method in medlrp.METHODS.names():
        if method == "lrp":
            continue
        options = {"samples": 2} if method == "smoothgrad" else {"steps": 3} if "integrated" in method else {}
        e = medlrp.explain(model, x, target=[1, 2], region=mask, method=method, **options)
        assert e.relevance.shape[0] == 2 and torch.isfinite(e.relevance).all(), method
        assert e.target.tolist() == [1, 2] and torch.equal(e.region, mask.to(DT))
    assert_unchanged(model, before, x, out)


def test_goal_score_is_the_region_logit_sum_of_stacked_copies():
    out = torch.randn(2, 3, 4, 4, dtype=DT)
    mask = torch.rand(2, 1, 4, 4, dtype=DT)
    goal = resolve_goal(out, [2, 0], mask)
    want = torch.stack([(out[0, 2] * mask[0, 0]).sum(), (out[1, 0] * mask[1, 0]).sum()])
    torch.testing.assert_close(goal.score(out), want)
    torch.testing.assert_close(goal.score(torch.cat([out, 2 * out])), torch.cat([want, 2 * want]))
    torch.testing.assert_close(goal.select(torch.tensor([1, 1])).score(out[[1, 1]]), want[[1, 1]])


def test_predicted_region_breaks_ties_like_argmax():
    torch.manual_seed(0)
    out = torch.randint(0, 3, (3, 4, 5, 6)).to(DT)  # many ties
    for c in range(4):
        out[:, c, 0, c] = 5.0  # every class wins somewhere in every sample
    for t in range(4):
        want = (out.argmax(1, keepdim=True) == t).to(DT)
        assert torch.equal(resolve_goal(out, t, "predicted").region, want)
    per_sample = resolve_goal(out, [3, 0, 2], "predicted").region
    assert torch.equal(
        per_sample, (out.argmax(1, keepdim=True) == torch.tensor([3, 0, 2])[:, None, None, None]).to(DT)
    )
    goal = resolve_goal(out[:, :1] - 1, None, "predicted")  # one channel: logit > 0
    assert goal.target.tolist() == [0, 0, 0] and torch.equal(goal.region, (out[:, :1] > 1).to(DT))
