import pytest
import torch
from torch import nn

from medlrp.errors import InputError
from medlrp.models import Preprocessing, load_model, save_checkpoint
from medlrp.registry import ARCHITECTURES

CASES = {
    "cnn2d": ({}, (3, 1, 32, 32)),
    "cnn3d": ({}, (2, 1, 16, 16, 16)),
    "vit2d": ({"image_size": [32, 32], "depth": 2}, (3, 1, 32, 32)),
    "vit2d-stem": ({"image_size": [32, 32], "depth": 1, "stem": 2, "pool": "mean"}, (3, 1, 32, 32)),
    "vit3d": ({"image_size": 16, "depth": 1}, (2, 1, 16, 16, 16)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_architecture_forward_backward_and_checkpoint(tmp_path, name):
    kwargs, shape = CASES[name]
    torch.manual_seed(0)
    arch = name.split("-")[0]
    model = ARCHITECTURES.get(arch)(in_channels=1, num_classes=3, **kwargs)
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    pre = Preprocessing(dims=len(shape) - 2, size=list(shape[2:]))
    path = save_checkpoint(tmp_path / "m.pt", model, arch, {"num_classes": 3, **kwargs}, pre, ["a", "b", "c"])
    loaded = load_model(path)
    assert loaded.arch == arch and loaded.class_names == ["a", "b", "c"] and loaded.preprocessing == pre
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_only_standard_torch_modules(name):
    """LRP engines and CAMs must see every operation: standard torch.nn modules, no custom autograd."""
    kwargs, _ = CASES[name]
    model = ARCHITECTURES.get(name.split("-")[0])(**kwargs)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert leaves and all(type(m).__module__.startswith("torch.nn") for m in leaves)
    assert any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d | nn.LayerNorm) for m in leaves)


def test_cnn_has_residual_blocks_and_small_size():
    model = ARCHITECTURES.get("cnn2d")()
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert sum(type(m).__name__ == "ResidualBlock" for m in model.modules()) == 3


def test_vit_grid_follows_image_size_and_checks_it():
    model = ARCHITECTURES.get("vit2d")(image_size=[48, 32], patch_size=8)
    assert model.grid == [6, 4] and model.pos_embed.shape == (1, 1 + 24, 64)
    assert model(torch.randn(1, 1, 48, 32)).shape == (1, 2)
    with pytest.raises(InputError, match="divisible"):
        ARCHITECTURES.get("vit2d")(image_size=30, patch_size=8)
    with pytest.raises(InputError, match="heads"):
        ARCHITECTURES.get("vit2d")(image_size=32, dim=30, heads=4)


def test_vit_stem_and_mean_pool():
    vit = ARCHITECTURES.get("vit2d")
    model = vit(image_size=32, patch_size=8, dim=16, heads=2, stem=2, pool="mean")
    # two stride-2 conv + ReLU blocks widen to dim/4, dim/2; the patch embedding covers the rest (8 / 4)
    convs = [m for m in model.stem if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8] and model.patch_embed.kernel_size == (2, 2)
    assert model.grid == [4, 4]
    x = torch.randn(2, 1, 32, 32)
    # the mean pool reads the patch tokens only: the class token cannot change the logits
    with torch.no_grad():
        before = model(x)
        model.cls_token.add_(5.0)
        torch.testing.assert_close(model(x), before)
    # without a stem the module is the plain ViT (no parameters added: old checkpoints load)
    plain = vit(image_size=32, patch_size=8, dim=16, heads=2)
    assert not list(plain.stem.parameters())
    with pytest.raises(InputError, match="2\\*\\*stem"):
        vit(image_size=32, patch_size=8, stem=4)
    with pytest.raises(InputError, match="pool"):
        vit(image_size=32, patch_size=8, pool="max")
