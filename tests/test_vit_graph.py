"""``create_graph=True`` on a tiny ViT: relevance differentiable with exact gradients (float64 gradcheck)."""

from __future__ import annotations

import pytest
import torch

import medlrp
from medlrp.models.vit import vit2d


def _tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = (
        vit2d(
            in_channels=1, num_classes=2, image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_ratio=1.0
        )
        .double()
        .eval()
    )
    with torch.no_grad():  # keep the logits and activations away from the rules' kinks
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    return model, x


@pytest.mark.parametrize(
    "composite,options", [("attnlrp", {}), ("cp-lrp", {}), ("attnlrp", {"linear": "gamma"})]
)
def test_gradcheck_wrt_parameters_and_input(composite: str, options: dict) -> None:
    model, x = _tiny()
    lrp = medlrp.LRP(model, composite, **options)
    target = torch.tensor([0, 1])
    # parameters of each kind of rule: layer norm, attention projection, patch embedding, head
    params = [
        model.blocks[0].norm1.weight,
        model.blocks[0].attn.proj.bias,
        model.patch_embed.bias,
        model.head.weight,
    ]

    def of_params(*ps: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(x, target, create_graph=True)

    assert torch.autograd.gradcheck(of_params, params, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)

    def of_input(xx: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(xx, target, create_graph=True)

    assert torch.autograd.gradcheck(
        of_input, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )
    # the exact pass gives the same relevance as the fast one
    fast = lrp.relevance(x, target)
    torch.testing.assert_close(lrp.relevance(x, target, create_graph=True).detach(), fast)


def test_gradcheck_with_a_convolutional_stem_and_mean_pooling() -> None:
    torch.manual_seed(1)
    model = (
        vit2d(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_ratio=1.0, stem=2, pool="mean")
        .double()
        .eval()
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    lrp = medlrp.LRP(model)
    target = torch.tensor([1, 0])
    params = [model.stem[0].weight, model.stem[2].bias, model.patch_embed.weight, model.head.weight]

    def of_params(*ps: torch.Tensor) -> torch.Tensor:
        return lrp.relevance(x, target, create_graph=True)

    assert torch.autograd.gradcheck(of_params, params, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
    r = lrp.relevance(x, target, create_graph=True)
    assert r.abs().sum() > 0
    torch.testing.assert_close(r.detach(), lrp.relevance(x, target))
