import pytest
import torch

from medlrp.cli import main
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.models import load_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom(root, PhantomSpec(kind="glioma", dims=2, n=12, seed=0, size=32))
    return root


def test_train_writes_a_checkpoint_that_loads(tmp_path, capsys, data):
    ckpt = tmp_path / "m.pt"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(ckpt),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--seed",
        "3",
    ]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    for split in ("train", "val", "test"):
        assert f"{split} accuracy:" in out
    assert str(ckpt) in out
    loaded = load_model(ckpt)
    assert loaded.arch == "cnn2d" and loaded.class_names == ["high_grade", "low_grade"]
    assert loaded.preprocessing.size == [32, 32] and loaded.extra["seed"] == 3
    x = torch.randn(2, 1, 32, 32)
    assert loaded.model(x).shape == (2, 2)
    # Same seed, same weights: the command is deterministic.
    assert main([*args[:4], str(tmp_path / "again.pt"), *args[5:], "--quiet"]) == 0
    again = load_model(tmp_path / "again.pt").model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in loaded.model.state_dict().items())


def test_train_vit(tmp_path, capsys, data):
    ckpt = tmp_path / "vit.pt"
    assert (
        main(
            ["train", "--data", str(data), "--out", str(ckpt), "--arch", "vit2d", "--epochs", "1", "--quiet"]
        )
        == 0
    )
    loaded = load_model(ckpt)
    assert loaded.arch == "vit2d" and loaded.model(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    assert not list(loaded.model.stem.parameters()) and loaded.model.pool == "cls"
    # architecture options reach the factory and the checkpoint (the guided benchmark's ViT)
    options = ["--arch-option", "stem=2", "--arch-option", "pool=mean", "--arch-option", "patch_size=16"]
    args = ["train", "--data", str(data), "--out", str(ckpt), "--arch", "vit2d", "--epochs", "1", "--quiet"]
    assert main([*args, *options]) == 0
    loaded = load_model(ckpt)
    assert loaded.model.pool == "mean" and loaded.model.grid == [2, 2]
    assert [m.stride for m in loaded.model.stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (2, 2)]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guided", "--guidance-weight", "-1"], "--guidance-weight"),
        (["--arch", "nope"], "unknown architecture"),
        (["--arch", "cnn3d"], "cannot take 2D input"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--arch-option", "stem"], "NAME=VALUE"),
        (["--arch", "vit2d", "--arch-option", "nonsense=1"], "nonsense"),
        (["--arch", "vit2d", "--arch-option", "stem=9"], "2**stem"),
        (["--arch-option", "num_classes=3"], "set from the data"),
    ],
)
def test_train_bad_input_one_line_exit_2(tmp_path, capsys, data, extra, message):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medlrp: error:") and message in err
    assert not (tmp_path / "m.pt").exists()


def test_train_missing_data(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset folder not found" in err


def test_train_init_fine_tunes_a_checkpoint(tmp_path, capsys, data):
    first = tmp_path / "first.pt"
    base = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--quiet"]
    vit = ["--arch", "vit2d", "--arch-option", "stem=1", "--arch-option", "pool=mean"]
    assert main([*base, "--out", str(first), *vit]) == 0
    start = load_model(first)
    # a learning rate of ~0 leaves the weights where the checkpoint had them: --init is the start
    tuned = tmp_path / "tuned.pt"
    assert main([*base, "--out", str(tuned), "--init", str(first), "--lr", "1e-12", "--seed", "5"]) == 0
    loaded = load_model(tuned)
    assert loaded.arch == "vit2d" and loaded.arch_kwargs == start.arch_kwargs
    assert loaded.class_names == start.class_names and loaded.preprocessing == start.preprocessing
    assert loaded.extra["init"] == str(first)
    for k, v in start.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=1e-6)
    # fresh weights with the same seed are something else
    fresh = tmp_path / "fresh.pt"
    assert main([*base, "--out", str(fresh), *vit, "--lr", "1e-12", "--seed", "5"]) == 0
    other = load_model(fresh).model.state_dict()
    assert not torch.allclose(other["head.weight"], start.model.state_dict()["head.weight"])
    capsys.readouterr()
    # what --init refuses, each with one line and exit 2
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(start.model, torch.zeros(1, 1, 32, 32)), str(scripted))
    chest = tmp_path / "chest"
    write_phantom(chest, PhantomSpec(kind="chest", dims=2, n=12, seed=0, size=32))
    for extra, message in (
        (["--init", str(scripted)], "medlrp checkpoint"),
        (["--init", str(first), "--arch", "cnn2d"], "differs"),
        (["--init", str(first), "--arch-option", "stem=2"], "--arch-option"),
        (["--init", str(tmp_path / "none.pt")], "not found"),
    ):
        assert main([*base, "--out", str(tmp_path / "bad.pt"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    args = ["train", "--data", str(chest), "--out", str(tmp_path / "bad.pt"), "--init", str(first), "--quiet"]
    assert main(args) == 2
    assert "classes" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()
