"""The registered U-Nets (unet2d, unet3d) and the segmentation losses and scores of training."""

from __future__ import annotations

import pytest
import torch

from medlrp.data.folder import Batch
from medlrp.errors import InputError
from medlrp.registry import ARCHITECTURES
from medlrp.train.segmentation import SegmentationTask, hard_dice, soft_dice


@pytest.mark.parametrize("arch,shape", [("unet2d", (2, 3, 32, 16)), ("unet3d", (2, 1, 8, 16, 8))])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm": "instance", "act": "leakyrelu", "down": "conv", "up": "linear"},
        {"act": "prelu", "depth": 1},
    ],
)
def test_unet_logits_per_voxel(arch, shape, options):
    torch.manual_seed(0)
    model = ARCHITECTURES.get(arch)(in_channels=shape[1], num_classes=3, width=2, **options).eval()
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (shape[0], 3, *shape[2:])
    # samples are independent in eval mode, and the skips reach the output: a voxel change moves its logits
    assert torch.allclose(model(x[:1]), out[:1], atol=1e-5)
    y = x.clone()
    y[(0, 0, *[s // 2 for s in shape[2:]])] += 5.0
    assert not torch.allclose(model(y)[0], out[0])


def test_unet_refuses_bad_options_and_sizes():
    with pytest.raises(InputError, match="norm"):
        ARCHITECTURES.get("unet2d")(norm="layer")
    with pytest.raises(InputError, match="up"):
        ARCHITECTURES.get("unet3d")(up="nearest")
    with pytest.raises(InputError, match="divisible by 8"):
        ARCHITECTURES.get("unet2d")(width=2).eval()(torch.zeros(1, 1, 20, 16))


def test_dice_scores_by_hand():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1  # 4 voxels of class 1
    predicted = torch.zeros_like(target)
    predicted[0, :2, :1] = 1  # 2 of them found
    predicted[1, 3, 3] = 2  # a false positive in a case with no foreground
    assert hard_dice(predicted, target, 3).tolist() == pytest.approx([2 * 2 / 6, 0.0])
    assert hard_dice(target, target, 3).tolist() == [1.0, 1.0]
    probs = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).double()
    # class 1: intersection 2, sizes 2 + 4; class 2: intersection 0, sizes 1 + 0 (eps 1 smooths)
    assert soft_dice(probs, target).tolist() == pytest.approx([(4 + 1) / (6 + 1), 1 / 2])


def test_class_labelling_marks_mask_voxels_with_the_case_class():
    mask = torch.zeros(2, 1, 2, 2)
    mask[:, 0, 0, 0] = 1
    batch = Batch(torch.zeros(2, 1, 2, 2), torch.tensor([1, 0]), mask, torch.tensor([True, True]), ["a", "b"])
    labels = SegmentationTask(("background", "x", "y"), labels="class").targets(batch)
    assert labels[:, 0, 0].tolist() == [2, 1] and int(labels.sum()) == 3
    assert SegmentationTask(("background", "m")).targets(batch).sum() == 2
