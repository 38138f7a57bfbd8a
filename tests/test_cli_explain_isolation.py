"""`medlrp explain` under hostile input: each bad input is one line naming it, the others finish.

Non-finite model outputs (values near float32's limit, a NaN weight), singular affines, unknown DICOM
transfer syntaxes, bad output folders, a full disk, a rerun into the input folder, bad --device and
--composite: exit 2, one line each, no traceback, no NaN in any JSON, nothing half-written.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import test_io_support as S
from medlrp.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _strict_json(path: Path) -> dict:
    """Parse refusing NaN and Infinity (not JSON)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _errors(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("medlrp: error: ") for line in lines), err
    assert "Traceback" not in err
    return lines


def _volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(
        nib.Nifti1Image(data.astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine),
        path,
    )
    return path


def _zero_affine(path: Path) -> Path:
    img = nib.Nifti1Image(np.random.default_rng(1).random((16, 16, 16)).astype(np.float32), np.eye(4))
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"] = header["srow_y"] = header["srow_z"] = np.zeros(4)
    path.write_bytes(header.binaryblock + bytes(raw[348:]))
    return path


def _case_files(out: Path, case: str) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(case + "."))


def test_non_finite_output_and_bad_affine_fail_alone(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m3.pt", dims=3)
    rng = np.random.default_rng(0)
    good = _volume(tmp_path / "good.nii.gz", rng.random((16, 16, 16)))
    huge = _volume(tmp_path / "huge.nii.gz", 1e38 * (0.5 + rng.random((32, 32, 32))))  # finite, float32
    zero = _zero_affine(tmp_path / "zero.nii")
    last = _volume(tmp_path / "last.nii.gz", rng.random((16, 16, 16)))
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "explain", "--model", ckpt, good, huge, zero, last, "--method", S.method(), "--out", out
    )
    assert code == 2
    lines = _errors(err)
    assert len(lines) == 2
    assert "huge.nii.gz" in lines[0] and "finite" in lines[0] and "nan" not in lines[0].lower().split("(")[0]
    assert "zero.nii" in lines[1] and "affine" in lines[1]
    results = _strict_json(out / "results.json")
    assert [c["case"] for c in results["cases"]] == ["good", "last"]
    assert {f["input"] for f in results["failures"]} == {"huge.nii.gz", "zero.nii"}
    assert (out / "report.html").is_file()
    assert _case_files(out, "huge") == [] and _case_files(out, "zero") == []
    assert _case_files(out, "good") == ["good.overlay.png", "good.relevance.nii.gz"]
    assert "good:" in stdout and "last:" in stdout


def test_a_nan_weight_fails_every_input_with_one_line_each(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    payload = torch.load(ckpt, weights_only=True)
    first = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][first].view(-1)[0] = float("nan")
    torch.save(payload, ckpt)
    pngs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        PILImage.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(path)
        pngs.append(path)
    out = tmp_path / "out"
    for method in (S.method(), "gradcam"):
        code, _, err = _run(capsys, "explain", "--model", ckpt, *pngs, "--method", method, "--out", out)
        assert code == 2
        lines = _errors(err)
        assert len(lines) == 2 and all("not finite" in line for line in lines)
        assert "a.png" in lines[0] and "b.png" in lines[1]
        assert _strict_json(out / "results.json")["cases"] == []
        assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]


def test_unknown_transfer_syntax_names_the_file(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    ds = S.dicom_dataset(np.ones((16, 16), np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.9"  # no such syntax
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True, implicit_vr=False, little_endian=True)
    good = tmp_path / "good.png"
    PILImage.fromarray(np.full((20, 20), 7, np.uint8)).save(good)
    code, _, err = _run(
        capsys, "explain", "--model", ckpt, tmp_path / "odd.dcm", good, "--out", tmp_path / "out"
    )
    assert code == 2
    (line,) = _errors(err)
    assert "odd.dcm" in line
    assert [c["case"] for c in _strict_json(tmp_path / "out" / "results.json")["cases"]] == ["good"]


def test_output_location_problems_are_found_before_explaining(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    png = tmp_path / "x.png"
    PILImage.fromarray(np.full((20, 20), 7, np.uint8)).save(png)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "below"):
        code, stdout, err = _run(capsys, "explain", "--model", ckpt, png, "--out", out)
        assert code == 2 and stdout == ""  # nothing explained
        (line,) = _errors(err)
        assert "afile" in line
    assert afile.read_text() == "not a folder"


def test_device_and_composite_mistakes_are_usage_errors(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    png = tmp_path / "x.png"
    PILImage.fromarray(np.full((20, 20), 7, np.uint8)).save(png)
    code, _, err = _run(capsys, "explain", "--model", ckpt, png, "--device", "tpu", "--out", tmp_path / "o")
    assert code == 2
    (line,) = _errors(err)
    assert "tpu" in line and "device" in line and "pickle" not in line
    code, _, err = _run(
        capsys,
        "explain",
        "--model",
        ckpt,
        png,
        "--method",
        "gradcam",
        "--composite",
        "epsilon",
        "--out",
        tmp_path / "o",
    )
    assert code == 2
    (line,) = _errors(err)
    assert "--composite" in line and "gradcam" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("inside", ["below", "same"])
def test_a_rerun_never_explains_its_own_outputs(tmp_path, capsys, inside):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("p", "q"):
        PILImage.fromarray((np.random.default_rng(3).random((20, 20)) * 255).astype(np.uint8)).save(
            data / f"{name}.png"
        )
    out = data / "out" if inside == "below" else data
    for _ in range(2):
        code, _, err = _run(
            capsys, "explain", "--model", ckpt, data, "--method", f"{S.method()},gradient", "--out", out
        )
        assert code == 0, err
        assert [c["case"] for c in _strict_json(out / "results.json")["cases"]] == ["p", "q"]


def test_a_full_disk_names_the_file_and_leaves_no_half_case(tmp_path):
    """The file-size limit makes every write past 320 KB fail (EFBIG), as a full disk would.

    ``big``'s relevance map (about 290 KB) fits, its overlay (about 350 KB) does not: the map must go
    too. ``smooth``'s files are small and complete.
    """
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2, size=16)
    png, smooth = tmp_path / "big.png", tmp_path / "smooth.png"
    PILImage.fromarray((np.random.default_rng(0).random((300, 300)) * 255).astype(np.uint8)).save(png)
    PILImage.fromarray(np.tile(np.linspace(0, 255, 300).astype(np.uint8), (300, 1))).save(smooth)
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (320 * 1024, resource.RLIM_INFINITY))

    script = "import sys, test_io_support; from medlrp.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "explain",
            "--model",
            str(ckpt),
            str(png),
            str(smooth),
            "--method",
            "gradient",
            "--out",
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    lines = _errors(run.stderr)
    assert lines and "big.overlay.png" in lines[0] and "cannot write" in lines[0]
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.startswith("big.")]  # the pair is absent, not half there
    assert not [name for name in left if ".part" in name]
    assert [name for name in left if name.startswith("smooth.")] == [
        "smooth.overlay.png",
        "smooth.relevance.nii.gz",
    ]
    assert [c["case"] for c in _strict_json(out / "results.json")["cases"]] == ["smooth"]


def test_a_model_its_preprocessing_does_not_fit_is_one_line_before_any_input(tmp_path, capsys):
    from medlrp.models import Preprocessing, save_checkpoint
    from medlrp.registry import ARCHITECTURES

    kwargs = {
        "in_channels": 1,
        "num_classes": 2,
        "image_size": 32,
        "patch_size": 8,
        "dim": 16,
        "depth": 1,
        "heads": 2,
    }
    model = ARCHITECTURES.get("vit2d")(**kwargs)
    pre = Preprocessing(dims=2, channels=1, size=[48, 48])  # not the 32 x 32 the ViT was built for
    ckpt = save_checkpoint(tmp_path / "vit.pt", model, "vit2d", kwargs, pre, ["a", "b"])
    png = tmp_path / "x.png"
    PILImage.fromarray(np.full((20, 20), 7, np.uint8)).save(png)
    code, stdout, err = _run(capsys, "explain", "--model", ckpt, png, png, "--out", tmp_path / "o")
    assert code == 2 and stdout == ""
    (line,) = _errors(err)
    assert "vit.pt" in line and "(1, 1, 48, 48)" in line


def test_explain_target_beyond_the_classes_is_refused_up_front(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m.pt", dims=2)
    png = tmp_path / "x.png"
    PILImage.fromarray(np.full((20, 20), 7, np.uint8)).save(png)
    code, stdout, err = _run(
        capsys, "explain", "--model", ckpt, png, "--target", "7", "--out", tmp_path / "o"
    )
    assert code == 2 and stdout == ""
    (line,) = _errors(err)
    assert "--target 7" in line and "3 classes" in line
    assert not (tmp_path / "o").exists()
