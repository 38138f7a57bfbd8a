"""3D: on MONAI DenseNet121 trained here on the medlrp 3D glioma phantom, every CAM and occlusion gives
maps of the input's spatial shape whose peak lies on the planted tumour.

The model learns "tumour present" (1) vs "absent" (0) from pairs of phantom volumes (32^3, the
smallest grid DenseNet121 takes: its stem convolution, max pool and three transitions halve it five
times) that differ only in the tumour (`glioma_case(..., with_lesion=False)` draws the same anatomy and
noise without it), so the evidence for class 1 is the tumour and nothing else. Training fits the test
budget: 64 pairs, 6 epochs (130 s of one thread on the shared 2-core machine). BENCHMARKS.md ("CAM and
gradient methods") has the figures; `benchmarks/cam_3d_phantom.py` prints them.
"""

import itertools

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from scipy import ndimage

import medlrp
from medlrp.cam import CAMS
from medlrp.data.phantom import glioma_case

SIZE = 32
TRAIN_PAIRS, TEST_PAIRS, EPOCHS, BATCH = 64, 20, 6, 16
#: The CAM layer: the rectified input of the last convolution of dense block 1 (128 channels, 8^3).
#: DenseNet121's later maps are 4^3, 2^3 and 1^3 at this grid, too coarse to place a peak within a few
#: voxels of a tumour; the block's own output concatenates unrectified convolution outputs.
LAYER = "features.denseblock1.denselayer6.layers.relu2"
NEAR = 4.0  # voxels, one cell of the layer's 8^3 grid: the peak is inside the tumour or this near it
SHARE = 0.8  # ... for at least this share of the explained cases


def pairs(split: int, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``2n`` volumes: each phantom case without (label 0) and with (label 1) its tumour; the masks."""
    xs, labels, masks = [], [], []
    for i in range(n):
        grade = i % 2  # both tumour grades
        for present in (0, 1):
            case = glioma_case([split, i], (SIZE,) * 3, grade, token=False, with_lesion=bool(present))
            xs.append(case.image)
            labels.append(present)
        masks += [case.mask, case.mask]  # the tumour's mask, also for the volume without it
    return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(labels), np.stack(masks)


def recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running BatchNorm statistics for the final weights (an equal-weight average over ``x``).

    After a few fast epochs the running averages (momentum 0.1) still mix in earlier weights, and at
    this grid the deepest BatchNorms see one position per sample, so eval mode then misclassifies.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), 2 * BATCH):
            model(x[start : start + 2 * BATCH])
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


@pytest.fixture(scope="module")
def trained():
    """The trained model, its test accuracy, and the test cases it detects the tumour in (with masks)."""
    torch.manual_seed(0)
    x, y, _ = pairs(0, TRAIN_PAIRS)
    model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        # Both volumes of a pair in the same batch: the difference between them is the tumour.
        order = (2 * torch.randperm(TRAIN_PAIRS, generator=generator)[:, None] + torch.arange(2)).flatten()
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recalibrate_batchnorm(model, x)
    x, y, masks = pairs(1, TEST_PAIRS)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    chosen = right & (y == 1)
    return model, right.float().mean().item(), x[chosen], masks[chosen.numpy()]


def test_the_model_detects_the_tumour(trained):
    _, accuracy, x, _ = trained
    assert accuracy >= 0.85, accuracy
    assert len(x) >= 12  # enough explained cases for the shares below to mean something


def plateaus(r: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N, *spatial)``: where each ``(N, *spatial)`` map attains its maximum."""
    flat = r.flatten(1)
    top = flat >= flat.max(1, keepdim=True).values - 1e-6 * flat.abs().max(1, keepdim=True).values
    return top.view(r.shape)


def distances_to_tumour(relevance: torch.Tensor, masks: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Distance in voxels from each map's peak to its case's tumour mask (0 inside).

    The peak is the centroid of the voxels where the map is maximal (one voxel for a CAM), or with
    ``nearest`` the plateau's voxel nearest the tumour (for occlusion, whose maps are constant on each
    window: "the most relevant window overlaps the tumour").
    """
    out = []
    for top, mask in zip(plateaus(relevance.sum(1)).numpy(), masks, strict=True):
        distance = ndimage.distance_transform_edt(1 - mask)
        if nearest:
            out.append(distance[top].min())
        else:
            out.append(distance[tuple(np.argwhere(top).mean(0).round().astype(int))])
    return np.array(out)


def windows(size: int, window: int) -> list[tuple[slice, ...]]:
    """The occlusion windows of a cube with stride = window."""
    starts = range(0, size, window)
    return [tuple(slice(a, a + window) for a in corner) for corner in itertools.product(starts, repeat=3)]


def test_on_the_tumour_is_a_small_target(trained):
    """The criteria can fail: a peak at a random voxel, or a random window, meets them rarely."""
    *_, masks = trained
    near = np.mean([(ndimage.distance_transform_edt(1 - m) <= NEAR).mean() for m in masks])
    assert near < 0.15, near
    overlaps = np.mean([np.mean([m[w].any() for w in windows(SIZE, 8)]) for m in masks])
    assert overlaps < 0.15, overlaps


@pytest.mark.parametrize("method", [cls.name for cls in CAMS if cls.uses_gradients])
def test_gradient_cams_peak_on_the_tumour(trained, method):
    model, _, x, masks = trained
    e = medlrp.explain(model, x, 1, method=method, layer=LAYER)
    assert e.relevance.shape == (len(x), 1, SIZE, SIZE, SIZE)
    distance = distances_to_tumour(e.relevance, masks)
    assert (distance <= NEAR).mean() >= SHARE, distance.tolist()


def test_scorecam_peaks_on_the_tumour(trained):
    """Score-CAM on the same layer (all 128 channels) for 4 cases: 512 forward passes of DenseNet121."""
    model, _, x, masks = trained
    e = medlrp.explain(model, x[:4], 1, method="scorecam", layer=LAYER)
    assert e.relevance.shape == (4, 1, SIZE, SIZE, SIZE)
    distance = distances_to_tumour(e.relevance, masks[:4])
    assert (distance <= NEAR).mean() >= 0.75, distance.tolist()


def test_occlusion_peaks_on_the_tumour(trained):
    """Occlusion with 8^3 windows (64 per case) for 8 cases: the most relevant window overlaps the tumour."""
    model, _, x, masks = trained
    e = medlrp.explain(model, x[:8], 1, method="occlusion", window=8, stride=8)
    assert e.relevance.shape == (8, 1, SIZE, SIZE, SIZE)
    distance = distances_to_tumour(e.relevance, masks[:8], nearest=True)
    assert (distance == 0).mean() >= 0.75, distance.tolist()


def test_densenet121_default_layer_and_deeper_maps_have_the_input_shape(trained):
    model, _, x, _ = trained
    e = medlrp.explain(model, x[:2], 1, method="gradcam")
    assert e.options["layer"] == "features.transition3.conv"  # the last map with more than one position
    for cls in CAMS:
        if cls.uses_gradients:
            e = medlrp.explain(model, x[:2], 1, method=cls.name, layer="features.denseblock3")
            assert e.relevance.shape == (2, 1, SIZE, SIZE, SIZE), cls.name
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
