"""`medlrp explain` end to end on the example files pydicom and nibabel ship, and on bad input."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

import medlrp
import test_io_support as S
from medlrp.cli import main
from medlrp.io import read_image

NIBABEL = Path(data_path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_case(out: Path, record: dict, source: Path, index: int | None = None) -> None:
    """The relevance NIfTI is aligned with the input; the overlay exists; the record is complete."""
    image = read_image(source, index=index)
    nifti = nib.load(out / record["outputs"][record["method"]]["relevance"])
    np.testing.assert_allclose(nifti.affine, image.affine, atol=1e-5)
    assert tuple(nifti.shape) == image.array.shape[1:]
    relevance = np.asarray(nifti.dataobj)
    assert np.isfinite(relevance).all() and np.abs(relevance).max() > 0
    with PILImage.open(out / record["outputs"][record["method"]]["overlay"]) as im:
        assert im.format == "PNG" and im.width > 200
    probs = record["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["prediction_name"] == max(probs, key=probs.get)
    assert record["target"] == record["prediction"]
    assert record["method"] == S.method() and record["timing"]["total_s"] > 0
    assert record["outputs"][record["method"]]["relevance_sum"] == pytest.approx(
        float(relevance.sum()), rel=1e-3, abs=1e-6
    )


def test_explain_2d_dicom_and_png(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    png = tmp_path / "xray16.png"
    PILImage.fromarray((np.random.default_rng(0).random((40, 48)) * 60000).astype(np.uint16)).save(png)
    ct, mr = Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))
    out = tmp_path / "out"
    methods = f"{S.method()},gradient"
    code, stdout, err = _run(
        capsys, "explain", "--model", ckpt, ct, mr, png, "--method", methods, "--out", out
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    cases = {c["case"]: c for c in results["cases"]}
    assert set(cases) == {"CT_small", "MR_small", "xray16"} and results["failures"] == []
    for name, source in (("CT_small", ct), ("MR_small", mr), ("xray16", png)):
        _check_case(out, cases[name], source)
        for method in (S.method(), "gradient"):  # several methods: every file carries its method
            assert (out / f"{name}.{method}.relevance.nii.gz").is_file()
            assert (out / f"{name}.{method}.overlay.png").is_file()
        assert not (out / f"{name}.relevance.nii.gz").exists() and not (out / f"{name}.overlay.png").exists()
        assert set(cases[name]["outputs"]) == {S.method(), "gradient"}
    html = (out / "report.html").read_text()
    assert html.count('class="case"') == 3 and "http://" not in html and "https://" not in html
    assert not list(out.glob(".*part*")), "temporary files left behind"
    # records read back from results.json (no pictures kept) still give a report with the overlay files
    from medlrp.report import build_report

    again = build_report(results["cases"], out_dir=out)
    assert again.count('alt="gradient overlay"') == 3 and 'class="slice"' not in again


def test_explain_3d_inputs_and_bad_files_in_one_run(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m3.pt", dims=3, size=12)
    series = S.write_series(
        tmp_path / "inputs" / "series01",
        np.random.default_rng(2).integers(0, 2000, (6, 20, 18)),
        origin=(10.0, -20.0, 30.0),
        orientation=(1, 0, 0, 0, 1, 0),
        spacing=(0.9, 0.9),
        step=3.0,
    )
    nan = tmp_path / "inputs" / "nan.nii.gz"
    vol = np.ones((8, 8, 8), np.float32)
    vol[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nan)
    flat = tmp_path / "inputs" / "flat.png"
    PILImage.fromarray(np.zeros((16, 16), np.uint8)).save(flat)
    empty = tmp_path / "inputs" / "empty"
    empty.mkdir()
    four_d = tmp_path / "inputs" / "fmri.nii.gz"
    shutil.copy(NIBABEL / "example4d.nii.gz", four_d)
    rtdose = Path(get_testdata_file("rtdose.dcm"))
    anatomical = NIBABEL / "anatomical.nii"
    out = tmp_path / "out"
    args = [
        "explain",
        "--model",
        ckpt,
        rtdose,
        anatomical,
        series,
        nan,
        flat,
        empty,
        four_d,
        "--method",
        S.method(),
        "--out",
        out,
        "--index",
        "1",
    ]
    code, _, err = _run(capsys, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 3, err
    assert any("nan.nii.gz" in ln and "NaN" in ln for ln in lines)
    assert any("flat.png" in ln and "2D input" in ln and "3D" in ln for ln in lines)
    assert any("empty" in ln and "no images" in ln for ln in lines)
    results = json.loads((out / "results.json").read_text())
    cases = {c["case"]: c for c in results["cases"]}
    assert set(cases) == {"rtdose", "anatomical", "series01", "fmri"}
    assert len(results["failures"]) == 3
    _check_case(out, cases["rtdose"], rtdose)
    _check_case(out, cases["anatomical"], anatomical)
    _check_case(out, cases["series01"], series)
    _check_case(out, cases["fmri"], four_d, index=1)
    assert cases["fmri"]["options"]["index"] == 1
    # the series' relevance lands in the series' world frame (LPS origin (10, -20, 30) -> RAS (-10, 20, 30))
    np.testing.assert_allclose(nib.load(out / "series01.relevance.nii.gz").affine[:3, 3], [-10.0, 20.0, 30.0])
    html = (out / "report.html").read_text()
    # four volumes, each as three orthogonal planes with a slider each
    assert html.count('class="case"') == 4 and html.count('input class="slice"') == 12
    for plane in ("axial", "coronal", "sagittal"):
        assert html.count(f'<input class="slice" data-plane="{plane}"') == 4
    # without --index the 4D file is refused with a hint
    code, _, err = _run(
        capsys, "explain", "--model", ckpt, four_d, "--method", S.method(), "--out", tmp_path / "o2"
    )
    assert code == 2 and "fmri.nii.gz: 4D volume with 2 volumes; choose one with --index" in err


def test_no_identifier_in_any_output_byte(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    single = tmp_path / "in" / "slice.dcm"
    single.parent.mkdir()
    S.dicom_dataset(np.random.default_rng(3).integers(0, 3000, (24, 20)), secrets=S.SECRETS).save_as(
        single, enforce_file_format=True
    )
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "explain", "--model", ckpt, single, "--method", S.method(), "--out", out)
    assert code == 0, err
    secrets = [v.encode() for v in S.SECRETS.values()] + [b"Zyxwvut", b"Qwertina"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 4
    for path in files:
        raw = path.read_bytes()
        blobs = [raw, gzip.decompress(raw) if path.name.endswith(".gz") else b""]
        if path.suffix == ".png":
            with PILImage.open(path) as im:
                blobs.append(repr(im.info).encode())
        for blob in blobs:
            for secret in secrets:
                assert secret not in blob, f"{secret!r} found in {path.name}"
    for text in (stdout, err):
        assert not any(s.decode() in text for s in secrets)
    # with --keep-identifiers they are kept (and the search above would have found them)
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        ckpt,
        single,
        "--method",
        S.method(),
        "--out",
        tmp_path / "k",
        "--keep-identifiers",
    )
    assert code == 0, err
    assert b"PIDX9183746" in (tmp_path / "k" / "results.json").read_bytes()
    assert b"PIDX9183746" in (tmp_path / "k" / "report.html").read_bytes()


def test_model_loading_pickles_need_trust(tmp_path, capsys):
    png = tmp_path / "a.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)).save(png)
    model = S.Tiny(1, 3, 2)
    torch.save(model, tmp_path / "pickled.pt")
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        tmp_path / "pickled.pt",
        png,
        "--method",
        S.method(),
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and "pickled.pt" in err and "--trust-model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        tmp_path / "pickled.pt",
        png,
        "--method",
        S.method(),
        "--out",
        tmp_path / "o",
        "--trust-model",
    )
    assert code == 0, err
    # TorchScript archives load without trust (explained with a gradient: LRP rewrites Python modules)
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        tmp_path / "scripted.pt",
        png,
        "--method",
        "gradient",
        "--out",
        tmp_path / "ts",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "ts" / "results.json").read_text())["cases"][0]["shape"] == [20, 20]
    # a plain pickle that is not even a model
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        tmp_path / "evil.pkl",
        png,
        "--method",
        S.method(),
        "--out",
        tmp_path / "e",
    )
    assert code == 2 and "evil.pkl" in err


def test_usage_errors(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    png = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((20, 20), np.uint8)).save(png)
    code, _, err = _run(capsys, "explain", "--model", ckpt, png, "--method", "nope", "--out", tmp_path / "o")
    assert code == 2 and "unknown method 'nope'" in err
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        ckpt,
        png,
        "--method",
        S.method(),
        "--target",
        "9",
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and "out of range" in err
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        ckpt,
        png,
        "--method",
        S.method(),
        "--target",
        "tumour",
        "--out",
        tmp_path / "t",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "t" / "results.json").read_text())["cases"][0]
    assert record["target"] == 1 and record["target_name"] == "tumour"
    code, _, err = _run(capsys, "explain", "--model", ckpt, png, "--window", "liver", "--out", tmp_path / "o")
    assert code == 2 and "unknown window preset" in err
    ct = get_testdata_file("CT_small.dcm")
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        ckpt,
        ct,
        "--method",
        S.method(),
        "--window",
        "soft_tissue",
        "--out",
        tmp_path / "w",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "w" / "results.json").read_text())["cases"][0]
    assert record["options"]["window"] == [50.0, 400.0]


def test_mask_beside_the_input_gives_localisation_metrics(tmp_path, capsys):
    import torch

    from medlrp import metrics

    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    folder = tmp_path / "cases"
    folder.mkdir()
    rng = np.random.default_rng(5)
    PILImage.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / "lesion.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 255
    PILImage.fromarray(mask).save(folder / "lesion_mask.png")
    out = tmp_path / "out"
    code, _, err = _run(capsys, "explain", "--model", ckpt, folder, "--method", S.method(), "--out", out)
    assert code == 0, err
    (record,) = json.loads((out / "results.json").read_text())["cases"]
    assert record["case"] == "lesion" and record["mask"] == "lesion_mask.png"
    relevance = torch.as_tensor(np.asarray(nib.load(out / "lesion.relevance.nii.gz").dataobj))[None, None]
    region = torch.as_tensor(mask > 0, dtype=torch.float32)[None, None]
    expected = float(metrics.attribution_localisation(relevance.float(), region)[0])
    found = record["metrics"][S.method()]
    assert found["positive_share_in_mask"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert 0.0 <= found["top_k_share_in_mask"] <= 1.0
    assert found["pointing_game"] in (0.0, 1.0)
    html = (out / "report.html").read_text()
    assert "positive_share_in_mask [0, 1]" in html and 'class="outline"' in html


def test_explain_case_refuses_channels_the_model_cannot_take(tmp_path):
    from medlrp.io import Image
    from medlrp.models import LoadedModel, Preprocessing
    from medlrp.pipeline import explain_case

    model = S.Tiny(2, 3, 2).eval()
    loaded = LoadedModel(model, Preprocessing(dims=2, channels=2, size=[16, 16]), ["a", "b", "c"])
    gray = Image(np.ones((1, 20, 20), np.float32), np.eye(4), tmp_path / "gray.png", "png")
    with pytest.raises(medlrp.InputError, match=r"gray\.png: 1 channels, but the model takes 2"):
        explain_case(loaded, gray, [S.method()], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    two = Image(
        np.random.default_rng(0).random((2, 20, 20)).astype(np.float32),
        np.eye(4),
        tmp_path / "two.png",
        "png",
    )
    record = explain_case(loaded, two, [S.method()], tmp_path / "out", views=False)
    assert "_view" not in record and record["channels"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_explain_case_takes_precomputed_explanations(tmp_path):
    from medlrp.io import Image
    from medlrp.models import load_model
    from medlrp.pipeline import explain_case, prepare

    loaded = load_model(S.make_checkpoint(tmp_path / "m2.pt", dims=2))
    pixels = np.random.default_rng(4).random((1, 24, 20)).astype(np.float32)
    image = Image(pixels, np.diag([0.5, 0.6, 1.0, 1.0]), tmp_path / "img.png", "png")
    fresh = explain_case(loaded, image, [S.method()], tmp_path / "a", views=False)
    given = medlrp.explain(loaded.model, prepare(loaded, image), method=S.method())
    reused = explain_case(
        loaded, image, [S.method()], tmp_path / "b", views=False, explanations={S.method(): given}
    )
    a = np.asarray(nib.load(tmp_path / "a" / "img.relevance.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "img.relevance.nii.gz").dataobj)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert reused["prediction"] == fresh["prediction"] and reused["target"] == fresh["target"]
    assert nib.load(tmp_path / "b" / "img.relevance.nii.gz").shape == (24, 20)
