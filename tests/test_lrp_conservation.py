"""Conservation: with every bias and BatchNorm shift set to zero (on a copy), ``epsilon`` relevance sums
to the explained logit. Coverage comes from the models' graphs: residual sums, in-place adds,
concatenations (DenseNet), squeeze-excitation gates, SiLU / Hardswish / ReLU6, pre-activation BatchNorm.
"""

import copy

import pytest
import torch
import torchvision
from monai.networks.nets import DenseNet121 as MonaiDenseNet121
from torch import nn

import medlrp


def without_shifts(model, x):
    """A float64 eval copy with biases, BatchNorm means and shifts zeroed.

    The BatchNorm variances are calibrated on ``x`` (one train-mode pass with momentum 1) so that the
    activations of a deep random network neither vanish nor explode; the scales are random.
    """
    model = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
        model.train()(x)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
    return model.eval()


def small_2d():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.BatchNorm2d(4),
        nn.Hardswish(),
        nn.ConvTranspose2d(4, 4, 2, stride=2),
        nn.GELU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(),
        nn.Linear(256, 3),
    )


def small_3d():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(4, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.SiLU(),
        nn.AdaptiveAvgPool3d(2),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


MODELS = {
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(num_classes=10), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (3, 32, 32)),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), (3, 32, 32)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), (3, 32, 32)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), (3, 32, 32)),
    "monai_densenet121_3d": (
        lambda: MonaiDenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
        (1, 32, 32, 32),
    ),
    "small_2d": (small_2d, (1, 16, 16)),
    "small_3d": (small_3d, (1, 8, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_epsilon_conserves_the_target_logit(name):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = without_shifts(factory(), x)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    rel = medlrp.LRP(model, "epsilon").relevance(x, target)
    total = rel.sum(tuple(range(1, x.dim())))
    want = logits.gather(1, target[:, None])[:, 0]
    assert torch.allclose(total, want, rtol=1e-3, atol=1e-6 * want.abs().max()), (total, want)
