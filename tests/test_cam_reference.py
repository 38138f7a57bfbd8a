"""The CAMs equal pytorch-grad-cam 1.5.7 (same layer, same target), compared before its normalisation.

Mapping: pytorch-grad-cam's ``get_cam_image(acts, grads)`` is the raw channel sum at the layer's own
resolution, i.e. medlrp's ``relu=False, upsample=False``; its final output is ReLU, per-image min-max
scaling and a cv2 resize, i.e. medlrp's ``relu=True`` map upsampled and min-max scaled for display.
"""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import medlrp

REFERENCES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "xgradcam": XGradCAM,
}


def make_model(dims: int) -> nn.Module:
    conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
    torch.manual_seed(0)
    return (
        nn.Sequential(
            conv(3, 6, 3, padding=1),
            nn.ReLU(),
            conv(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            conv(8, 8, 3, padding=1),  # the CAM layer: signed activations exercise every formula
            nn.ReLU(),
            pool(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        .double()
        .eval()
    )


def reference_raw(cam_cls, model, layer, x, target, targets=None):
    """pytorch-grad-cam's raw map at the layer's resolution (``get_cam_image``), with its own hooks.

    ``targets``: pytorch-grad-cam target objects; default: ``ClassifierOutputTarget`` of ``target``.
    """
    cam = cam_cls(model=model, target_layers=[layer])
    try:
        targets = targets or [ClassifierOutputTarget(int(t)) for t in target]
        outputs = cam.activations_and_grads(x)
        if cam.uses_gradients:
            model.zero_grad()
            sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.asarray(raw, dtype=np.float64))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_gradient_cams_equal_pytorch_grad_cam(method, dims):
    model = make_model(dims)
    torch.manual_seed(1)
    x = torch.randn(3, 3, *([8] * dims), dtype=torch.float64)
    target = torch.tensor([0, 3, 1])
    ref = reference_raw(REFERENCES[method], model, model[4], x, target)
    e = medlrp.explain(model, x, target, method=method, layer="4", relu=False, upsample=False)
    assert e.relevance.shape == (3, 1, *([4] * dims))
    assert ref.abs().max() > 0
    torch.testing.assert_close(e.relevance[:, 0], ref, rtol=1e-9, atol=1e-12)
    # relu=True is pytorch-grad-cam's clamp before its scaling.
    e_relu = medlrp.explain(model, x, target, method=method, layer=model[4], relu=True, upsample=False)
    torch.testing.assert_close(e_relu.relevance[:, 0], ref.clamp_min(0), rtol=1e-9, atol=1e-12)


def test_gradcam_end_to_end_matches_after_display_scaling():
    """pytorch-grad-cam's final image = ReLU + upsample + per-image min-max (cv2 vs torch resize)."""
    model = make_model(2)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    target = [1, 2]
    with GradCAM(model=model, target_layers=[model[4]]) as cam:
        ref = torch.from_numpy(cam(x, [ClassifierOutputTarget(t) for t in target])).double()
    model.zero_grad(set_to_none=True)
    r = medlrp.explain(model, x, target, method="gradcam", layer="4").relevance[:, 0]
    lo = r.flatten(1).min(1).values[:, None, None]
    hi = r.flatten(1).max(1).values[:, None, None]
    scaled = (r - lo) / (hi - lo)
    # Scaling before vs after the resize differs by the resize's overshoot only: a loose tolerance.
    assert (scaled - ref).abs().max() < 0.05


def test_scorecam_equals_pytorch_grad_cam():
    """Score-CAM with pytorch-grad-cam's mask interpolation (``align_corners=True``); 2D (its only)."""
    model = make_model(2)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    target = torch.tensor([2, 0])
    ref = reference_raw(ScoreCAM, model, model[4], x, target)
    e = medlrp.explain(
        model,
        x,
        target,
        method="scorecam",
        layer="4",
        relu=False,
        upsample=False,
        align_corners=True,
        batch_size=5,
    )
    # pytorch-grad-cam keeps the scores in float32 before its softmax.
    torch.testing.assert_close(e.relevance[:, 0], ref, rtol=1e-5, atol=1e-6)
    default = medlrp.explain(model, x, target, method="scorecam", layer="4", relu=False, upsample=False)
    assert not torch.allclose(default.relevance[:, 0], ref, rtol=1e-5, atol=1e-6)  # the option matters


def test_scorecam_weights_are_softmax_of_masked_scores():
    """Score-CAM 3D from its definition: masks upsampled trilinearly, min-max per channel, softmax."""
    model = make_model(3)
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64)
    layer_out = {}
    handle = model[4].register_forward_hook(lambda m, i, o: layer_out.setdefault("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = layer_out["a"]
    up = torch.nn.functional.interpolate(acts.transpose(0, 1), size=(8, 8, 8), mode="trilinear")
    flat = up.flatten(1)
    masks = (up - flat.min(1).values.view(-1, 1, 1, 1, 1)) / (
        flat.max(1).values - flat.min(1).values + 1e-8
    ).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        scores = model(x * masks)[:, 3]
    expected = (torch.softmax(scores, 0).view(1, -1, 1, 1, 1) * acts).sum(1).clamp_min(0)
    e = medlrp.explain(model, x, 3, method="scorecam", layer="4", upsample=False, batch_size=3)
    torch.testing.assert_close(e.relevance[:, 0], expected, rtol=1e-9, atol=1e-12)
