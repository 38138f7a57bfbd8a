import pytest
import torch
import torch.nn.functional as F

from medlrp.data import Batch
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.errors import InputError
from medlrp.models import Preprocessing, load_model
from medlrp.train import (
    TrainConfig,
    accuracy,
    batches_per_epoch,
    build_model,
    fit,
    minibatches,
    train_on_folder,
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom(root, PhantomSpec(kind="glioma", dims=2, n=20, seed=0, size=32))
    return root


def _toy(n: int = 48, seed: int = 0) -> Batch:
    """Two classes told apart by the brightness of the left half."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.3
    x[:, :, :, :8] += (label.float() * 2 - 1).view(-1, 1, 1, 1)
    mask = torch.zeros(n, 1, 16, 16)
    mask[..., :8] = 1
    return Batch(x, label, mask, torch.ones(n, dtype=torch.bool), [f"c{i}" for i in range(n)])


def test_fit_learns_and_uses_the_loss_seam():
    data = _toy()
    torch.manual_seed(0)
    model, _ = build_model("cnn2d", Preprocessing(size=[16, 16]), 2)
    seen = []

    def loss_fn(model, batch):
        seen.append(batch)
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.label)
        penalty = 0.0 * (batch.mask * batch.x).mean()  # a guided loss reads masks from the batch
        return ce + penalty, {"ce": float(ce.detach()), "penalty": float(penalty)}

    history = fit(model, data, TrainConfig(epochs=3, batch_size=16, lr=3e-3), val=data, loss_fn=loss_fn)
    assert len(history.epochs) == 3 and set(history.epochs[0].parts) == {"ce", "penalty"}
    assert len(seen) == 9 and all(b.mask.shape == b.x.shape for b in seen)
    assert history.epochs[-1].parts["ce"] < history.epochs[0].parts["ce"]
    assert accuracy(model, data) > 0.9 and not model.training


def test_minibatches_cover_everything_without_batches_of_one():
    data = _toy(n=33)
    batches = list(minibatches(data, 16, torch.Generator().manual_seed(1)))
    assert [len(b.label) for b in batches] == [16, 17]
    assert sorted(i for b in batches for i in b.case_id) == sorted(data.case_id)
    # batches_per_epoch counts the same steps (guided training's --explain-start converts epochs)
    for n in (2, 5, 16, 17, 33, 34):
        for size in (4, 16):
            assert batches_per_epoch(n, size) == len(list(minibatches(_toy(n=n), size)))


def test_train_on_folder_is_deterministic_and_leaves_global_rng(tmp_path, phantom):
    state = torch.random.get_rng_state()
    cfg = TrainConfig(epochs=1, batch_size=4, seed=7)
    a = train_on_folder(phantom, tmp_path / "a.pt", config=cfg)
    b = train_on_folder(phantom, tmp_path / "b.pt", config=cfg)
    c = train_on_folder(phantom, None, config=TrainConfig(epochs=1, batch_size=4, seed=8))
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert set(a.accuracy) == {"train", "val", "test"} and c.checkpoint is None
    loaded = load_model(tmp_path / "a.pt")
    assert loaded.arch == "cnn2d" and loaded.class_names == ["high_grade", "low_grade"]
    assert loaded.preprocessing.size == [32, 32] and loaded.extra["accuracy"] == a.accuracy


def test_bad_configs_and_architectures(phantom):
    with pytest.raises(InputError, match="epochs"):
        train_on_folder(phantom, None, config=TrainConfig(epochs=0))
    with pytest.raises(InputError, match="batch-size"):
        TrainConfig(batch_size=1).check()
    with pytest.raises(InputError, match="lr"):
        TrainConfig(lr=float("nan")).check()
    with pytest.raises(InputError, match="cannot take 3D input"):
        build_model("cnn2d", Preprocessing(dims=3, size=[16, 16, 16]), 2)
    with pytest.raises(InputError, match="unknown architecture"):
        build_model("resnet9000", Preprocessing(), 2)


def test_trains_3d_volumes_and_refuses_missing_train_split(tmp_path):
    write_phantom(tmp_path / "v", PhantomSpec(kind="glioma", dims=3, n=10, seed=0, size=16))
    result = train_on_folder(tmp_path / "v", None, config=TrainConfig(epochs=1, batch_size=3))
    assert result.arch == "cnn3d" and result.preprocessing.size == [16, 16, 16]
    assert 0.0 <= result.accuracy["test"] <= 1.0
    (tmp_path / "v" / "train").rename(tmp_path / "v" / "old")
    with pytest.raises(InputError, match="no train split"):
        train_on_folder(tmp_path / "v", None)
