"""`medlrp batch` under hostile input: non-finite outputs recorded as failures (valid JSON, no files),
a bad --target refused up front, paths relative to the data folder, and no process outliving a killed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medlrp.cli import main
from test_batch_support import (
    TEST_METHOD,
    batch_args,
    make_checkpoint,
    make_dataset,
    registered_test_method,
    script_command,
)


@pytest.fixture(autouse=True, scope="module")
def _test_method() -> Iterator[None]:
    with registered_test_method():
        yield


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _strict_lines(path: Path) -> list[dict]:
    return [_strict(line) for line in path.read_text().splitlines() if line.strip()]


def _nan_checkpoint(path: Path) -> Path:
    make_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    name = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][name].view(-1)[0] = float("inf")
    torch.save(payload, path)
    return path


def test_non_finite_outputs_are_failures_with_valid_json_and_no_files(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, per_class=2)
    out = tmp_path / "out"
    model = _nan_checkpoint(tmp_path / "m.pt")
    code = main(
        batch_args(
            model, data, out, "--methods", f"{TEST_METHOD},gradcam", "--workers", "0", "--writers", "0"
        )
    )
    assert code == 2
    errors = _strict_lines(out / "errors.jsonl")
    assert sorted(r["case"] for r in errors) == ["a/c00", "a/c01", "b/c00", "b/c01"]
    assert all("not finite" in r["reason"] and r["source"] in r["reason"] for r in errors)
    assert not (out / "index.jsonl").exists() or _strict_lines(out / "index.jsonl") == []
    assert not [p for p in out.rglob("*") if p.suffix in (".png", ".gz")]
    capsys.readouterr()


def test_values_near_the_float32_limit_fail_alone(tmp_path):
    data = tmp_path / "data"
    make_dataset(data, per_class=2)
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image((1e38 * (0.5 + rng.random((32, 32)))).astype(np.float32), np.eye(4)),
        data / "a" / "huge.nii.gz",
    )
    out = tmp_path / "out"
    code = main(
        batch_args(make_checkpoint(tmp_path / "m.pt"), data, out, "--methods", TEST_METHOD, "--workers", "0")
    )
    assert code == 2
    (error,) = _strict_lines(out / "errors.jsonl")
    assert error["case"] == "a/huge" and error["source"] == "a/huge.nii.gz"
    assert "finite" in error["reason"].lower() or "nan" in error["reason"].lower()
    index = _strict_lines(out / "index.jsonl")
    assert len(index) == 4 and all(np.isfinite(r["probabilities"]).all() for r in index)
    assert not list((out / "a").glob("huge.*"))


def test_target_beyond_the_classes_is_refused_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, per_class=1)
    out = tmp_path / "out"
    code = main(
        batch_args(make_checkpoint(tmp_path / "m.pt"), data, out, "--methods", TEST_METHOD, "--target", "7")
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--target 7" in err and len(err.splitlines()) == 1
    assert not (out / "run.json").exists() and not (out / "errors.jsonl").exists()


def test_composite_without_lrp_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, per_class=1)
    code = main(
        batch_args(
            make_checkpoint(tmp_path / "m.pt"),
            data,
            tmp_path / "o",
            "--methods",
            "gradcam",
            "--composite",
            "epsilon",
        )
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--composite" in err and len(err.splitlines()) == 1


def test_run_files_hold_no_full_paths(tmp_path, capsys):
    root = tmp_path / "Doe^Jane"  # a folder named after a patient
    data = root / "scans"
    make_dataset(data, per_class=1)
    (data / "a" / "broken.png").write_bytes(b"junk" * 10)
    out = tmp_path / "out"
    assert main(batch_args(make_checkpoint(tmp_path / "m.pt"), data, out, "--methods", TEST_METHOD)) == 2
    capsys.readouterr()
    for name in ("run.json", "errors.jsonl", "index.jsonl"):
        text = (out / name).read_text()
        assert "Doe^Jane" not in text and str(tmp_path) not in text, name
    (error,) = _strict_lines(out / "errors.jsonl")
    assert error["source"] == "a/broken.png" and error["reason"].startswith("a/broken.png: ")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_of_the_main_process_leaves_no_process_behind(tmp_path):
    data = tmp_path / "data"
    make_dataset(data, per_class=8)
    model = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    args = batch_args(
        model, data, out, "--methods", TEST_METHOD, "--batch-size", "2", "--workers", "2", "--writers", "1"
    )
    env = {**os.environ, "MEDLRP_TEST_BATCH_DELAY": "0.4", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        script_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 90
    helpers: list[int] = []
    while proc.poll() is None and time.monotonic() < deadline:  # wait for the writer and both readers
        helpers = _descendants(proc.pid)
        if len(helpers) >= 3 and (out / ".parts").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(helpers) >= 3, helpers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)
    left = [p for p in helpers if _alive(p)]
    assert not left, f"processes alive 5 s after the main process was killed: {left}"
