"""medlrp equals zennit 0.5.1 (the reference implementation) on torchvision models, float64.

zennit needs its canonizers (BatchNorm merge, ResNet's residual sum as a module); medlrp needs none.
zennit's merge leaves each BatchNorm as ``x / sqrt(1 + eps)`` instead of the identity, which shifts its
forward values by about 5e-6 per BatchNorm; the models here use ``eps = 0`` (with positive running
variances) so that zennit's canonized model computes exactly the original function.
"""

import pytest
import torch
import torchvision
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution

import medlrp

COMPOSITES = ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"]
LOW, HIGH = -3.0, 3.0


def zennit_composite(name, canonizer, x):
    canonizers = [canonizer()]
    if name == "epsilon":
        layer_map = layer_map_base() + [(Convolution, Epsilon()), (torch.nn.Linear, Epsilon())]
        return LayerMapComposite(layer_map, canonizers=canonizers)
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(
            low=torch.full_like(x, LOW), high=torch.full_like(x, HIGH), canonizers=canonizers
        )
    if name == "epsilon-alpha2-beta1":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    raise AssertionError(name)


def make(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) * 0.4 - 0.2)
                m.eps = 0.0
    return model


@pytest.fixture(scope="module", params=["vgg16", "vgg16_bn", "resnet18", "resnet50"])
def case(request):
    arch = request.param
    model = make(arch)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    # explain the largest logit: random-weight logits can be near zero, the largest is not
    target = out.argmax(1)
    canonizer = ResNetCanonizer if arch.startswith("resnet") else VGGCanonizer
    return model, x, target, canonizer


@pytest.mark.parametrize("name", COMPOSITES)
def test_equals_zennit(case, name):
    model, x, target, canonizer = case
    options = {"low": LOW, "high": HIGH} if name == "epsilon-gamma-box" else {}
    ours = medlrp.LRP(model, name, **options).relevance(x, target)
    one_hot = torch.nn.functional.one_hot(target, 1000).to(x)
    with Gradient(model=model, composite=zennit_composite(name, canonizer, x)) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(), attr_output=lambda out: one_hot * out)
    for i in range(len(x)):
        err = (ours[i] - theirs[i]).norm() / theirs[i].norm()
        assert err < 1e-4, (name, i, float(err))
