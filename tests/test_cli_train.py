import pytest
import torch

from medlrp.cli import main
from medlrp.commands import options as opt
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.errors import InputError
from medlrp.models import load_model
from medlrp.train.tensors import batches_per_epoch


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


# --guided options: --guidance-bound and --explain-ramp reach GuidedLoss and the checkpoint
BASE = ["train", "--epochs", "1", "--batch-size", "4", "--quiet"]


def _extra(path):
    return torch.load(path, weights_only=True)["extra"]


def test_bound_and_ramp_land_in_the_loss_and_the_checkpoint(tmp_path, data):
    train_cases = sum(1 for p in (data / "train").rglob("*.png") if not p.stem.endswith("_mask"))
    per_epoch = batches_per_epoch(train_cases, 4)
    bound = ["--guidance-bound", "0.5", "--explain-ramp", "1", "--counterfactual-weight", "0"]
    runs = {"default": [], "bound": bound, "none": ["--guidance-bound", " NONE "]}
    extras = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.pt"
        assert main([*BASE, "--data", str(data), "--out", str(out), "--guided", *flags]) == 0
        extras[name] = _extra(out)
    bounded = extras["bound"]
    assert bounded["guidance_bound"] == 0.5 and bounded["explain_ramp_epochs"] == 1
    assert bounded["explain_ramp_steps"] == per_epoch > 0 and bounded["explain_start_steps"] == 0
    assert extras["none"]["guidance_bound"] is None and extras["default"]["guidance_bound"] == "auto"
    assert extras["default"]["explain_ramp_epochs"] == 0 == extras["default"]["explain_ramp_steps"]
    # the label on the reference: on by default (weight 3), off with 0, and logged only when on
    assert extras["default"]["counterfactual_weight"] == 3.0 and bounded["counterfactual_weight"] == 0.0
    assert "counterfactual_ce" in extras["default"]["history"][0]
    assert "counterfactual_ce" not in bounded["history"][0]
    # the bound acts: the CNN logs the bounded step's gradient ratio under "auto" (its default relevance
    # is bounded) and under a number, not with "none"
    assert "guidance_grad_ratio" in bounded["history"][0]
    assert "guidance_grad_ratio" in extras["default"]["history"][0]
    assert "guidance_grad_ratio" not in extras["none"]["history"][0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guided", "--guidance-bound", "-1"], "--guidance-bound takes auto, none or a number >= 0"),
        (["--guided", "--guidance-bound", "strict"], "--guidance-bound takes auto, none or a number"),
        (["--guided", "--guidance-bound", "nan"], "--guidance-bound"),
        (["--guided", "--guidance-bound", "inf"], "--guidance-bound"),
        (["--guided", "--explain-ramp", "-1"], "--explain-ramp must be >= 0 epochs"),
        (["--guided", "--explain-ramp", "two"], "--explain-ramp"),
        (["--guided", "--mask-margin", "-1"], "--mask-margin must be >= 0"),
        (["--guided", "--explain-start", "-1"], "--explain-start must be >= 0 epochs"),
        (["--guidance-bound", "0.3"], "--guidance-bound applies to --guided only"),
        (["--explain-ramp", "2"], "--explain-ramp applies to --guided only"),
        (["--mask-margin", "2"], "--mask-margin applies to --guided only"),
        (["--explain-start", "1"], "--explain-start applies to --guided only"),
        (["--guided", "--counterfactual-weight", "-1"], "--counterfactual-weight must be >= 0"),
        (["--counterfactual-weight", "1"], "--counterfactual-weight applies to --guided only"),
    ],
)
def test_bad_guided_options_one_line_exit_2_before_any_work(tmp_path, capsys, flags, message):
    # the data folder does not exist: the option is refused before the data is read
    out = tmp_path / "m.pt"
    assert main([*BASE, "--data", str(tmp_path / "none"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medlrp: error:") and message in err, err
    assert "not found" not in err and not out.exists()


@pytest.mark.parametrize(
    "text, value", [("auto", "auto"), (" Auto ", "auto"), ("none", None), ("0", 0.0), ("1e-1", 0.1)]
)
def test_auto_none_or_number(text, value):
    assert opt.auto_none_or_number(text, "--x") == value


@pytest.mark.parametrize("text", ["", "-0.1", "nan", "inf", "1,2", "off"])
def test_auto_none_or_number_refuses(text):
    with pytest.raises(InputError, match="--x takes auto, none or a number >= 0"):
        opt.auto_none_or_number(text, "--x")


def test_help_names_the_options(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--guidance-bound" in text and "auto" in text and "--explain-ramp" in text
