"""Generated from the rule registry: every registered rule against its own definition, on every composite.

A rule is defined by its products and ``coefficients`` (``medlrp.lrp.rules``). The dual pass
(``create_graph=True``) routes exactly those coefficients, computed with their graph; the fast pass uses
the fused and token forms of ``medlrp.lrp.kernels`` where the rule has them (else the same coefficients,
computed in the backward pass, summed in place). A rule added to ``RULES`` is covered here without anyone
editing this file: on every linear layer type, with inputs >= 0 and of both signs, merged with a
BatchNorm of positive and of mixed scale, and in every registered composite (CNN and transformer).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import medlrp
from medlrp.lrp import RULES, Composite
from medlrp.lrp.kernels import KERNELS

sys.path.insert(0, str(Path(__file__).parent))
import vit_zoo  # noqa: E402

DT = torch.float64


def _rule(name: str) -> medlrp.lrp.LinearRule:
    return RULES.get(name)()


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=DT) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.5)
    return module.double().eval()


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), nn.BatchNorm1d(5), (6,)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), nn.BatchNorm1d(3), (2, 5)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), (2, 5, 5)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, bias=False), nn.BatchNorm3d(2), (2, 3, 3, 3)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), nn.BatchNorm2d(3), (2, 3, 3)),
}


def _fast_equals_definition(
    model: nn.Module, composite: Composite, x: torch.Tensor, target: list[int]
) -> None:
    lrp = medlrp.LRP(model, composite)
    fast = lrp.relevance(x, target)
    definition = lrp.relevance(x, target, create_graph=True).detach()
    assert torch.isfinite(fast).all()
    _close(fast, definition)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to rounding, relative to each sample's norm (alpha-beta cancels terms)."""
    err = (got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1).clamp(min=1e-300)
    assert (err < 1e-8).all(), err


@pytest.mark.parametrize("batchnorm", ["none", "positive", "mixed"])
@pytest.mark.parametrize("signs", ["both", "nonneg"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("name", RULES.names())
def test_rule_fast_forms_equal_its_definition(name: str, kind: str, signs: str, batchnorm: str) -> None:
    make, bn, shape = LAYERS[kind]
    layers = [make()] + ([] if batchnorm == "none" else [bn])
    model = _seeded(nn.Sequential(*layers, nn.Flatten()))
    if batchnorm == "mixed":
        with torch.no_grad():
            model[1].weight[0] = -model[1].weight[0]
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(1), dtype=DT)
    if signs == "nonneg":
        x = x.clamp(min=0)
    _fast_equals_definition(model, Composite(name_map={"0": _rule(name)}), x, [0, 1, 2])


class _Net(nn.Module):
    """Convolutions with BatchNorm (one of mixed scale), in-place ReLUs, a residual sum and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.b1(self.c1(x)), inplace=True)
        h = torch.relu_(self.b2(self.c2(h)) + h)
        h = self.c3(h - 0.5) + h  # inputs of both signs, read by a sum
        return self.fc(h.mean((2, 3)))


def _on_every_layer(composite: Composite, rule: medlrp.lrp.LinearRule) -> Composite:
    """``composite`` with ``rule`` on every layer it may take (reference rules: the first layer)."""
    if rule.needs_reference:
        return dataclasses.replace(composite, first=rule, first_types=(nn.Conv2d, nn.Conv3d, nn.Linear))
    return dataclasses.replace(composite, dense=rule, conv=rule)


@pytest.mark.parametrize("composite", medlrp.COMPOSITES.names())
@pytest.mark.parametrize("name", RULES.names())
def test_rule_on_every_composite(name: str, composite: str) -> None:
    base = medlrp.COMPOSITES.get(composite)()
    if base.kind == "transformer":
        model, x = vit_zoo.make("tiny2d")
        option = "first" if _rule(name).needs_reference else "linear"
        comp = medlrp.COMPOSITES.get(composite)(**{option: name})
        target = [0, 1]
    else:
        model = _seeded(_Net())
        with torch.no_grad():
            model.b2.weight[1] = -0.5  # a negative BatchNorm scale
        x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(2), dtype=DT)
        comp = _on_every_layer(base, _rule(name))
        target = [0, 1, 2]
    _fast_equals_definition(model, comp, x, target)
    # samples stay independent: each alone gives its row of the batch
    lrp = medlrp.LRP(model, comp)
    batch = lrp.relevance(x, target)
    for i in range(len(x)):
        _close(lrp.relevance(x[i : i + 1], target[i]), batch[i : i + 1])


def test_every_kernel_belongs_to_a_registered_rule() -> None:
    assert set(KERNELS) <= {RULES.get(n) for n in RULES.names()}
