"""Normalisation layers against the rule's equation in matrix form (float64), fast and exact passes.

The rule (AttnLRP / CP-LRP's layer norm, for every composite): with the normaliser held constant a
normalisation is the linear map ``y = diag(s) C x + b`` (``C`` the centring within each group, or the
identity without centring; ``s`` the affine weight times the held ``1 / std``), and relevance passes
by LRP-0 through it: ``R_x = x * (C^T diag(s) (R_y / y))``. Each layer sits between a linear head
(epsilon rule, written out below) and the input, so the reference is the explicit chain.
"""

from __future__ import annotations

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d

import medlrp

DT = torch.float64
EPS = 1e-6


class HandLayerNorm2d(nn.Module):
    """Channel-first layer norm written by hand (timm's ``_layer_norm_cf``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels))
        self.bias = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, u = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        x = (x - u) * torch.rsqrt(s + 1e-5)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class HandRmsNorm(nn.Module):
    """RMS norm written by hand (timm's ``rms_norm`` fallback: pow, mean, rsqrt, products)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return timm.layers.fast_norm.rms_norm(x, [x.shape[-1]], self.weight, 1e-5)


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def _affine(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# name -> (layer, one sample's shape, how elements are grouped, centred, normaliser)
#   grouping: "last" (over the last dim), "channels" (over dim 0 of a sample, per position),
#   "groups:G" (G groups of channels, per sample), normaliser: "std", "rms", "norm"
CASES = {
    "layer_norm_last": (lambda: _affine(nn.LayerNorm(6)), (4, 6), "last", True, "std"),
    "layer_norm_no_affine": (lambda: nn.LayerNorm(6, elementwise_affine=False), (4, 6), "last", True, "std"),
    "layer_norm2d_torchvision": (lambda: _affine(LayerNorm2d(5)), (5, 3, 3), "channels", True, "std"),
    "layer_norm2d_timm": (lambda: _affine(timm.layers.LayerNorm2d(5)), (5, 3, 3), "channels", True, "std"),
    "layer_norm_cf_by_hand": (lambda: _affine(HandLayerNorm2d(5)), (5, 3, 3), "channels", True, "std"),
    "group_norm_1d": (lambda: _affine(nn.GroupNorm(2, 6)), (6, 5), "groups:2", True, "std"),
    "group_norm_2d": (lambda: _affine(nn.GroupNorm(3, 6)), (6, 3, 3), "groups:3", True, "std"),
    "group_norm_3d_no_affine": (
        lambda: nn.GroupNorm(2, 4, affine=False),
        (4, 2, 3, 2),
        "groups:2",
        True,
        "std",
    ),
    "instance_norm_1d": (lambda: _affine(nn.InstanceNorm1d(3, affine=True)), (3, 7), "groups:3", True, "std"),
    "instance_norm_2d": (lambda: nn.InstanceNorm2d(3), (3, 4, 4), "groups:3", True, "std"),
    "instance_norm_3d": (
        lambda: _affine(nn.InstanceNorm3d(2, affine=True)),
        (2, 3, 3, 3),
        "groups:2",
        True,
        "std",
    ),
    "rms_norm": (lambda: _affine(nn.RMSNorm(6, eps=1e-5)), (4, 6), "last", False, "rms"),
    "rms_norm_by_hand": (lambda: _affine(HandRmsNorm(6)), (4, 6), "last", False, "rms"),
    "normalize": (Normalize, (5, 3, 3), "channels", False, "norm"),
}


def _group_ids(shape: tuple[int, ...], grouping: str) -> torch.Tensor:
    idx = torch.arange(torch.Size(shape).numel()).reshape(shape)
    if grouping == "last":
        return idx // shape[-1]
    if grouping == "channels":
        return idx % (idx[0].numel())
    groups = int(grouping.split(":")[1])
    return idx // (idx.numel() // groups)


def _weights(layer: nn.Module, shape: tuple[int, ...], grouping: str) -> torch.Tensor:
    w = getattr(layer, "weight", None)
    if w is None:
        return torch.ones(shape, dtype=DT)
    if grouping == "last":
        return w.detach().expand(shape)
    return w.detach().reshape(-1, *([1] * (len(shape) - 1))).expand(shape)


def held_matrix(layer, x, grouping, centred, normaliser):
    """``diag(s) C`` of one sample (flattened), the normaliser held constant, as the equations say."""
    flat = x.reshape(-1)
    groups = _group_ids(x.shape, grouping).reshape(-1)
    same = (groups[:, None] == groups[None, :]).to(DT)
    size = same.sum(1)
    mean = same @ flat / size
    if normaliser == "std":
        eps = layer.eps if hasattr(layer, "eps") else 1e-5
        scale = 1.0 / torch.sqrt(same @ (flat - mean) ** 2 / size + eps)
    elif normaliser == "rms":
        scale = 1.0 / torch.sqrt(same @ flat**2 / size + 1e-5)
    else:
        scale = 1.0 / torch.sqrt(same @ flat**2).clamp_min(1e-12)
    centre = torch.eye(len(flat), dtype=DT) - (same / size[:, None] if centred else 0.0)
    s = _weights(layer, x.shape, grouping).reshape(-1) * scale
    return s[:, None] * centre


def reference(layer, head, x, target, grouping, centred, normaliser):
    """Epsilon on the head, then the held normalisation's LRP-0: relevance of each sample."""
    out = []
    for xi, t in zip(x, target, strict=True):
        y = layer(xi[None]).reshape(-1)
        z = head.weight @ y
        grad_y = head.weight[t] * z[t] / (z[t] + EPS * (1.0 if z[t] >= 0 else -1.0))
        m = held_matrix(layer, xi, grouping, centred, normaliser)
        out.append(xi * (m.T @ grad_y).reshape(xi.shape))
    return torch.stack(out)


def _model(name: str) -> tuple[nn.Module, torch.Tensor, nn.Linear]:
    factory, shape, *_ = CASES[name]
    torch.manual_seed(0)
    layer = factory().double().eval()
    head = nn.Linear(torch.Size(shape).numel(), 3, bias=False).double()
    model = nn.Sequential(layer, nn.Flatten(), head).eval()
    x = torch.randn(2, *shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    return model, x, head


@pytest.mark.parametrize("name", list(CASES))
def test_rule_equals_its_matrix_form(name: str) -> None:
    model, x, head = _model(name)
    _, _, grouping, centred, normaliser = CASES[name]
    target = torch.tensor([0, 2])
    got = medlrp.LRP(model, "epsilon").relevance(x, target)
    want = reference(model[0], head, x, target, grouping, centred, normaliser)
    if name.endswith("by_hand"):
        # the centring and the mean split relevance proportionally (stabiliser 1e-6): equal up to it
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    else:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["layer_norm_last", "layer_norm2d_timm", "group_norm_2d", "instance_norm_3d"]
)
def test_transformer_composites_apply_the_same_rule(name: str) -> None:
    """The one definition serves CNN and transformer composites: same relevance under cp-lrp."""
    model, x, _ = _model(name)
    target = torch.tensor([1, 0])
    cnn = medlrp.LRP(model, "epsilon").relevance(x, target)
    composite = medlrp.lrp.resolve_composite(model, "cp-lrp")
    torch.testing.assert_close(medlrp.LRP(model, composite).relevance(x, target), cnn)


@pytest.mark.parametrize(
    "name", ["layer_norm2d_timm", "group_norm_1d", "instance_norm_3d", "rms_norm", "normalize"]
)
def test_exact_pass_gradcheck(name: str) -> None:
    """``create_graph=True``: relevance differentiable w.r.t. the layer's parameters and the input."""
    model, x, _ = _model(name)
    lrp = medlrp.LRP(model, "epsilon")
    target = torch.tensor([0, 2])
    torch.testing.assert_close(lrp.relevance(x, target, create_graph=True).detach(), lrp.relevance(x, target))
    params = list(model.parameters())

    def of_params(*ps: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(x, target, create_graph=True)

    assert torch.autograd.gradcheck(of_params, params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)

    def of_input(xx: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(xx, target, create_graph=True)

    assert torch.autograd.gradcheck(
        of_input, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


def test_instance_norm_with_running_statistics_is_an_affine_map() -> None:
    """Eval-mode InstanceNorm with running statistics: BatchNorm's map, merged into the convolution."""
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(3))
        norm.running_var.copy_(torch.rand(3) + 0.5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), norm, nn.Flatten(), nn.Linear(12, 2)).double().eval()
    twin = (
        nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2)).double().eval()
    )
    twin.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "num_batches" not in k}, strict=False
    )
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    torch.testing.assert_close(
        medlrp.LRP(model, "epsilon-plus").relevance(x, [0, 1]),
        medlrp.LRP(twin, "epsilon-plus").relevance(x, [0, 1]),
    )
    with pytest.raises(medlrp.InputError, match="call model.eval"):
        medlrp.LRP(model.train(), "epsilon")(x)


def test_evonorm_holds_its_group_std_and_gates_the_signal() -> None:
    """timm's EvoNorm2dS0: ``x * sigmoid(v x) / group_std(x) * w``: gate and std held constant."""
    torch.manual_seed(0)
    evo = _affine(timm.layers.EvoNorm2dS0(4, group_size=2)).double().eval()
    head = nn.Linear(4 * 9, 3, bias=False).double()
    model = nn.Sequential(evo, nn.Flatten(), head).eval()
    x = torch.randn(2, 4, 3, 3, dtype=DT)
    got = medlrp.LRP(model, "epsilon").relevance(x, [1, 1])
    for xi, r in zip(x, got, strict=True):
        v, w = evo.v.detach().reshape(-1, 1, 1), evo.weight.detach().reshape(-1, 1, 1)
        std = timm.layers.evo_norm.group_std(xi[None], evo.groups, evo.eps)[0]  # in float32, as timm
        s = (torch.sigmoid(v * xi) * w / std).reshape(-1)  # the held diagonal map
        y = evo(xi[None]).reshape(-1)
        z = head.weight @ y
        grad = head.weight[1] * z[1] / (z[1] + EPS * torch.sign(z[1]))
        grad = grad * y / (y + EPS * torch.sign(y))  # the affine bias: a sum split proportionally
        torch.testing.assert_close(r, xi * (s * grad).reshape(xi.shape), rtol=1e-9, atol=1e-12)


EVONORMS = ["EvoNorm2dB0", "EvoNorm2dS0", "EvoNorm2dS0a", "EvoNorm2dS1", "EvoNorm2dS1a"]


@pytest.mark.parametrize("name", [*EVONORMS, "EvoNorm2dS2"])
def test_evonorm_variants_conserve_or_are_named(name: str) -> None:
    """timm's EvoNorms: B0 and S0/S1 conserve; S2 (an in-place ``sqrt_`` of its group RMS) is refused
    with an error naming the module, its type and the operation."""
    torch.manual_seed(0)
    norm = (
        getattr(timm.layers, name)(8) if name.endswith("B0") else getattr(timm.layers, name)(8, group_size=4)
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    model = medlrp.metrics.conservation.conservation_copy(model, x)
    if name not in EVONORMS:
        with pytest.raises(medlrp.UnsupportedLayerError, match=rf"'1' \({name}\).*sqrt_"):
            medlrp.LRP(model, "epsilon")(x)
        return
    assert medlrp.metrics.conservation_error(medlrp.LRP(model, "epsilon")(x)).max() < 1e-3
