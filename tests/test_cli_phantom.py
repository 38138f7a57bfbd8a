import hashlib
import json

import pytest

from medlrp.cli import main


def _files(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_phantom_writes_dataset_deterministically(tmp_path, capsys):
    args = ["phantom", "--kind", "chest", "--n", "10", "--seed", "4", "--confounded", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "wrote chest 2D phantom" in out and str(tmp_path / "a") in out
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) == 21  # 10 cases + 10 masks + dataset.json
    assert "train/opacity" in "".join(a) and "test/normal" in "".join(a)
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert info["kind"] == "chest" and info["confounded"] is True and info["n"]["test"] == 2


def test_phantom_3d(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["phantom", "--out", str(out), "--dims", "3", "--n", "10", "--size", "16", "--quiet"]) == 0
    assert len(list(out.rglob("*_mask.nii.gz"))) == 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kind", "knee"], "--kind"),
        (["--dims", "5"], "--dims"),
        (["--n", "4"], "--n"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_phantom_bad_input_one_line_exit_2(tmp_path, capsys, extra, message):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medlrp: error:") and message in err


def test_phantom_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["phantom", "--out", str(tmp_path), "--n", "10", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and (tmp_path / "keep.txt").exists()
