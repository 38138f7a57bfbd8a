"""Conservation on tiny members of the families issue 15 names (float64, additive constants zeroed).

``epsilon`` (CNNs) and ``cp-lrp`` (transformers) relevance sums to the target logit within 1e-3 on
the :func:`~medlrp.metrics.conservation.conservation_copy` of each model: layer norm inside CNNs
(ConvNeXt, EfficientNet-LN, MambaOut), group norm, EvoNorm, instance norm (MONAI), RMS norm (timm ViT),
squeeze-excitation in 2D and 3D (MONAI SENet, also on 1x1 maps), cosine attention (Swin V2). The
whole zoo (67 models) is ``benchmarks/zoo_coverage.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from monai.networks.nets import Classifier, SENet
from monai.networks.nets.senet import SEResNetBottleneck
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

import medlrp
from medlrp.lrp import looks_like_transformer
from medlrp.metrics import conservation_error
from medlrp.metrics.conservation import conservation_copy


def _senet(dims: int) -> nn.Module:
    return SENet(
        spatial_dims=dims,
        in_channels=1,
        block=SEResNetBottleneck,
        layers=(1, 1, 1, 1),
        groups=1,
        reduction=16,
        inplanes=64,
        input_3x3=False,
        downsample_kernel_size=1,
        num_classes=3,
    )


def _swin_v2() -> nn.Module:
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=3,
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    )


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "torchvision_convnext": (
        lambda: ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3),
        (3, 32, 32),
    ),
    "timm_convnext": (lambda: timm.create_model("test_convnext", num_classes=3), (3, 32, 32)),
    "timm_efficientnet_ln": (lambda: timm.create_model("test_efficientnet_ln", num_classes=3), (3, 32, 32)),
    "timm_efficientnet_gn": (lambda: timm.create_model("test_efficientnet_gn", num_classes=3), (3, 32, 32)),
    "timm_efficientnet_evos": (
        lambda: timm.create_model("test_efficientnet_evos", num_classes=3),
        (3, 32, 32),
    ),
    "timm_mambaout": (lambda: timm.create_model("test_mambaout", num_classes=3), (3, 32, 32)),
    "timm_vit_rmsnorm": (lambda: timm.create_model("test_vit4", num_classes=3, img_size=32), (3, 32, 32)),
    "monai_classifier_3d": (
        lambda: Classifier((1, 16, 16, 16), 3, (4, 8), (2, 2), act="relu"),
        (1, 16, 16, 16),
    ),
    "monai_senet_2d": (lambda: _senet(2), (1, 32, 32)),
    "monai_senet_3d": (lambda: _senet(3), (1, 16, 16, 16)),
    "torchvision_swin_v2": (_swin_v2, (3, 32, 32)),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_conservative_composite_sums_to_the_logit(name: str) -> None:
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = conservation_copy(factory(), x)
    composite = "cp-lrp" if looks_like_transformer(model) else "epsilon"
    assert (composite == "cp-lrp") == (name in ("timm_vit_rmsnorm", "torchvision_swin_v2"))
    e = medlrp.LRP(model, composite)(x)
    assert e.relevance.abs().sum() > 0
    assert conservation_error(e).max() < 1e-3, conservation_error(e)


def test_swin_v2_attnlrp_and_exact_pass() -> None:
    """AttnLRP runs on cosine attention; the exact pass (create_graph) gives the fast pass's relevance."""
    torch.manual_seed(0)
    model = _swin_v2().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    lrp = medlrp.LRP(model, "attnlrp")
    fast = lrp.relevance(x, [0, 1])
    assert torch.isfinite(fast).all() and fast.abs().sum() > 0
    exact = lrp.relevance(x, [0, 1], create_graph=True)
    torch.testing.assert_close(exact.detach(), fast)
    (grad,) = torch.autograd.grad(exact.pow(2).sum(), model.features[1][0].attn.qkv.weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
