"""Layer choice and token grids: dotted names, defaults for CNNs and ViTs, prefix tokens, odd layers."""

import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import medlrp
from medlrp.cam import default_layer, resolve_layer


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


def test_resolve_layer_by_name_index_and_module(resnet):
    x = torch.randn(1, 3, 32, 32)
    assert resolve_layer(resnet, "layer4.1.conv2", x) == ("layer4.1.conv2", resnet.layer4[1].conv2)
    assert resolve_layer(resnet, "layer4.-1", x)[1] is resnet.layer4[-1]
    assert resolve_layer(resnet, resnet.layer3, x) == ("layer3", resnet.layer3)
    with pytest.raises(medlrp.InputError, match="layer4 .Sequential. has no submodule '7'"):
        resolve_layer(resnet, "layer4.7", x)
    with pytest.raises(medlrp.InputError, match="not a submodule"):
        resolve_layer(resnet, nn.Conv2d(1, 1, 1), x)
    e = medlrp.explain(resnet, x, method="gradcam", layer="layer4.-1")
    assert e.options["layer"] == "layer4.-1"


def test_default_layer_cnn(resnet):
    assert default_layer(resnet, torch.randn(2, 3, 64, 64)) == "layer4"
    # With a 1x1 last feature map, the last block that still has positions is chosen.
    assert default_layer(resnet, torch.randn(1, 3, 32, 32)).startswith("layer3")
    e = medlrp.explain(resnet, torch.randn(2, 3, 64, 48), method="gradcam")
    assert e.options["layer"] == "layer4" and e.relevance.shape == (2, 1, 64, 48)


def test_default_layer_probe_leaves_a_training_model_alone():
    model = torchvision.models.resnet18(num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert default_layer(model, torch.randn(2, 3, 64, 64)) == "layer4"
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics too


def vit(global_pool: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=(32, 48),
        patch_size=8,
        depth=3,
        global_pool=global_pool,
        **kw,
    )
    return model.double().eval()


def test_vit_tokens_on_their_own_grid_with_prefix_tokens():
    """Registers + class token (5 prefix tokens), a 4x6 grid: equal to pytorch-grad-cam with a reshape."""
    model = vit("token", reg_tokens=4)
    assert model.num_prefix_tokens == 5
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)

    def reshape(tokens):
        return tokens[:, 5:].reshape(tokens.shape[0], 4, 6, -1).permute(0, 3, 1, 2)

    layer = model.blocks[1]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        outputs = cam.activations_and_grads(x)
        sum(ClassifierOutputTarget(t)(o) for t, o in zip([0, 2], outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        ref = torch.from_numpy(cam.get_cam_image(x, layer, None, acts, grads, False))
    model.zero_grad(set_to_none=True)
    e = medlrp.explain(model, x, [0, 2], method="gradcam", layer="blocks.1", relu=False, upsample=False)
    assert e.relevance.shape == (2, 1, 4, 6)
    torch.testing.assert_close(e.relevance[:, 0], ref, rtol=1e-9, atol=1e-12)
    assert medlrp.explain(model, x, method="layercam").relevance.shape == (2, 1, 32, 48)


def test_vit_default_is_last_block_whose_patch_tokens_reach_the_output():
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    # A class-token head never sees the last block's patch tokens: their gradient is exactly zero.
    assert default_layer(vit("token"), x) == "blocks.1"
    zero = medlrp.explain(vit("token"), x, method="gradcam", layer="blocks.2", relu=False).relevance
    assert zero.abs().max() == 0
    assert default_layer(vit("avg"), x) == "blocks.2"
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()
    nn.init.normal_(tv.heads.head.weight)  # torchvision initialises the head to zero
    assert default_layer(tv, torch.randn(1, 3, 32, 32)) == "encoder.layers.encoder_layer_1"
    assert medlrp.explain(tv, torch.randn(2, 3, 32, 32), method="gradcam++").relevance.shape == (2, 1, 32, 32)


class LinearTokens(nn.Module):
    """Tokens from a linear patch embedding: no convolution to read the grid from."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        n = x.shape[0]
        patches = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(n, -1, 16)  # (n, 2 * 3, 16), 1 channel
        return self.head(self.blocks(self.embed(patches)).mean(1))


def test_tokens_without_patch_convolution_need_grid():
    model, x = LinearTokens().double(), torch.randn(2, 1, 8, 12, dtype=torch.float64)
    with pytest.raises(medlrp.InputError, match="pass grid="):
        medlrp.explain(model, x, method="gradcam", layer="blocks.1")
    e = medlrp.explain(model, x, method="gradcam", layer="blocks.1", grid=(2, 3))
    assert e.relevance.shape == (2, 1, 8, 12) and e.options["grid"] == [2, 3]
    with pytest.raises(medlrp.InputError, match="fewer than"):
        medlrp.explain(model, x, method="gradcam", layer="blocks.1", grid=(3, 3))


class InplaceAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        a = self.conv(x)
        a.relu_()  # in place on the CAM layer's output
        return self.head(a.mean((2, 3)))


def test_activation_and_gradient_belong_to_the_layer_output_despite_inplace_ops():
    torch.manual_seed(0)
    model, x = InplaceAfter().double(), torch.randn(2, 1, 6, 6, dtype=torch.float64)
    a = model.conv(x).detach().requires_grad_()
    score = model.head(a.relu().mean((2, 3)))[:, 1].sum()
    (g,) = torch.autograd.grad(score, a)
    expected = (g * a).sum(1).detach()  # HiResCAM of the pre-ReLU output
    e = medlrp.explain(model, x, 1, method="hirescam", layer="conv", upsample=False)
    torch.testing.assert_close(e.relevance[:, 0], expected)
    assert (e.relevance < 0).any()  # HiResCAM is signed by default


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.unused = nn.Conv2d(1, 1, 1)
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        return self.head(self.conv(self.conv(x)).mean((2, 3)))


def test_a_layer_that_never_runs_is_refused():
    with pytest.raises(medlrp.InputError, match="ran 0 times"):
        medlrp.explain(Twice(), torch.randn(1, 1, 5, 5), method="gradcam", layer="unused")


def _gradcam_of_call(model: Twice, x: torch.Tensor, call: int, target: int) -> torch.Tensor:
    """Grad-CAM of call ``call`` of ``model.conv`` written out (float64): weights = mean of the gradient."""
    first = model.conv(x)
    a = (first if call == 0 else model.conv(first)).detach().requires_grad_()
    second = model.conv(a) if call == 0 else a
    score = model.head(second.mean((2, 3)))[:, target].sum()
    (g,) = torch.autograd.grad(score, a)
    return (g.mean((2, 3), keepdim=True) * a).sum(1).detach()


@pytest.mark.parametrize(
    ("layer", "call"), [("conv", 1), ("conv:1", 1), ("conv:-1", 1), ("conv:0", 0), ("conv:-2", 0)]
)
def test_a_layer_run_several_times_takes_its_last_call_or_the_one_named(layer, call):
    torch.manual_seed(0)
    model, x = Twice().double(), torch.randn(2, 1, 5, 5, dtype=torch.float64)
    e = medlrp.explain(model, x, 1, method="gradcam", layer=layer, upsample=False, relu=False)
    torch.testing.assert_close(e.relevance[:, 0], _gradcam_of_call(model, x, call, 1))
    assert e.options["layer"] == "conv" and e.options["call"] == call and e.options["calls"] == 2
    same = medlrp.explain(model, x, 1, method="gradcam", layer=(model.conv, call), upsample=False, relu=False)
    torch.testing.assert_close(same.relevance, e.relevance)


@pytest.mark.parametrize("layer", ["conv:2", "conv:-3", "conv:x"])
def test_a_call_that_does_not_exist_is_refused(layer):
    with pytest.raises(medlrp.InputError, match="conv"):
        medlrp.explain(Twice(), torch.randn(1, 1, 5, 5), method="gradcam", layer=layer)


def test_scorecam_on_a_layer_run_twice_uses_the_chosen_call():
    torch.manual_seed(0)
    model, x = Twice().double(), torch.randn(1, 1, 5, 5, dtype=torch.float64)
    for call in (0, 1):
        e = medlrp.explain(model, x, 0, method="scorecam", layer=f"conv:{call}", upsample=False, relu=False)
        a = model.conv(x) if call == 0 else model.conv(model.conv(x))
        m = (a - a.min()) / (a.max() - a.min() + 1e-8)
        w = torch.softmax(model(x * m)[:, 0], dim=0)  # one channel: the softmax over channels is 1
        torch.testing.assert_close(e.relevance[:, 0], (w * a[:, 0]).detach())
