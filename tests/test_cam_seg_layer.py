"""The CAM layer of a segmentation network: the bottleneck by default, any layer when asked (float64).

A CAM at the output layer of a segmentation network only redraws the prediction (its positive part is
where the explained class's logit is positive); the default is therefore the bottleneck (Seg-Grad-CAM),
found by :func:`medlrp.cam.layers.bottleneck`. A layer given explicitly, the output layer included,
is used as it is: its map equals pytorch-grad-cam's with ``SemanticSegmentationTarget``.
"""

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

import medlrp
from medlrp.cam import default_layer
from medlrp.models.unet import unet2d, unet3d
from test_cam_reference import reference_raw
from test_lrp_engine import assert_unchanged, snapshot

DT = torch.float64


def unet(dims: int, **options: str) -> nn.Module:
    torch.manual_seed(0)
    return (unet2d if dims == 2 else unet3d)(1, 3, width=4, depth=2, **options).double().eval()


def inputs(dims: int, n: int = 2, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, *[size] * dims, dtype=DT)


def grad_cam_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, mask: torch.Tensor):
    """pytorch-grad-cam's raw Grad-CAM (no ReLU, no upsampling) of class ``target`` over ``mask``."""
    targets = [SemanticSegmentationTarget(target, m[0].double().numpy()) for m in mask]
    return reference_raw(GradCAM, model, layer, x, [target] * len(x), targets)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "options", [{}, {"up": "linear"}, {"down": "conv", "norm": "instance", "act": "prelu"}]
)
def test_the_default_layer_of_a_unet_is_its_bottleneck(dims, options):
    model, x = unet(dims, **options), inputs(dims, size=8 if dims == 3 else 16)
    assert default_layer(model, x) == "bottleneck"
    mask = torch.zeros(len(x), 1, *x.shape[2:], dtype=torch.bool)
    mask[..., 2:6, 2:6] = True
    before, out = snapshot(model), model(x)
    e = medlrp.explain(model, x, 1, region=mask, method="gradcam", relu=False, upsample=False)
    assert e.options["layer"] == "bottleneck"
    ref = grad_cam_reference(model, model.bottleneck, x, 1, mask)
    assert ref.abs().max() > 0
    torch.testing.assert_close(e.relevance[:, 0], ref, rtol=1e-9, atol=1e-12)
    assert_unchanged(model, before, x, out)


def test_the_output_layer_when_asked_for_stays_as_it_was_a_restatement_of_the_prediction():
    model, x = unet(2), inputs(2)
    winner = model(x).argmax(1, keepdim=True)
    c = next(k for k in range(3) if (winner == k).flatten(1).any(1).all())  # predicted in both samples
    mask = winner == c  # the predicted region of class c
    e = medlrp.explain(model, x, c, region="predicted", method="gradcam", layer="head", relu=False)
    assert e.options["layer"] == "head"
    ref = grad_cam_reference(model, model.head, x, c, mask)
    torch.testing.assert_close(e.relevance[:, 0], ref, rtol=1e-9, atol=1e-12)
    # the equation: the head's output is the logits L, the region sum's gradient is 1 on class c inside
    # the region, so the map is (region share) * L_c: positive exactly where class c's logit is
    logits = model(x).detach()
    share = mask.flatten(1).double().mean(1).reshape(-1, 1, 1)
    torch.testing.assert_close(e.relevance[:, 0], share * logits[:, c], rtol=1e-9, atol=1e-12)
    default = medlrp.explain(model, x, c, region="predicted", method="gradcam", relu=False)
    assert default.options["layer"] == "bottleneck"
    assert not torch.allclose(default.relevance, e.relevance)


class LogitsBeforeUpsampling(nn.Module):
    """A DeepLab-like network: a backbone, a head making logits at 1/4 size, a functional upsampling.

    The backbone's last stage (16 channels) and the head's layers (8, then 2 channels: the logits)
    share the coarsest resolution; one ReLU module runs at every level.
    """

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()  # shared: runs three times, at two resolutions
        self.stem = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.stage = nn.Conv2d(4, 16, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.stem(x))
        b = self.act(self.stage(a))
        return F.interpolate(self.head(self.act(b)), size=x.shape[2:], mode="bilinear")


def test_the_bottleneck_is_the_deepest_features_not_the_logits_before_an_upsampling():
    torch.manual_seed(0)
    model, x = LogitsBeforeUpsampling().double().eval(), inputs(2)
    assert default_layer(model, x) == "stage"
    e = medlrp.explain(model, x, 1, method="gradcam", upsample=False)
    assert e.options["layer"] == "stage" and e.relevance.shape == (2, 1, 4, 4)


def test_classifiers_keep_the_last_convolutional_block():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double().eval()  # fmt: skip
    assert default_layer(model, inputs(2)) == "4"


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "lrp", "gradient"])
def test_failures_on_a_segmentation_network_leave_it_untouched(method):
    model, x = unet(2), inputs(2, n=1)
    model.train()  # the flags come back as they were, BatchNorm statistics untouched
    out = model(x)
    before = snapshot(model)
    empty = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    with pytest.raises(medlrp.InputError, match="region of class.* is empty|call model.eval"):  # LRP
        medlrp.explain(model, x, 1, region=empty, method=method)
    if method in ("gradcam", "scorecam"):
        with pytest.raises(medlrp.InputError, match="close: decoders.0"):
            medlrp.explain(model, x, 1, region="predicted", method=method, layer="decoder.0")
    assert all(m.training for m in model.modules())
    assert_unchanged(model, before, x, out)  # a train-mode forward: the same batch statistics
