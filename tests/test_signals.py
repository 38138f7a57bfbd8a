"""Signals end to end: the ECG phantom, WFDB/.npy reading, cnn1d/lstm1d, the CLI and 1D metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medlrp
from medlrp.cli import main
from medlrp.data import FolderDataset
from medlrp.data.phantom.ecg import ST_LEADS, ecg_case
from medlrp.errors import InputError
from medlrp.io import read_image, write_npy, write_wfdb
from medlrp.metrics import pixel_flipping, region_perturbation, relevance_mass_accuracy
from medlrp.models import Preprocessing, load_model, save_checkpoint
from medlrp.pipeline_signal import relevance_csv, to_samples
from medlrp.registry import ARCHITECTURES


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the phantom ------------------------------------------------------------------------------------------
def test_ecg_classes_differ_only_inside_the_mask():
    elevated = ecg_case([0, 5], (1000,), 1, False)
    normal = ecg_case([0, 5], (1000,), 0, False)
    diff = np.abs(elevated.image - normal.image)
    assert elevated.image.shape == (12, 1000) and elevated.mask.shape == (12, 1000)
    assert diff[elevated.mask == 0].max() < 1e-6
    assert diff[elevated.mask == 1].max() > 0.1
    assert set(np.flatnonzero(elevated.mask.any(axis=1))) == set(ST_LEADS)
    assert np.array_equal(elevated.image, ecg_case([0, 5], (1000,), 1, False).image)  # deterministic


def test_ecg_shortcut_spike_lies_outside_the_mask():
    case = ecg_case([3, 1], (1000,), 0, True)
    plain = ecg_case([3, 1], (1000,), 0, False)
    changed = np.abs(case.image - plain.image) > 1.0
    assert changed.any() and changed.all(axis=0).sum() == 2  # every lead, two samples
    assert not (changed & (case.mask == 1)).any()


# -- reading -----------------------------------------------------------------------------------------------
def test_wfdb_round_trip_and_geometry(tmp_path):
    signal = ecg_case([1, 2], (500,), 1, False).image
    path = write_wfdb(tmp_path / "rec.hea", signal, fs=100.0)
    image = read_image(path)
    assert image.kind == "wfdb" and image.array.shape == (12, 500) and image.spacing == (10.0,)
    assert image.meta["leads"][6] == "V1" and image.meta["fs"] == 100.0
    np.testing.assert_allclose(image.array, signal, atol=2e-3)  # 16-bit samples


def test_npy_reader(tmp_path):
    write_npy(tmp_path / "a.npy", np.arange(300, dtype=np.float64).reshape(3, 100))
    image = read_image(tmp_path / "a.npy")
    assert image.array.shape == (3, 100) and image.array.dtype == np.float32
    write_npy(tmp_path / "b.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"b\.npy: a signal must be"):
        read_image(tmp_path / "b.npy")


@pytest.mark.parametrize(
    "header", ["rec 12 100\n", "rec x y z\n", "", "rec 1 100 500\nrec.dat 16 200 16 0 0 0 0 I\n"]
)
def test_malformed_wfdb_header_is_one_line_exit_2(tmp_path, capsys, header):
    (tmp_path / "rec.hea").write_text(header)
    with pytest.raises(InputError, match=r"rec\.hea: malformed WFDB record"):
        read_image(tmp_path / "rec.hea")
    model = tmp_path / "m.pt"
    save_checkpoint(
        model,
        ARCHITECTURES.get("cnn1d")(in_channels=1).eval(),
        "cnn1d",
        {"in_channels": 1},
        Preprocessing(dims=1, channels=1, size=[500]),
        ["a", "b"],
    )
    code, out, err = _run(
        capsys, "explain", "--model", str(model), str(tmp_path / "rec.hea"), "--out", str(tmp_path / "out")
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "malformed WFDB record" in err and "Traceback" not in err


# -- architectures -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cnn1d", "lstm1d"])
def test_signal_architectures(tmp_path, arch):
    torch.manual_seed(0)
    model = ARCHITECTURES.get(arch)(in_channels=12, num_classes=3)
    x = torch.randn(2, 12, 256)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    pre = Preprocessing(dims=1, channels=12, size=[256])
    path = save_checkpoint(tmp_path / "m.pt", model, arch, {"num_classes": 3}, pre, ["a", "b", "c"])
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    e = medlrp.explain(model, x, method="lrp")
    assert e.relevance.shape == x.shape and torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


def test_lstm1d_lrp_fast_equals_differentiable():
    torch.manual_seed(1)
    model = ARCHITECTURES.get("lstm1d")(in_channels=12, num_classes=2, bidirectional=True).double().eval()
    x = torch.randn(2, 12, 64, dtype=torch.float64)
    lrp = medlrp.LRP(model)
    assert lrp.composite.name == "epsilon"
    torch.testing.assert_close(
        lrp.relevance(x, 1), lrp.relevance(x, 1, create_graph=True), rtol=1e-9, atol=1e-13
    )


# -- outputs and metrics on 1D -----------------------------------------------------------------------------
def test_resampling_keeps_each_leads_total_and_csv_columns():
    r = np.random.default_rng(0).normal(size=(3, 100))
    for samples in (50, 100, 400):
        out = to_samples(r, samples)
        assert out.shape == (3, samples)
        np.testing.assert_allclose(out.sum(1), r.sum(1), rtol=1e-9, atol=1e-9)
    lines = relevance_csv(r, ["I", "II", "III"], 10.0).splitlines()
    assert lines[0] == "sample,time_ms,I,II,III" and len(lines) == 101
    assert [float(v) for v in lines[2].split(",")][:2] == [1.0, 10.0]


class WindowSum(torch.nn.Module):
    """Logit 1 is the sum of lead 0 over samples 20..29; logit 0 is a constant."""

    def forward(self, x):
        s = x[:, 0, 20:30].sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_sample_flipping_and_masks_over_time():
    x = torch.ones(2, 3, 64)
    model = WindowSum()
    e = medlrp.explain(model, x, target=1, method="input-x-gradient")
    mask = torch.zeros(2, 3, 64)
    mask[:, 0, 20:30] = 1
    assert torch.allclose(relevance_mass_accuracy(e.relevance, mask), torch.ones(2))
    morf = pixel_flipping(model, x, e.relevance, 1, features_per_step=10, softmax=False)
    rand = pixel_flipping(model, x, e.relevance, 1, features_per_step=10, softmax=False, order="random")
    assert morf.shape == (2, 64 * 3 // 10 + 2)
    assert torch.allclose(morf[:, 0], torch.full((2,), 10.0)) and torch.allclose(morf[:, 1], torch.zeros(2))
    assert (rand[:, 1] > 0).all()  # a random order keeps most of the window after one step
    regions = region_perturbation(model, x, e.relevance, 1, patch_size=8, steps=3, softmax=False)
    assert torch.allclose(regions[:, -1], torch.zeros(2))  # the two patches over the window go first


# -- the CLI end to end ------------------------------------------------------------------------------------
def test_cli_phantom_train_explain_signals(tmp_path, capsys):
    data, model = tmp_path / "ecg", tmp_path / "m.pt"
    code, out, _ = _run(
        capsys, "phantom", "--out", str(data), "--kind", "ecg", "--n", "10", "--size", "256", "--quiet"
    )
    assert code == 0 and "ecg" in out
    info = json.loads((data / "dataset.json").read_text())
    assert info["classes"] == ["normal", "st_elevation"] and info["image_format"] == "wfdb"
    records = sorted((data / "train").glob("*/*.hea"))
    assert records and all(r.with_suffix(".dat").is_file() for r in records)
    assert all((r.parent / f"{r.stem}_mask.npy").is_file() for r in records)
    case0 = FolderDataset(data, split="train")[0]
    assert case0.x.shape == (12, 256) and case0.mask.shape == (12, 256)  # masks per lead
    assert case0.mask[list(ST_LEADS)].sum() > 0 and case0.mask[:6].sum() == 0
    code, _, err = _run(
        capsys, "train", "--data", str(data), "--arch", "lstm1d", "--epochs", "1", "--out", str(model)
    )
    assert code == 0, err
    case = sorted((data / "test" / "st_elevation").glob("*.hea"))[0]
    out_dir = tmp_path / "out"
    code, _, err = _run(
        capsys, "explain", "--model", str(model), str(case), "--method", "lrp,gradient", "--out", str(out_dir)
    )
    assert code == 0, err
    result = json.loads((out_dir / "results.json").read_text())["cases"][0]
    relevance = np.load(out_dir / f"{case.stem}.lrp.relevance.npy")  # several methods: names carry them
    assert relevance.shape == (12, 256)
    assert result["outputs"]["lrp"]["relevance_sum"] == pytest.approx(float(relevance.sum()), rel=1e-4)
    assert len(result["leads"]["lrp"]) == 12 and result["leads"]["lrp"][6]["lead"] == "V1"
    csv = (out_dir / f"{case.stem}.lrp.relevance.csv").read_text().splitlines()
    assert len(csv) == 257 and csv[0].startswith("sample,time_ms,I,II")
    assert (out_dir / f"{case.stem}.lrp.overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / f"{case.stem}.gradient.relevance.npy").is_file()
    assert (out_dir / "report.html").is_file()
