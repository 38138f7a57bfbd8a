"""``medlrp train --guided``: --guidance-bound and --explain-ramp reach GuidedLoss and the checkpoint."""

import pytest
import torch

from medlrp.cli import main
from medlrp.commands import options as opt
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.errors import InputError
from medlrp.train.tensors import batches_per_epoch

BASE = ["train", "--epochs", "1", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom(root, PhantomSpec(kind="glioma", dims=2, n=12, seed=0, size=32))
    return root


def _extra(path):
    return torch.load(path, weights_only=True)["extra"]


def test_bound_and_ramp_land_in_the_loss_and_the_checkpoint(tmp_path, data):
    train_cases = sum(1 for p in (data / "train").rglob("*.png") if not p.stem.endswith("_mask"))
    per_epoch = batches_per_epoch(train_cases, 4)
    bound = ["--guidance-bound", "0.5", "--explain-ramp", "1"]
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
    # the bound acts: a CNN (unbounded under "auto") logs the bounded step's gradient ratio only when
    # a number is given
    assert "guidance_grad_ratio" in bounded["history"][0]
    assert "guidance_grad_ratio" not in extras["none"]["history"][0]
    assert "guidance_grad_ratio" not in extras["default"]["history"][0]


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
