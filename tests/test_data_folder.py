import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medlrp.data import FolderDataset, collate_cases, resolve_split
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.errors import InputError
from medlrp.io import write_png
from medlrp.models import Preprocessing


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom(root, PhantomSpec(kind="chest", dims=2, n=10, seed=0, size=32))
    return root


def test_reads_splits_classes_masks(phantom):
    ds = FolderDataset(phantom, split="train")
    assert ds.classes == ["normal", "opacity"]
    assert len(ds) == 6 and sorted(ds.labels) == [0, 0, 0, 1, 1, 1]
    x, label, mask, case_id = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # z-scored per image
    assert mask is not None and mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert case_id.startswith("chest_train_") and label == ds.cases[0].label
    assert ds.image(0).array.shape == (1, 32, 32)
    assert resolve_split(phantom, "test") == phantom / "test"
    assert resolve_split(phantom / "test", "test") == phantom / "test"  # a split folder given directly


def test_resizes_to_model_grid_and_collates_missing_masks(phantom, tmp_path):
    root = tmp_path / "flat"
    for cls, value in (("b", 200), ("a", 50)):
        for i in range(2):
            img = np.full((20, 20), value, dtype=np.uint16)
            img[5:10, 5:10] += 100
            write_png(root / cls / f"{cls}{i}.png", img, bits=16)
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5:10, 5:10] = 255
    write_png(root / "a" / "a0_mask.png", mask)
    pre = Preprocessing(dims=2, channels=1, size=[40, 40], intensity="none")
    ds = FolderDataset(root, preprocessing=pre)
    assert ds.classes == ["a", "b"] and [c.case_id for c in ds.cases] == ["a0", "a1", "b0", "b1"]
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_cases)))
    assert batch.x.shape == (4, 1, 40, 40) and batch.label.tolist() == [0, 0, 1, 1]
    assert batch.has_mask.tolist() == [True, False, False, False]
    assert batch.mask[0, 0, 10:20, 10:20].eq(1).all() and batch.mask[0].sum() == 100  # nearest, x2
    assert batch.mask[1:].eq(0).all()
    fixed = FolderDataset(root, preprocessing=pre, classes=["b", "a", "c"])  # a checkpoint's order
    assert [c.label for c in fixed.cases] == [0, 0, 1, 1] and fixed.cases[0].case_id == "b0"


def test_reads_volumes(tmp_path):
    write_phantom(tmp_path, PhantomSpec(kind="glioma", dims=3, n=10, seed=0, size=16))
    ds = FolderDataset(tmp_path, split="val", cache=True)
    case = ds[1]
    assert case.x.shape == (1, 16, 16, 16) and case.mask.shape == (1, 16, 16, 16) and case.mask.sum() > 0
    assert ds[1] is case  # cached


def test_bad_folders(tmp_path, phantom):
    with pytest.raises(InputError, match="not found"):
        FolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class folders"):
        FolderDataset(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        FolderDataset(tmp_path / "noimg")
    with pytest.raises(InputError, match="unknown split"):
        FolderDataset(phantom, split="training")
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="x.png"):
        FolderDataset(tmp_path / "bad")
