"""Small seeded Vision Transformers of every family medlrp supports, for the ViT tests (float64)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FirstOutput(nn.Module):
    """MONAI's ViT returns ``(logits, hidden_states)``: keep the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def tiny2d() -> tuple[nn.Module, torch.Tensor]:
    from medlrp.models.vit import vit2d

    _seeded(0)
    m = vit2d(in_channels=1, num_classes=3, image_size=32, patch_size=8, dim=32, depth=2, heads=4)
    return m, torch.randn(2, 1, 32, 32)


def tiny2d_stem() -> tuple[nn.Module, torch.Tensor]:
    """medlrp's vit2d with a convolutional stem (conv + ReLU layers) reading the mean patch token."""
    from medlrp.models.vit import vit2d

    _seeded(2)
    m = vit2d(
        in_channels=1,
        num_classes=3,
        image_size=32,
        patch_size=8,
        dim=16,
        depth=2,
        heads=2,
        stem=2,
        pool="mean",
    )
    return m, torch.randn(2, 1, 32, 32)


def tiny3d() -> tuple[nn.Module, torch.Tensor]:
    from medlrp.models.vit import vit3d

    _seeded(1)
    m = vit3d(in_channels=1, num_classes=3, image_size=16, patch_size=8, dim=16, depth=2, heads=2)
    return m, torch.randn(2, 1, 16, 16, 16)


def torchvision_vit() -> tuple[nn.Module, torch.Tensor]:
    from torchvision.models.vision_transformer import VisionTransformer

    _seeded(2)
    m = VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    with torch.no_grad():  # torchvision zero-initialises the head
        m.heads.head.weight.normal_(0.0, 0.2)
    return m, torch.randn(2, 3, 32, 32)


def timm_vit() -> tuple[nn.Module, torch.Tensor]:
    import timm

    _seeded(3)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
    return m, torch.randn(2, 3, 32, 32)


def timm_deit() -> tuple[nn.Module, torch.Tensor]:
    import timm

    _seeded(4)
    m = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3
    )
    return m, torch.randn(2, 3, 32, 32)


def monai2d() -> tuple[nn.Module, torch.Tensor]:
    from monai.networks.nets import ViT

    _seeded(5)
    m = ViT(
        in_channels=1,
        img_size=(32, 32),
        patch_size=(8, 8),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=3,
        spatial_dims=2,
    )
    return FirstOutput(m), torch.randn(2, 1, 32, 32)


def monai3d() -> tuple[nn.Module, torch.Tensor]:
    from monai.networks.nets import ViT

    _seeded(6)
    m = ViT(
        in_channels=1,
        img_size=(16, 16, 16),
        patch_size=(8, 8, 8),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=3,
        spatial_dims=3,
    )
    return FirstOutput(m), torch.randn(2, 1, 16, 16, 16)


ZOO: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "tiny2d": tiny2d,
    "tiny2d-stem": tiny2d_stem,
    "tiny3d": tiny3d,
    "torchvision": torchvision_vit,
    "timm-vit": timm_vit,
    "timm-deit": timm_deit,
    "monai2d": monai2d,
    "monai3d": monai3d,
}


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    """``(model in eval mode, float64; input batch of 2, float64)``."""
    model, x = ZOO[name]()
    return model.double().eval(), x.double()


def zero_constants(model: nn.Module) -> nn.Module:
    """Zero every bias, position embedding and class/distillation token (in place; pass a copy)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("bias") or "pos" in leaf or "token" in leaf or "position" in name:
                p.zero_()
    return model
