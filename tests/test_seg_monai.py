"""MONAI's segmentation networks in 2D and 3D: LRP conserves the region's logit sum (float64).

Tiny configurations, random weights, biases and normalisation shifts zeroed, BatchNorm variances
random: ``epsilon`` (CNNs) and ``cp-lrp`` (UNETR, SwinUNETR) relevance sums to class 1's logit sum
over the region within 1e-3. The networks run in eval mode; DynUNet's deep supervision (train mode)
is refused with a clear error.

MONAI's default normalisation is InstanceNorm in most of them; until its rule lands, these configurations
use BatchNorm (``norm="batch"``), and AttentionUnet (whose merge convolutions always use
InstanceNorm) has those layers replaced by BatchNorm in the test model.
"""

import pytest
import torch
from monai.networks.nets import UNETR, AttentionUnet, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

import medlrp
from test_lrp_engine import assert_unchanged, snapshot

DT = torch.float64


def _instance_to_batch(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, (nn.InstanceNorm2d, nn.InstanceNorm3d)):
            bn = nn.BatchNorm2d if isinstance(child, nn.InstanceNorm2d) else nn.BatchNorm3d
            setattr(model, name, bn(child.num_features))
        else:
            _instance_to_batch(child)
    return model


NETWORKS = {
    "UNet": lambda d, s: UNet(d, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch"),
    "BasicUNet": lambda d, s: BasicUNet(d, 1, 2, features=(4, 4, 8, 8, 16, 4), norm="batch"),
    "AttentionUnet": lambda d, s: _instance_to_batch(
        AttentionUnet(d, 1, 2, channels=(4, 8, 16), strides=(2, 2))
    ),
    "SegResNet": lambda d, s: SegResNet(d, init_filters=4, in_channels=1, out_channels=2, norm="batch"),
    "SegResNet-deconv": lambda d, s: SegResNet(
        d, init_filters=4, in_channels=1, out_channels=2, norm="batch", upsample_mode="deconv"
    ),
    "DynUNet": lambda d, s: DynUNet(
        d,
        1,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        filters=[4, 8, 16],
        norm_name="batch",
    ),
    "UNETR": lambda d, s: UNETR(
        1, 2, s, feature_size=4, hidden_size=24, mlp_dim=24, num_heads=2, spatial_dims=d, norm_name="batch"
    ),
    "SwinUNETR": lambda d, s: SwinUNETR(
        in_channels=1,
        out_channels=2,
        feature_size=12,
        spatial_dims=d,
        norm_name="batch",
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=4,
        mlp_ratio=1.0,
    ),
}
TRANSFORMERS = {"UNETR", "SwinUNETR"}


def prepare(model: nn.Module) -> nn.Module:
    """float64, eval, biases and normalisation shifts zero, BatchNorm variances random in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(0)
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=DT) + 0.5)
                m.running_mean.zero_()
    return model


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_region_relevance_sums_to_the_region_logit_sum(name, dims):
    size = 32 if (dims == 2 or name == "SwinUNETR") else 16  # SwinUNETR needs 2**5 per side
    n = 1 if size**dims > 20000 else 2  # one 32^3 volume: the test stays small on one core
    spatial = (size,) * dims
    torch.manual_seed(0)
    model = prepare(NETWORKS[name](dims, spatial))
    x = torch.randn(n, 1, *spatial, dtype=DT)
    composite = "cp-lrp" if name in TRANSFORMERS else "epsilon"
    mask = torch.zeros(n, 1, *spatial, dtype=torch.bool)
    mask[(0, 0, *[slice(size // 4, 3 * size // 4)] * dims)] = True
    mask[-1, 0, : size // 2] = True
    out, before = model(x), snapshot(model)
    e = medlrp.explain(model, x, target=1, region=mask, composite=composite)
    want = (out[:, 1:2] * mask).flatten(1).sum(1).detach()
    got = e.relevance.flatten(1).sum(1)
    assert e.relevance.shape == x.shape
    assert ((got - want).abs() <= 1e-3 * want.abs().clamp_min(1)).all(), (got, want)
    predicted = medlrp.LRP(model, composite)(x, 1)  # the default region: where class 1 wins
    want = (out[:, 1:2] * (out.argmax(1, keepdim=True) == 1)).flatten(1).sum(1).detach()
    got = predicted.relevance.flatten(1).sum(1)
    assert ((got - want).abs() <= 1e-3 * want.abs().clamp_min(1)).all(), (got, want)
    assert_unchanged(model, before, x, out)


def test_dynunet_deep_supervision_explains_the_main_head_in_eval_mode():
    model = DynUNet(
        2,
        1,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        norm_name="batch",
        deep_supervision=True,
        deep_supr_num=1,
    ).double()
    x = torch.randn(1, 1, 32, 32, dtype=DT)
    with pytest.raises(medlrp.InputError, match="DynUNet returns its deep-supervision heads stacked"):
        medlrp.explain(model, x, target=1, composite="epsilon")
    assert model.training  # left as it was
    model.eval()
    e = medlrp.explain(model, x, target=1, composite="epsilon")
    assert e.region.shape == (1, 1, 32, 32) and e.output.shape == (1, 2, 32, 32)


def test_unetr_runs_under_attnlrp_with_a_region():
    torch.manual_seed(0)
    model = prepare(NETWORKS["UNETR"](2, (32, 32)))
    x = torch.randn(1, 1, 32, 32, dtype=DT)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    e = medlrp.explain(model, x, target=1, region=mask)  # composite=None: attnlrp for a transformer
    assert e.options["composite"] == "attnlrp" and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
