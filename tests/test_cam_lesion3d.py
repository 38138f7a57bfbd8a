"""3D: MONAI DenseNet121 maps have the input's shape; on a quickly trained 3D DenseNet (MONAI's DenseNet
class, small widths so training fits the test budget) the CAMs and occlusion peak on a planted lesion."""

import pytest
import torch
from monai.networks.nets import DenseNet, DenseNet121

import medlrp
from medlrp.cam import CAMS

SIZE = 32
RADIUS = 5.0  # the lesion mask: within two blob sigmas of the centre


def volumes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise volumes; odd samples carry a bright Gaussian blob (the lesion) at a random centre."""
    x = 0.3 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=generator)
    label = torch.arange(n) % 2
    centre = torch.randint(8, SIZE - 8, (n, 3), generator=generator)
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE)] * 3, indexing="ij")).float()
    for i in range(n):
        if label[i]:
            d2 = ((grid - centre[i].view(3, 1, 1, 1)) ** 2).sum(0)
            x[i, 0] += 2.0 * torch.exp(-d2 / (2 * 2.5**2))
    return x, label, centre


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = DenseNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        init_features=8,
        growth_rate=8,
        block_config=(2, 2),
        bn_size=2,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(24):
        x, y, _ = volumes(8, generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, centre = volumes(12, generator)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean()
    assert accuracy >= 0.9, "the 3D model did not learn the lesion"
    return model, x[y == 1], centre[y == 1]


def peak(r: torch.Tensor) -> torch.Tensor:
    """Coordinates of each map's maximum (the centroid of its plateau, for piecewise-constant maps)."""
    flat = r.flatten(1)
    top = flat >= flat.max(1, keepdim=True).values - 1e-6 * flat.abs().max(1, keepdim=True).values
    coords = (
        torch.stack(torch.meshgrid(*[torch.arange(s) for s in r.shape[1:]], indexing="ij")).flatten(1).float()
    )
    return (top.float() @ coords.T) / top.sum(1, keepdim=True)


METHODS = [cls.name for cls in CAMS] + ["occlusion"]


@pytest.mark.parametrize("method", METHODS)
def test_maps_peak_on_the_lesion(trained, method):
    model, x, centre = trained
    options = {"window": 8, "stride": 8} if method == "occlusion" else {"layer": "features.denseblock1"}
    e = medlrp.explain(model, x, 1, method=method, **options)
    assert e.relevance.shape[0] == len(x) and e.relevance.shape[2:] == (SIZE, SIZE, SIZE)
    distance = (peak(e.relevance.sum(1)) - centre.float()).norm(dim=1)
    # "On the lesion": inside the mask or within one voxel of it, for most samples.
    assert (distance <= RADIUS + 1).float().mean() >= 0.75, distance.tolist()


def test_default_layer_maps_peak_near_the_lesion(trained):
    """At the default layer (a 4^3 map: one cell is 8 voxels) the peak is at most a cell away."""
    model, x, centre = trained
    e = medlrp.explain(model, x, 1, method="gradcam")
    assert e.options["layer"] == "class_layers.relu"
    distance = (peak(e.relevance[:, 0]) - centre.float()).norm(dim=1)
    assert (distance <= 8).float().mean() >= 0.75, distance.tolist()


def test_densenet121_3d_maps_have_the_input_shape():
    """The gradient CAMs on MONAI DenseNet121 (3D, 32^3); Score-CAM and occlusion run above on the
    trained DenseNet (the same code path, at a fraction of DenseNet121's cost per forward pass)."""
    torch.manual_seed(0)
    model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    e = medlrp.explain(model, x, 1, method="gradcam")
    assert e.options["layer"] == "features.transition3.conv"  # the last map with more than one position
    for cls in CAMS:
        if cls.uses_gradients:
            e = medlrp.explain(model, x, 1, method=cls.name, layer="features.denseblock3")
            assert e.relevance.shape == (1, 1, SIZE, SIZE, SIZE), cls.name
            assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


def test_monai_vit_3d_tokens_on_their_grid():
    """A 3D ViT (class token, 2x4x4 patch grid read off its Conv3d patch embedding), non-cubic input."""
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    model = ViT(
        in_channels=1, img_size=(16, 32, 32), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=3,
        num_heads=2, spatial_dims=3, classification=True, num_classes=2,
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 16, 32, 32)
    e = medlrp.explain(model, x, [0, 1], method="gradcam", upsample=False)
    assert e.options["layer"] == "blocks.1"  # the class-token head never sees blocks.2's patch tokens
    assert e.relevance.shape == (2, 1, 2, 4, 4) and e.relevance.abs().sum() > 0
    e = medlrp.explain(model, x, [0, 1], method="scorecam", layer="blocks.2", batch_size=16)
    assert e.relevance.shape == (2, 1, 16, 32, 32)
