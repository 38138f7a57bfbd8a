"""Contract tests generated for every CAM and gradient method: the model is never changed (normal call,
bad target, exception mid-forward), 2D and 3D shapes, and batch independence (BatchNorm in train mode)."""

import pytest
import torch
from torch import nn

import medlrp
from medlrp.cam import CAMS

CAM_NAMES = [cls.name for cls in CAMS]
GRADIENT_NAMES = ["gradient", "input-x-gradient", "integrated-gradients", "smoothgrad", "occlusion"]
ALL = CAM_NAMES + GRADIENT_NAMES
# Small settings keep the generated tests fast.
FAST = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}, "occlusion": {"window": 4}}


class Boom(nn.Module):
    """Identity that raises on its ``fail_on``-th call (0: never)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_on = 0
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return x


def make_cnn(dims: int, classes: int = 3) -> nn.Module:
    conv, bn, drop = (
        (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d, nn.Dropout3d)
    )
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        conv(2, 4, 3, padding=1),
        bn(4),
        nn.ReLU(inplace=True),
        Boom(),
        conv(4, 6, 3, stride=2, padding=1),
        bn(6),
        nn.ReLU(inplace=True),
        drop(0.5),
        pool,
        nn.Flatten(),
        nn.Linear(6, classes),
    ).double()
    # Non-trivial running statistics, so eval and train mode really differ.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    model.train()
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "params": [id(p) for p in model.parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "forward": [m.forward for m in model.modules()],
        "classes": [type(m) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["params"] == before["params"]
    assert after["values"].keys() == before["values"].keys()
    for k, v in before["values"].items():
        assert torch.equal(after["values"][k], v), k
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["forward"] == before["forward"]
    assert after["classes"] == before["classes"]
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            assert len(hooks) == 0, (type(m).__name__, hooks)
    from torch.nn.modules import module as torch_module

    assert not torch_module._global_forward_hooks and not torch_module._global_backward_hooks


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("case", ["normal", "bad-target", "fails-first-forward", "fails-second-forward"])
def test_model_is_never_changed(method, case):
    model = make_cnn(2)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    before = snapshot(model)
    boom = model[3]
    if case == "normal":
        e = medlrp.explain(model, x, [0, 2], method=method, **FAST.get(method, {}))
        assert e.target.tolist() == [0, 2] and e.method == method
    elif case == "bad-target":
        with pytest.raises(medlrp.InputError, match="out of range"):
            medlrp.explain(model, x, 7, method=method, **FAST.get(method, {}))
    else:
        boom.fail_on = 1 if case == "fails-first-forward" else 2
        with pytest.raises(RuntimeError, match="boom"):
            medlrp.explain(model, x, method=method, **FAST.get(method, {}))
        boom.fail_on, boom.calls = 0, 0
    assert_unchanged(model, before)
    assert torch.is_grad_enabled()  # the caller's grad mode is back, also after an exception
    # The same forward as before (train mode: BatchNorm uses batch statistics, dropout off via eval
    # comparison below).
    model.eval()
    with torch.no_grad():
        ref = make_cnn(2).eval()(x)
        assert torch.allclose(model(x), ref)


@pytest.mark.parametrize("method", ALL)
def test_unknown_option_is_input_error(method):
    with pytest.raises(medlrp.InputError, match="unknown option"):
        medlrp.explain(make_cnn(2), torch.randn(1, 2, 8, 8, dtype=torch.float64), method=method, colour="red")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ALL)
def test_shapes_and_batch_independence(method, dims):
    """A sample's map is the same alone and in a batch (BatchNorm in train mode: explained in eval)."""
    model = make_cnn(dims)
    size = (8, 8) if dims == 2 else (6, 8, 6)
    torch.manual_seed(1)
    x = torch.randn(3, 2, *size, dtype=torch.float64)
    target = [2, 0, 1]
    opts = FAST.get(method, {})
    e = medlrp.explain(model, x, target, method=method, **opts)
    channels = 1 if method in CAM_NAMES else 2
    assert e.relevance.shape == (3, channels, *size)
    assert e.relevance.dtype == torch.float64
    assert e.target.tolist() == target
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    for i in range(3):
        alone = medlrp.explain(model, x[i : i + 1], target[i], method=method, **opts)
        torch.testing.assert_close(alone.relevance[0], e.relevance[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(alone.output[0], e.output[i], rtol=1e-9, atol=1e-12)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(e.output, model(x))


@pytest.mark.parametrize("method", ALL)
def test_target_none_is_argmax_and_options_are_json(method):
    import json

    model = make_cnn(2).eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    e = medlrp.explain(model, x, method=method, **FAST.get(method, {}))
    assert e.target.tolist() == model(x).argmax(1).tolist()
    json.dumps(e.options)


@pytest.mark.parametrize("method", ALL)
def test_works_under_callers_no_grad_and_keeps_it(method):
    model = make_cnn(2).eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    ref = medlrp.explain(model, x, [1, 0], method=method, **FAST.get(method, {}))
    with torch.no_grad():
        e = medlrp.explain(model, x, [1, 0], method=method, **FAST.get(method, {}))
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(e.relevance, ref.relevance)
