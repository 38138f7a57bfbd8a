"""Products on the relevance path against their equations (float64): gates in every form, gated units.

* a gate times a signal: the gate is a constant weight, ``R_x = R_y`` (signal-take-all);
* two signals of one size (a gated linear unit): the uniform rule, ``R_a = R_b = R_y / 2``;
* no operation ends in a raw exception: a failing rule is an ``UnsupportedLayerError`` naming the
  module, its type and the operation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer
from torch import nn

import medlrp
from medlrp.lrp import Composite, Epsilon

DT = torch.float64
EPS = 1e-6


def stab(z: torch.Tensor) -> torch.Tensor:
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class SE(nn.Module):
    """Squeeze-excitation written in the ways models write it."""

    def __init__(self, channels: int, form: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, 2), nn.Linear(2, channels)
        self.form = form

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))
        s = F.hardsigmoid(s) if self.form == "hardsigmoid" else torch.sigmoid(s)
        return s.view(*s.shape, 1, 1)  # a view of the gate (as MONAI's ChannelSELayer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(x)
        if self.form == "torch.mul":
            return torch.mul(s, x)
        if self.form == "mul_":
            return x.clone().mul_(s)
        if self.form == "mul_ in place":  # the model reads x, not the result
            x = x.clone()
            x.mul_(s)
            return x
        return x * s


def _head_gradient(head: nn.Linear, y: torch.Tensor, t: int) -> torch.Tensor:
    """Gradient at the head's input whose product with the input is the epsilon rule's relevance."""
    z = head.weight @ y
    return head.weight[t] * z[t] / stab(z[t])


FORMS = ["star", "torch.mul", "mul_", "mul_ in place", "hardsigmoid", "monai"]


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("form", FORMS)
def test_squeeze_excitation_gate_is_a_constant_weight(form: str, size: int) -> None:
    """``R_x = R_y`` through the gate, whatever form it takes, also on 1x1 maps (same element count)."""
    torch.manual_seed(0)
    se = ChannelSELayer(2, 4, r=2) if form == "monai" else SE(4, form)
    head = nn.Linear(4 * size * size, 3, bias=False)
    model = nn.Sequential(se, nn.Flatten(), head).double().eval()
    x = torch.randn(2, 4, size, size, dtype=DT)
    got = medlrp.LRP(model, "epsilon").relevance(x, [0, 2])
    for xi, r, t in zip(x, got, [0, 2], strict=True):
        with torch.no_grad():
            y = se(xi[None])[0]
        s = y / xi  # the gate's value (the product's factor)
        want = xi * s * _head_gradient(head, y.reshape(-1), t).reshape(xi.shape)
        torch.testing.assert_close(r, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("by_hand", "fused"),
    [
        (lambda x: x * torch.sigmoid(x), nn.SiLU()),
        (lambda x: x * F.hardsigmoid(x), nn.Hardswish()),
        (lambda x: torch.mul(x, x.sigmoid()), nn.SiLU()),
    ],
)
def test_activation_written_as_a_gate_equals_the_pass_rule(by_hand, fused) -> None:
    class ByHand(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return by_hand(x)

    torch.manual_seed(0)
    conv, head = nn.Conv2d(2, 3, 3), nn.Linear(12, 2)
    hand = nn.Sequential(conv, ByHand(), nn.Flatten(), head).double().eval()
    ref = nn.Sequential(conv, fused, nn.Flatten(), head).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    torch.testing.assert_close(
        medlrp.LRP(hand, "epsilon").relevance(x, [1, 0]), medlrp.LRP(ref, "epsilon").relevance(x, [1, 0])
    )


class GLU(nn.Module):
    """A gated linear unit (MambaOut's ``act(g) * x`` with the identity as act): two signals, one size."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 4, bias=False), nn.Linear(5, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(x)


def test_gated_unit_uniform_rule_equals_its_equation() -> None:
    torch.manual_seed(0)
    glu, head = GLU(), nn.Linear(4, 3, bias=False)
    model = nn.Sequential(glu, head).double().eval()
    x = torch.randn(2, 5, dtype=DT)
    got = medlrp.LRP(model, "epsilon").relevance(x, [2, 1])
    for xi, r, t in zip(x, got, [2, 1], strict=True):
        wa, wb = glu.a.weight.detach(), glu.b.weight.detach()
        za, zb = wa @ xi, wb @ xi
        y = za * zb
        r_y = y * _head_gradient(head, y, t)
        want = xi * (wa.T @ (0.5 * r_y / stab(za))) + xi * (wb.T @ (0.5 * r_y / stab(zb)))
        torch.testing.assert_close(r, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["mul_", "monai"])
def test_gates_and_gated_units_exact_pass_gradcheck(form: str) -> None:
    torch.manual_seed(0)
    se = ChannelSELayer(2, 4, r=2) if form == "monai" else SE(4, form)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), se, GLUConv(), nn.Flatten(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 2, 1, 1, dtype=DT)
    lrp = medlrp.LRP(model, "epsilon")
    target = torch.tensor([0, 1])
    torch.testing.assert_close(lrp.relevance(x, target, create_graph=True).detach(), lrp.relevance(x, target))

    def of_params(*ps: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(x, target, create_graph=True)

    params = list(model.parameters())
    assert torch.autograd.gradcheck(of_params, params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


class GLUConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.a(x)) * x


def test_a_failing_rule_is_an_unsupported_layer_error_naming_module_type_and_operation() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1) * 2.0

    def broken(engine, func, args, kwargs):  # an unknown operation whose rule fails
        raise IndexError("no such index")

    model = nn.Sequential(nn.Linear(3, 3), Odd()).double()
    composite = Composite(dense=Epsilon(), handlers={torch.cumsum: broken})
    pattern = r"module '1' \(Odd\).*'cumsum'.*IndexError: no such index"
    with pytest.raises(medlrp.UnsupportedLayerError, match=pattern):
        medlrp.LRP(model, composite)(torch.randn(2, 3, dtype=DT))

    class OddOperator(nn.Module):  # the same inside a Tensor operator (torch hides its TypeErrors)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x % 2.0

    def refused(engine, func, args, kwargs):
        raise engine.unsupported("this operation has no rule here")

    model = nn.Sequential(nn.Linear(3, 3), OddOperator()).double()
    composite = Composite(
        dense=Epsilon(), handlers=dict.fromkeys([torch.Tensor.__mod__, torch.Tensor.remainder], refused)
    )
    with pytest.raises(medlrp.UnsupportedLayerError, match=r"module '1' \(OddOperator\): this operation"):
        medlrp.LRP(model, composite)(torch.randn(2, 3, dtype=DT))


def test_the_models_own_error_stays_its_own() -> None:
    """A shape error the plain model raises too is not blamed on a rule."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Flatten(), nn.Linear(5, 2)).double()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        medlrp.LRP(model, "epsilon")(torch.randn(2, 3, dtype=DT))
    assert not isinstance(info.value, medlrp.UnsupportedLayerError)
