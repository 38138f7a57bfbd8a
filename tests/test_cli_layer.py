"""``--layer`` on the command line (explain, batch), and CAMs of TorchScript models refused in one line.

Tiny random checkpoints (a 2D U-Net segmenting 32x32 images, a small CNN classifying them): the layer
reaches the CAM methods (recorded per method in results.json and the batch index), a bad name is one
line naming it with the closest names, exit code 2, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import medlrp
from medlrp.cli import main
from medlrp.models import Preprocessing, save_checkpoint
from medlrp.registry import ARCHITECTURES

SIZE = 32


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A segmentation and a classification checkpoint, two images in class folders, a TorchScript model."""
    root = tmp_path_factory.mktemp("layer")
    pre = Preprocessing(dims=2, channels=1, size=[SIZE, SIZE], intensity="zscore")
    torch.manual_seed(0)
    seg_kwargs = {"in_channels": 1, "num_classes": 2, "width": 4, "depth": 2}
    seg = ARCHITECTURES.get("unet2d")(**seg_kwargs)
    names = ["background", "lesion"]
    save_checkpoint(root / "seg.pt", seg, "unet2d", seg_kwargs, pre, names, task="segmentation")
    cls_kwargs = {"in_channels": 1, "num_classes": 2, "width": 4, "stages": 2}
    cnn = ARCHITECTURES.get("cnn2d")(**cls_kwargs)
    save_checkpoint(root / "cnn.pt", cnn, "cnn2d", cls_kwargs, pre, ["a", "b"])
    torch.jit.script(cnn.eval()).save(str(root / "cnn.ts"))
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / "data" / "a").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
        PILImage.fromarray(pixels).save(root / "data" / "a" / f"case{k}.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    PILImage.fromarray(mask).save(root / "region.png")
    return {
        "seg": root / "seg.pt",
        "cnn": root / "cnn.pt",
        "ts": root / "cnn.ts",
        "data": root / "data",
        "image": root / "data" / "a" / "case0.png",
        "region": root / "region.png",
    }


def _layer(out: Path, method: str = "gradcam") -> str:
    return json.loads((out / "results.json").read_text())["cases"][0]["outputs"][method]["options"]["layer"]


def test_explain_layer_reaches_the_cam_and_the_default_is_the_bottleneck(files, tmp_path, capsys):
    args = ("explain", "--model", files["seg"], files["image"], "--region", files["region"], "--target", "1")
    code, _, err = _run(capsys, *args, "--method", "gradcam,lrp", "--out", tmp_path / "default")
    assert code == 0, err
    assert _layer(tmp_path / "default") == "bottleneck"
    code, _, err = _run(capsys, *args, "--method", "gradcam,lrp", "--layer", "head", "--out", tmp_path / "h")
    assert code == 0, err
    assert _layer(tmp_path / "h") == "head"
    assert (
        "layer"
        not in json.loads((tmp_path / "h" / "results.json").read_text())["cases"][0]["outputs"]["lrp"][
            "options"
        ]
    )
    code, _, err = _run(capsys, *args, "--method", "gradcam", "--layer", "decoders.-1", "--out", tmp_path)
    assert code == 0, err
    assert _layer(tmp_path) == "decoders.-1"


@pytest.mark.parametrize(
    ("model", "layer", "methods", "words"),
    [
        (
            "seg",
            "decoder.0",
            "gradcam",
            ["--layer 'decoder.0'", "no submodule 'decoder'", "close: decoders.0"],
        ),
        ("seg", "bottleneck.9", "hirescam", ["--layer 'bottleneck.9'", "bottleneck (ConvBlock)"]),
        ("cnn", "head", "lrp", ["--layer head applies to the CAM methods", "drop --layer"]),
        ("ts", None, "gradcam", ["cnn.ts: a TorchScript model", "gradcam need(s) its layers"]),
        ("ts", None, "lrp", ["cnn.ts: a TorchScript model", "lrp need(s) its layers"]),
    ],
)
def test_bad_layer_or_torchscript_cam_is_one_line_exit_2_before_any_work(
    files, tmp_path, capsys, model, layer, methods, words
):
    out = tmp_path / "out"
    extra = ("--layer", layer) if layer is not None else ()
    code, stdout, err = _run(
        capsys, "explain", "--model", files[model], files["image"], "--method", methods, "--out", out, *extra
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medlrp: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in err and not out.exists()


def test_torchscript_keeps_the_gradient_methods(files, tmp_path, capsys):
    code, _, err = _run(
        capsys, "explain", "--model", files["ts"], files["image"], "--method", "gradient", "--out", tmp_path
    )
    assert code == 0, err


def test_cams_of_torchscript_are_refused_in_the_api_and_a_scripted_layer_by_name():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()  # fmt: skip
    x = torch.randn(1, 1, 12, 12)
    for method in ("gradcam", "scorecam"):
        with pytest.raises(medlrp.InputError, match=f"{method}: a CAM reads .* TorchScript model takes none"):
            medlrp.explain(torch.jit.script(net), x, 1, method=method)
    traced = torch.jit.trace(net, x)
    with pytest.raises(medlrp.InputError, match="TorchScript"):
        medlrp.explain(traced, x, 1, method="gradcam", layer="0")
    # a Python model around a scripted part: the Python layers work, the scripted one is named
    outer = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.jit.script(net)).eval()
    e = medlrp.explain(outer, x, 1, method="gradcam", layer="0")
    assert e.options["layer"] == "0" and torch.isfinite(e.relevance).all()
    with pytest.raises(medlrp.InputError, match="layer '1.0' is TorchScript"):
        medlrp.explain(outer, x, 1, method="gradcam", layer="1.0")


def test_batch_layer_is_recorded_checked_and_part_of_the_run_settings(files, tmp_path, capsys):
    out = tmp_path / "b"
    base = ("batch", "--model", files["cnn"], "--data", files["data"], "--out", out, "--no-progress")
    base = (*base, "--workers", "0", "--writers", "0", "--method", "gradcam")
    code, _, err = _run(capsys, *base, "--layer", "features.0")
    assert code == 2 and "has no submodule 'features'; its submodules: " in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "run.json").exists()
    layer = _first_conv(files["cnn"])
    code, _, err = _run(capsys, *base, "--layer", layer)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["methods"]["gradcam"]["options"]["layer"] for r in records} == {layer}
    code, _, err = _run(capsys, *base)  # the default layer: another run, refused in that folder
    assert code == 2 and "layer" in err and "differ" in err, err


def _first_conv(checkpoint: Path) -> str:
    model = medlrp.load_model(checkpoint).model
    return next(name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


def test_evaluate_takes_the_same_layer_option(files, tmp_path, capsys):
    base = ("evaluate", "--model", files["cnn"], "--data", files["data"], "--no-progress")
    base = (*base, "--no-randomisation")
    code, _, err = _run(capsys, *base, "--methods", "gradcam", "--layer", "stage.0", "--out", tmp_path / "b")
    assert code == 2 and "--layer 'stage.0'" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _run(capsys, *base, "--methods", "gradient", "--layer", "x", "--out", tmp_path / "nocam")
    assert code == 2 and "applies to the CAM methods" in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "nocam").exists()
    layer = _first_conv(files["cnn"])
    out = tmp_path / "ok"
    code, _, err = _run(capsys, *base, "--methods", "gradcam,gradient", "--layer", layer, "--out", out)
    assert code == 0, err
    data = json.loads((out / "evaluation.json").read_text())
    assert data["methods"] == ["gradcam", "gradient"]
    assert data["method_options"] == {"gradcam": {"layer": layer}}
