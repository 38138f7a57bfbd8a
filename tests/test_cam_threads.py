"""Every method called from several threads on one shared model: no error, maps equal to a sequential run.

Hooks live on the shared modules, so each CAM's hooks must act only on its own thread's forward pass;
the eval-mode guard must restore the model's flags only when the last overlapping call ends. Also: a
module run several times in one forward pass (MONAI's EfficientNetBN calls one ``_swish`` many times)
works with every CAM, and the model is left untouched, also after failing calls in other threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import medlrp
import vit_zoo
from medlrp.registry import METHODS

CALLS = 20
# Cheap settings for the methods that run many forward passes (the thread-safety is what is tested).
CHEAP = {
    "integrated-gradients": {"steps": 4},
    "smoothgrad": {"samples": 3},
    "occlusion": {"window": 8},
    "scorecam": {"batch_size": 16},
}


class SharedAct(nn.Module):
    """A small residual CNN with BatchNorm whose one ReLU module runs three times per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.layer = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8))
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn1(self.conv1(x)))
        a = self.act(self.bn2(self.conv2(a)) + a)
        return self.head(self.act(self.layer(a)).mean((2, 3)))


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = SharedAct()
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(2, 1, 16, 16)


def _options(method: str, vit: bool) -> dict:
    options = dict(CHEAP.get(method, {}))
    if method == "lrp":
        options["composite"] = "cp-lrp" if vit else "epsilon-plus-flat"
    return options


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
        "grad": [p.requires_grad for p in model.parameters()],
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["training"] == before["training"] and after["hooks"] == before["hooks"] == 0
    assert after["grad"] == before["grad"]
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    assert all(p.grad is None for p in model.parameters())


def _hammer(model: nn.Module, x: torch.Tensor, method: str, options: dict, threads: int) -> None:
    """``threads`` threads, ``CALLS`` calls each (targets alternate): every map equals the sequential one."""
    expected = {t: medlrp.explain(model, x, target=t, method=method, **options).relevance for t in (0, 1)}
    barrier = threading.Barrier(threads)

    def work(k: int) -> list[tuple[int, torch.Tensor]]:
        barrier.wait()  # start together: the calls overlap
        return [
            ((k + i) % 2, medlrp.explain(model, x, target=(k + i) % 2, method=method, **options).relevance)
            for i in range(CALLS)
        ]

    with ThreadPoolExecutor(threads) as pool:
        results = [r for chunk in pool.map(work, range(threads)) for r in chunk]
    assert len(results) == threads * CALLS
    for target, relevance in results:
        torch.testing.assert_close(relevance, expected[target], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("method", list(METHODS.names()))
def test_every_method_on_a_shared_cnn_in_threads(method, threads):
    torch.set_num_threads(1)
    model, x = _cnn()
    before = _state(model)
    _hammer(model, x, method, _options(method, vit=False), threads)
    _assert_untouched(model, before)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "scorecam", "lrp", "gradient"])
def test_methods_on_a_shared_vit_in_threads(method):
    torch.set_num_threads(1)
    model, x = vit_zoo.tiny2d()
    model.eval()
    before = _state(model)
    _hammer(model, x[:1], method, _options(method, vit=True), threads=4)
    _assert_untouched(model, before)


def test_train_mode_is_restored_after_overlapping_calls_and_failures():
    """Threads overlapping on a model in train mode: eval for the calls, train mode back after the last."""
    torch.set_num_threads(1)
    model, x = _cnn()
    model.train()
    before = _state(model)
    barrier = threading.Barrier(4)

    def work(k: int) -> int:
        barrier.wait()
        failures = 0
        for i in range(10):
            try:
                # every third call fails: before its hooks exist (no such layer) or after (no such class)
                bad = (k + i) % 3 == 0
                layer = "nothing" if bad and k % 2 else "layer"
                medlrp.explain(model, x, target=9 if bad else 0, method="gradcam", layer=layer)
            except medlrp.InputError:
                failures += 1
        return failures

    with ThreadPoolExecutor(4) as pool:
        failures = sum(pool.map(work, range(4)))
    assert failures == sum(1 for k in range(4) for i in range(10) if (k + i) % 3 == 0)
    _assert_untouched(model, before)
    assert all(m.training for m in model.modules())


def test_failed_lrp_in_train_mode_leaves_batchnorm_counters_alone():
    model, x = _cnn()
    model.train()
    before = _state(model)
    with pytest.raises(medlrp.InputError, match="train mode"):
        medlrp.explain(model, x, method="lrp", composite="epsilon")
    _assert_untouched(model, before)
    assert int(model.bn1.num_batches_tracked) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "scorecam"])
def test_cams_on_a_shared_activation_module(method):
    """The default layer of SharedAct is its shared ReLU at its last call; it equals a copy run once."""
    model, x = _cnn()

    class Unshared(nn.Module):  # the same network with the last ReLU as a module of its own
        def __init__(self) -> None:
            super().__init__()
            self.net, self.last = model, nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = self.net
            a = n.act(n.bn1(n.conv1(x)))
            a = n.act(n.bn2(n.conv2(a)) + a)
            return n.head(self.last(n.layer(a)).mean((2, 3)))

    options = _options(method, vit=False)
    shared = medlrp.explain(model, x, target=2, method=method, layer="act", **options)
    single = medlrp.explain(Unshared().eval(), x, target=2, method=method, layer="last", **options)
    torch.testing.assert_close(shared.relevance, single.relevance)
    assert shared.options["call"] == 2 and shared.options["calls"] == 3
    default = medlrp.explain(model, x, target=2, method=method, **options)
    assert default.options["layer"] == "act"
    torch.testing.assert_close(default.relevance, shared.relevance)


def test_monai_efficientnet_calls_one_swish_many_times():
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = monai.EfficientNetBN(
        "efficientnet-b0", spatial_dims=2, in_channels=1, num_classes=2, pretrained=False
    )
    model.eval()
    x = torch.randn(1, 1, 32, 32)
    before = _state(model)
    last = medlrp.explain(model, x, method="gradcam", layer="_swish")
    assert last.options["calls"] == 2 and last.options["call"] == 1  # the stem's and the head's swish
    with torch.no_grad():  # Grad-CAM of the head's swish written out
        stem = model._swish(model._bn0(model._conv_stem(model._conv_stem_padding(x))))
        pre = model._bn1(model._conv_head(model._conv_head_padding(model._blocks(stem))))
    a = model._swish(pre).detach().requires_grad_()
    out = model._fc(model._avg_pooling(a).flatten(1))
    (g,) = torch.autograd.grad(out[0, out[0].argmax()], a)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0).detach()
    expected = torch.nn.functional.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(last.relevance, expected, rtol=1e-4, atol=1e-6)
    first = medlrp.explain(model, x, method="scorecam", layer="_swish:0", batch_size=32)
    assert first.options["call"] == 0 and torch.isfinite(first.relevance).all()
    assert torch.isfinite(last.relevance).all() and last.relevance.shape == (1, 1, 32, 32)
    assert not torch.allclose(first.relevance, last.relevance)
    _assert_untouched(model, before)
