"""MONAI's segmentation networks in 2D and 3D: LRP conserves the region's logit sum (float64).

Tiny configurations, random weights, biases, normalisation shifts and position embeddings zeroed,
BatchNorm calibrated on the input (:func:`medlrp.metrics.conservation.conservation_copy`): ``epsilon``
(CNNs) and ``cp-lrp`` (UNETR, SwinUNETR) relevance sums to class 1's logit sum over the region within
1e-3. The networks run in eval mode; DynUNet's deep supervision (train mode)
is refused with a clear error.

The networks keep MONAI's default normalisation (InstanceNorm in most, GroupNorm in SegResNet), except
BatchNorm configurations (``-batch``: the merge of BatchNorm into the convolution before it) and SwinUNETR
(MONAI's InstanceNorm refuses its 1x1 bottom at 32 px).
"""

import pytest
import torch
from monai.networks.nets import UNETR, AttentionUnet, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet

import medlrp
from medlrp.metrics.conservation import conservation_copy
from test_lrp_engine import assert_unchanged, snapshot

DT = torch.float64


NETWORKS = {
    "UNet": lambda d, s: UNet(d, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    "UNet-batch": lambda d, s: UNet(
        d, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch"
    ),
    "BasicUNet": lambda d, s: BasicUNet(d, 1, 2, features=(4, 4, 8, 8, 16, 4)),
    "BasicUNet-batch": lambda d, s: BasicUNet(d, 1, 2, features=(4, 4, 8, 8, 16, 4), norm="batch"),
    "AttentionUnet": lambda d, s: AttentionUnet(d, 1, 2, channels=(4, 8, 16), strides=(2, 2)),
    "SegResNet": lambda d, s: SegResNet(d, init_filters=8, in_channels=1, out_channels=2),
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
    ),
    "UNETR": lambda d, s: UNETR(
        1, 2, s, feature_size=4, hidden_size=24, mlp_dim=24, num_heads=2, spatial_dims=d
    ),
    "SwinUNETR": lambda d, s: SwinUNETR(
        in_channels=1,
        out_channels=2,
        feature_size=12,
        spatial_dims=d,
        norm_name="batch",  # InstanceNorm refuses its 1x1 bottom at 32 px (MONAI's own check)
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=4,
        mlp_ratio=1.0,
    ),
}
TRANSFORMERS = {"UNETR", "SwinUNETR"}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_region_relevance_sums_to_the_region_logit_sum(name, dims):
    # SwinUNETR needs 2**5 per side, BasicUNet's InstanceNorm more than one voxel at its bottom
    size = 32 if (dims == 2 or name in ("SwinUNETR", "BasicUNet")) else 16
    n = 2  # two cases: BatchNorm is calibrated on the batch (conservation_copy)
    spatial = (size,) * dims
    torch.manual_seed(0)
    x = torch.randn(n, 1, *spatial, dtype=DT)
    model = conservation_copy(NETWORKS[name](dims, spatial), x)
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
    x = torch.randn(1, 1, 32, 32, dtype=DT)
    model = conservation_copy(NETWORKS["UNETR"](2, (32, 32)), x)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    e = medlrp.explain(model, x, target=1, region=mask)  # composite=None: attnlrp for a transformer
    assert e.options["composite"] == "attnlrp" and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
