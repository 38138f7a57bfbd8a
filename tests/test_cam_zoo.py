"""CAMs and gradient methods on issue 15's networks: the classifier zoo and MONAI's segmentation networks.

Grad-CAM runs at its default layer on every classifier of ``test_lrp_zoo.ZOO`` (layer, group, instance,
RMS norm and EvoNorm networks, SE networks, Swin V2). On every MONAI segmentation network of
``test_seg_monai.NETWORKS``, 2D and 3D, the CAMs (at the bottleneck, their default) and the gradient
methods explain a region's logit sum, and the model is left as it was. Random weights, tiny inputs.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet

import medlrp
from test_lrp_engine import assert_unchanged, snapshot
from test_lrp_zoo import ZOO
from test_seg_monai import NETWORKS

# the bottleneck each network's CAMs take by default at 32x32 (medlrp.cam.layers.bottleneck)
BOTTLENECKS_2D = {
    "AttentionUnet": "model.1.submodule.1.submodule",
    "BasicUNet": "down_4",
    "BasicUNet-batch": "down_4",
    "DynUNet": "bottleneck",
    "SegResNet": "down_layers.3",
    "SegResNet-deconv": "down_layers.3",
    "SwinUNETR": "decoder5",  # its 1/32 level is a single position at 32 px: the 1/16 level
    "UNETR": "vit.blocks.11",
    "UNet": "model.1.submodule.1",
    "UNet-batch": "model.1.submodule.1",
}


@pytest.mark.parametrize("name", list(ZOO))
def test_gradcam_runs_on_every_classifier_of_the_zoo(name):
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, *shape)
    before, out = snapshot(model), model(x)
    e = medlrp.explain(model, x, target=1, method="gradcam")
    assert e.relevance.shape == (2, 1, *shape[1:]) and torch.isfinite(e.relevance).all()
    assert_unchanged(model, before, x, out)


def test_the_bottleneck_table_names_every_network():
    assert set(BOTTLENECKS_2D) == set(NETWORKS)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_cams_and_gradients_explain_a_region_on_every_monai_network(name, dims):
    size = 32 if (dims == 2 or name in ("SwinUNETR", "BasicUNet")) else 16
    spatial = (size,) * dims
    torch.manual_seed(0)
    model = NETWORKS[name](dims, spatial).eval()
    x = torch.randn(1, 1, *spatial)
    mask = torch.zeros(1, 1, *spatial, dtype=torch.bool)
    mask[(0, 0, *[slice(size // 4, 3 * size // 4)] * dims)] = True
    before, out = snapshot(model), model(x)
    for method in ("gradcam", "hirescam", "gradient", "input-x-gradient"):
        options = {"relu": False} if "cam" in method else {}  # a signed map: zero only if it is broken
        e = medlrp.explain(model, x, target=1, region=mask, method=method, **options)
        assert e.relevance.shape[2:] == spatial and torch.isfinite(e.relevance).all(), method
        assert e.relevance.abs().sum() > 0, method
        assert torch.equal(e.region, mask.float())
        if method == "gradcam" and dims == 2:
            assert e.options["layer"] == BOTTLENECKS_2D[name]
    assert_unchanged(model, before, x, out)


def test_dynunet_with_deep_supervision_in_train_mode_takes_the_cams_in_eval_mode():
    torch.manual_seed(0)
    model = DynUNet(
        2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], norm_name="batch",
        deep_supervision=True, deep_supr_num=1,
    )  # fmt: skip
    x = torch.randn(1, 1, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    state = {k: v.clone() for k, v in model.state_dict().items()}
    e = medlrp.explain(model, x, target=1, region=mask, method="gradcam")
    assert e.options["layer"] == "bottleneck" and e.output.shape == (1, 2, 32, 32)  # the main head
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
