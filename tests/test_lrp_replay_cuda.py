"""The CUDA-graph backend on a GPU: captured LRP passes replayed equal the eager CUDA pass.

Skipped without a CUDA device (the CPU suite checks the same protocol on the eager backend in
tests/test_lrp_replay.py). Small models and inputs, a few seconds on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

import medlrp

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: the CUDA-graph backend is checked in a GPU session",
)
CUDA = torch.device("cuda")


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()  # mixed-sign scales: the merge reads their signs
                m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(CUDA)


def r3d() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.video.r3d_18(num_classes=3).eval().to(CUDA)


def vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=4)
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.5)
    return model.eval().to(CUDA)


CASES = [
    (resnet, (2, 3, 32, 32), ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"]),
    (r3d, (1, 3, 4, 32, 32), ["epsilon-plus-flat", "epsilon-gamma-box"]),
    (vit, (2, 3, 32, 32), ["attnlrp", "cp-lrp"]),
]


def inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(CUDA)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(("make", "shape", "composites"), CASES, ids=["resnet18", "r3d_18", "vit"])
def test_cuda_graphs_equal_the_eager_cuda_pass(make, shape, composites):
    model = make()
    for name in composites:
        eager = medlrp.LRP(model, name, graphs=False)
        graphed = medlrp.LRP(model, name)  # "auto": on for CUDA inputs
        for seed, target in [(1, None), (2, None), (3, None), (4, 1), (5, 1)]:
            x = inputs(shape, seed)
            a, b = graphed(x, target), eager(x, target)
            close(a.relevance, b.relevance)
            close(a.output, b.output)
            assert torch.equal(a.target, b.target)
        stats = graphed.replay.stats
        assert graphed.replay.eager == {}, graphed.replay.eager
        assert (stats.captures, stats.replays) == (2, 3), name
        assert {entry.backend for entry in graphed.replay.entries.values()} == {"cuda"}


def test_cuda_graphs_follow_weight_updates_and_keep_returned_maps():
    model = resnet()
    lrp = medlrp.LRP(model, "epsilon-gamma-box")
    x1, x2 = inputs((2, 3, 32, 32), 1), inputs((2, 3, 32, 32), 2)
    lrp.relevance(x1, 1)
    r1 = lrp.relevance(x1, 1)
    kept = r1.clone()
    r2 = lrp.relevance(x2, 1)
    torch.cuda.synchronize()
    assert torch.equal(r1, kept) and not torch.equal(r1, r2)
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)  # in place: a captured graph would read the new values silently
    fresh = medlrp.LRP(model, "epsilon-gamma-box", graphs=False).relevance(x1, 1)
    close(lrp.relevance(x1, 1), fresh)
    assert lrp.replay.stats.captures == 2


def test_a_pass_that_cannot_be_captured_runs_eagerly_and_cuda_keeps_working():
    def start(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        torch.cuda.synchronize()  # not a tensor read (HostReads lets it through): the capture itself fails
        return torch.zeros_like(output).scatter(1, target[:, None], output.gather(1, target[:, None]))

    model = resnet()
    x = inputs((2, 3, 32, 32), 1)
    lrp = medlrp.LRP(model, "epsilon", start=start)
    close(lrp.relevance(x), medlrp.LRP(model, "epsilon", graphs=False).relevance(x))
    assert len(lrp.replay.eager) == 1 and lrp.replay.stats.captures == 0
    close(lrp.relevance(x), medlrp.LRP(model, "epsilon", graphs=False).relevance(x))
    ok = medlrp.LRP(model, "epsilon")  # a later capture on the same device works
    for seed in range(3):
        x = inputs((2, 3, 32, 32), seed)
        close(ok.relevance(x), medlrp.LRP(model, "epsilon", graphs=False).relevance(x))
    assert ok.replay.stats.replays == 2


def test_graphs_of_several_shapes_share_a_pool_and_stay_correct():
    model = resnet()
    lrp = medlrp.LRP(model, "epsilon-plus-flat")
    eager = medlrp.LRP(model, "epsilon-plus-flat", graphs=False)
    for seed, n in enumerate([1, 2, 4, 2, 1, 4, 1]):
        x = inputs((n, 3, 32, 32), seed)
        close(lrp.relevance(x), eager.relevance(x))
    assert (lrp.replay.stats.captures, lrp.replay.stats.replays) == (3, 4)
