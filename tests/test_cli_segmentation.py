"""Segmentation on the command line: `train --task segmentation`, `explain --region`, `batch`, and errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medlrp.cli import main
from medlrp.errors import InputError
from medlrp.io import read_image
from medlrp.models import load_model
from medlrp.pipeline import prepare
from medlrp.region_case import positive_shares, resolve_region
from medlrp.viz.overlay import overlay_png

TINY = ("--arch-option", "width=4", "--arch-option", "depth=2")


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _phantom_and_model(root: Path, dims: int, size: int) -> tuple[Path, Path]:
    data, ckpt = root / f"data{dims}", root / f"seg{dims}.pt"
    assert (
        main(
            ["phantom", "--out", str(data), "--dims", str(dims), "--n", "10", "--size", str(size), "--quiet"]
        )
        == 0
    )
    args = [
        "train",
        "--task",
        "segmentation",
        "--data",
        data,
        "--out",
        ckpt,
        "--epochs",
        "1",
        "--batch-size",
        "3",
    ]
    assert main([str(a) for a in (*args, *TINY, "--quiet")]) == 0
    return data, ckpt


@pytest.fixture(scope="module")
def seg2d(tmp_path_factory) -> tuple[Path, Path]:
    return _phantom_and_model(tmp_path_factory.mktemp("seg2d"), 2, 32)


@pytest.fixture(scope="module")
def seg3d(tmp_path_factory) -> tuple[Path, Path]:
    return _phantom_and_model(tmp_path_factory.mktemp("seg3d"), 3, 16)


def _first_case(data: Path, ext: str) -> tuple[Path, Path]:
    image = sorted(p for p in (data / "test" / "high_grade").glob(f"*{ext}") if "_mask" not in p.name)[0]
    return image, image.with_name(image.name.replace(ext, f"_mask{ext}"))


def _output(ckpt: Path, image: Path) -> torch.Tensor:
    loaded = load_model(ckpt)
    with torch.no_grad():
        return loaded.model(prepare(loaded, read_image(image)))


def _record(out: Path) -> dict:
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert len(cases) == 1
    return cases[0]


def test_train_writes_a_segmentation_checkpoint(seg3d, tmp_path):
    data, ckpt = seg3d
    loaded = load_model(ckpt)
    assert loaded.task == "segmentation" and loaded.arch == "unet3d"
    assert loaded.class_names == ["background", "tumour"]  # the phantom's dataset.json names its masks
    assert loaded.arch_kwargs["width"] == 4 and loaded.arch_kwargs["num_classes"] == 2
    payload = torch.load(ckpt, weights_only=True)
    assert payload["task"] == "segmentation" and set(payload["extra"]["dice"]) == {"train", "val", "test"}
    assert all(0.0 <= v <= 1.0 for v in payload["extra"]["dice"].values())
    assert _output(ckpt, _first_case(data, ".nii.gz")[0]).shape == (1, 2, 16, 16, 16)
    # a checkpoint written before tasks existed (no "task" entry) loads as a classifier
    del payload["task"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").task == "classification"


def test_train_class_labelling_and_usage_errors(seg2d, tmp_path, capsys):
    data, _ = seg2d
    out = tmp_path / "cls.pt"
    code, stdout, _ = _run(
        capsys, "train", "--task", "segmentation", "--seg-labels", "class", "--data", data, "--out", out,
        "--epochs", "1", "--batch-size", "3", "--dice-weight", "0", *TINY, "--quiet",
    )  # fmt: skip
    assert code == 0 and "test dice:" in stdout
    assert load_model(out).class_names == ["background", "high_grade", "low_grade"]
    for extra in (
        ("--task", "detection"),
        ("--task", "segmentation", "--guided"),
        ("--task", "segmentation", "--seg-labels", "x"),
    ):
        code, _, err = _run(
            capsys, "train", "--data", data, "--out", tmp_path / "x.pt", "--epochs", "1", *extra
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("medlrp: error:")
    assert not (tmp_path / "x.pt").exists()


def test_explain_predicted_region_3d(seg3d, tmp_path, capsys):
    data, ckpt = seg3d
    image, _ = _first_case(data, ".nii.gz")
    output = _output(ckpt, image)
    winner = int(torch.bincount(output.argmax(1).reshape(-1), minlength=2).argmax())  # never an empty region
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "explain", "--model", ckpt, image, "--region", "predicted", "--target", winner,
        "--method", "lrp,gradcam", "--composite", "epsilon", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    record = _record(out)
    region = (output.argmax(1) == winner)[0]
    assert record["task"] == "segmentation" and record["target"] == winner
    assert record["region"]["source"] == "predicted" and record["region"]["voxels"] == int(region.sum())
    assert record["region"]["logit_sum"] == pytest.approx(float(output[0, winner][region].sum()), rel=1e-4)
    assert record["predicted_voxels"] == {
        "background": int((output.argmax(1) == 0).sum()),
        "tumour": int((output.argmax(1) == 1).sum()),
    }
    assert record["outputs"]["lrp"]["options"]["composite"] == "epsilon" and record["method"] == "lrp"
    source = nib.load(image)
    for method in ("lrp", "gradcam"):
        entry = record["outputs"][method]
        nifti = nib.load(out / entry["relevance"])
        np.testing.assert_allclose(nifti.affine, source.affine, atol=1e-6)
        assert nifti.shape == source.shape
        relevance = np.asarray(nifti.dataobj)
        assert np.isfinite(relevance).all() and np.abs(relevance).max() > 0
        shares = entry["region_metrics"]
        assert shares["positive_share_region"] <= shares["positive_share_margin"] <= 1.0 + 1e-9
        assert (out / entry["overlay"]).is_file()
    assert (out / "report.html").is_file() and "summed over the predicted region" in (
        out / "report.html"
    ).read_text()


def test_explain_mask_region_2d_png(seg2d, tmp_path, capsys):
    data, ckpt = seg2d
    image, mask = _first_case(data, ".png")
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "explain", "--model", ckpt, image, "--region", mask, "--target", "tumour", "--out", out
    )
    assert code == 0, err
    record = _record(out)
    truth = np.asarray(PILImage.open(mask)) > 0
    assert record["target"] == 1 and record["target_name"] == "tumour"
    assert record["region"]["source"] == mask.name and record["region"]["voxels"] == int(truth.sum())
    output = _output(ckpt, image)
    assert record["region"]["logit_sum"] == pytest.approx(
        float(output[0, 1][torch.as_tensor(truth)].sum()), rel=1e-4
    )
    nifti = nib.load(out / record["outputs"]["lrp"]["relevance"])
    np.testing.assert_allclose(nifti.affine, read_image(image).affine, atol=1e-6)
    assert nifti.shape == truth.shape
    with PILImage.open(out / record["outputs"]["lrp"]["overlay"]) as im:
        assert im.format == "PNG" and im.width > 200


def test_explain_region_errors(seg2d, tmp_path, capsys):
    data, ckpt = seg2d
    image, mask = _first_case(data, ".png")
    PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "empty.png")
    PILImage.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "small.png")
    for region, words in (("empty.png", "empty"), ("small.png", "shape (16, 16)")):
        code, _, err = _run(
            capsys, "explain", "--model", ckpt, image, "--region", tmp_path / region, "--out", tmp_path / "o"
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and region in err
    code, _, err = _run(
        capsys, "explain", "--model", ckpt, image, "--target", "necrosis", "--out", tmp_path / "o"
    )
    assert code == 2 and "necrosis" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "evaluate", "--model", ckpt, "--data", data, "--out", tmp_path / "ev")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "classifiers" in err
    # a classifier refuses --region before any work
    cls = tmp_path / "cls.pt"
    assert (
        main(
            ["train", "--data", str(data), "--out", str(cls), "--epochs", "1", "--batch-size", "4", "--quiet"]
        )
        == 0
    )
    capsys.readouterr()
    code, out, err = _run(
        capsys, "explain", "--model", cls, image, "--region", "predicted", "--out", tmp_path / "c"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "classifier" in err
    assert not (tmp_path / "c").exists()
    code, _, err = _run(
        capsys, "batch", "--model", cls, "--data", data / "test", "--out", tmp_path / "b", "--region", "mask"
    )
    assert code == 2 and "classifier" in err


def test_empty_predicted_region_is_an_input_error():
    output = torch.zeros(1, 3, 4, 4)
    output[:, 0] = 1.0  # the background wins everywhere
    with pytest.raises(InputError, match="no voxel is predicted as class 'b'"):
        resolve_region(output, 1, "predicted", ["background", "b", "c"], "scan.png")
    assert int(resolve_region(output, 0, None, [], "scan.png").mask.sum()) == 16
    sigmoid_head = torch.full((1, 1, 4, 4), -1.0)
    sigmoid_head[..., 1, 2] = 0.5  # a one-channel output: the region is where its logit is > 0
    region = resolve_region(sigmoid_head, None, "predicted", [], "scan.png")
    assert region.target == 0 and region.mask[0, 0].nonzero().tolist() == [[1, 2]]


def test_batch_segmentation_folder(seg2d, tmp_path, capsys):
    data, ckpt = seg2d
    for region in ("predicted", "mask"):
        out = tmp_path / region
        code, _, err = _run(
            capsys, "batch", "--model", ckpt, "--data", data / "test", "--out", out, "--region", region,
            "--target", "0" if region == "predicted" else "1", "--workers", "0", "--writers", "0",
            "--no-progress",
        )  # fmt: skip
        assert code == 0, err
        records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
        assert len(records) == 2
        for record in records:
            source = data / "test" / record["source"]
            assert record["region"]["source"] == (
                "predicted" if region == "predicted" else Path(record["mask"]).name
            )
            if region == "mask":
                assert record["region"]["voxels"] == int(
                    (np.asarray(PILImage.open(data / "test" / record["mask"])) > 0).sum()
                )
            entry = record["methods"]["lrp"]
            nifti = nib.load(out / entry["relevance"])
            np.testing.assert_allclose(nifti.affine, read_image(source).affine, atol=1e-6)
            assert (out / entry["overlay"]).is_file() and "positive_share_region" in entry["region_metrics"]


def test_overlay_outlines_the_region():
    rng = np.random.default_rng(0)
    image, relevance = rng.random((32, 32)), rng.standard_normal((32, 32))
    outline = np.zeros((32, 32))
    outline[10:20, 12:22] = 1
    plain = overlay_png(image, relevance, np.eye(4), (0.0, 1.0))
    drawn = np.asarray(
        PILImage.open(io.BytesIO(overlay_png(image, relevance, np.eye(4), (0.0, 1.0), mask=outline)))
    )
    base = np.asarray(PILImage.open(io.BytesIO(plain)))
    green = (drawn[..., 1] > 150) & (drawn[..., 0] < 80) & (drawn[..., 2] < 80)
    assert green.sum() > 50 and ((base[..., 1] > 150) & (base[..., 0] < 80) & (base[..., 2] < 80)).sum() == 0


def test_positive_shares_against_hand_counts():
    relevance = np.zeros((9, 9))
    relevance[4, 4] = 2.0  # in the region
    relevance[4, 6] = 1.0  # 2 voxels away: in the margin
    relevance[2, 2] = 1.0  # 2.83 voxels away: outside the (Euclidean) margin
    relevance[0, 0], relevance[1, 1] = 1.0, -5.0
    mask = np.zeros((9, 9))
    mask[4, 4] = 1
    shares = positive_shares(relevance, mask, margin=2)
    assert shares["positive_share_region"] == pytest.approx(2 / 5)
    assert shares["positive_share_margin"] == pytest.approx(3 / 5)
    assert positive_shares(-np.abs(relevance), mask)["positive_share_region"] is None


def test_torchscript_monai_unet_explained_by_its_output_shape(seg2d, tmp_path, capsys):
    """A MONAI UNet as TorchScript: no task recorded; its (N, C, H, W) output makes it a segmentation."""
    from monai.networks.nets import UNet

    data, _ = seg2d
    image, _ = _first_case(data, ".png")
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1)
    path = tmp_path / "unet.ts"
    torch.jit.script(net.eval()).save(str(path))
    loaded = load_model(path)
    assert loaded.task == "unknown"
    with torch.no_grad():
        output = loaded.model(prepare(loaded, read_image(image)))
    winner = int(torch.bincount(output.argmax(1).reshape(-1), minlength=2).argmax())
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "explain", "--model", path, image, "--target", winner, "--method", "gradient", "--out", out
    )
    assert code == 0, err
    record = _record(out)
    assert record["task"] == "segmentation" and record["region"]["source"] == "predicted"
    assert record["region"]["model_voxels"] == int(
        (output.argmax(1) == winner).sum()
    )  # the 64x64 default grid
