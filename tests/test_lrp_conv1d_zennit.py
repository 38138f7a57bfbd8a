"""CNN composites on 1D convolutions (signals: ECG leads x samples) equal zennit 0.5.1, float64."""

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm

import medlrp
from test_lrp_zennit import HIGH, LOW, zennit_composite


def net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(12, 8, 7, padding=3),
        nn.BatchNorm1d(8, eps=0.0),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(torch.rand(8, generator=g, dtype=torch.float64) * 0.4 - 0.2)
        bn.running_var.copy_(torch.rand(8, generator=g, dtype=torch.float64) + 0.5)
        bn.weight.copy_(torch.rand(8, generator=g, dtype=torch.float64) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name", ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"]
)
def test_conv1d_equals_zennit(name):
    model = net()
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = model(x).argmax(1)
    options = {"low": LOW, "high": HIGH} if name == "epsilon-gamma-box" else {}
    ours = medlrp.LRP(model, name, **options).relevance(x, target)
    one_hot = nn.functional.one_hot(target, 3).to(x)
    with Gradient(model=model, composite=zennit_composite(name, SequentialMergeBatchNorm, x)) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(), attr_output=lambda out: one_hot * out)
    assert theirs.abs().sum() > 0
    for i in range(len(x)):
        err = (ours[i] - theirs[i]).norm() / theirs[i].norm()
        assert err < 1e-8, (name, i, float(err))
