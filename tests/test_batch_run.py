"""`medlrp batch` in one process: outputs, index records, corrupt files, rerun skips, bad usage."""

import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlrp.batch import read_records
from medlrp.batch.lock import RunLock
from medlrp.cli import main
from test_batch_support import (
    TEST_METHOD,
    batch_args,
    make_checkpoint,
    make_dataset,
    output_files,
    registered_test_method,
)


@pytest.fixture(autouse=True, scope="module")
def _test_method() -> Iterator[None]:
    with registered_test_method():
        yield


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("batch_run")
    ids = make_dataset(root / "data", per_class=3)
    # Corrupt inputs: garbage with an image suffix, a truncated PNG, a NIfTI that is not one.
    (root / "data" / "a" / "garbage.png").write_bytes(b"not an image at all" * 8)
    good = (root / "data" / "b" / "c00.png").read_bytes()
    (root / "data" / "b" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "data" / "b" / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    return make_checkpoint(root / "m.pt"), root / "data", ids


def test_corrupt_files_go_to_errors_and_all_others_are_done(archive, tmp_path: Path, capsys):
    model, data, ids = archive
    out = tmp_path / "out"
    methods = f"{TEST_METHOD},gradcam"
    code = main(batch_args(model, data, out, "--methods", methods, "--workers", "1", "--batch-size", "4"))
    assert code == 2
    assert "3 case(s) failed" in capsys.readouterr().err

    errors = {r["case"]: r for r in read_records(out / "errors.jsonl")}
    assert sorted(errors) == ["a/garbage", "b/broken", "b/truncated"]
    for case, rec in errors.items():  # one line naming the file and the problem
        assert Path(rec["source"]).stem.split(".")[0] == case.split("/")[1]
        assert rec["source"] in rec["reason"] and "\n" not in rec["reason"]
        assert str(data) not in rec["reason"]  # relative to the data folder: a full path may name a patient

    index = read_records(out / "index.jsonl")
    assert [r["case"] for r in index] == ids  # sorted, each good case once
    for rec in index:
        assert rec["label"] == "ab".index(rec["class_name"])
        assert rec["label_name"] == rec["class_name"]  # the true label, as explain records it
        assert abs(sum(rec["probabilities"]) - 1) < 1e-9
        assert rec["prediction"] == int(np.argmax(rec["probabilities"]))
        assert set(rec["methods"]) == {TEST_METHOD, "gradcam"}
        assert set(rec["timing"]) == {"read_s", "explain_s", "write_s"}
        for entry in rec["methods"].values():
            relevance = nib.load(str(out / entry["relevance"]))
            assert relevance.shape == (32, 32)
            assert (out / entry["overlay"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            # Masks exist for even cases only: scores exactly there.
            assert ("scores" in entry) == (rec["mask"] is not None)
            if "scores" in entry:
                assert 0.0 <= entry["scores"]["pointing_game"] <= 1.0
    assert not list(out.rglob(".*.part*")) and not (out / ".parts").exists()
    settings = json.loads((out / "run.json").read_text())
    assert settings["methods"] == [TEST_METHOD, "gradcam"]

    # Rerunning skips every finished case (files untouched) and retries only the failed ones.
    before = output_files(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    code = main(batch_args(model, data, out, "--methods", methods, "--workers", "0"))
    assert code == 2
    assert f"{len(ids)} done before, 0 done now, 3 failed" in capsys.readouterr().err
    assert output_files(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == mtimes
    assert sorted(r["case"] for r in read_records(out / "errors.jsonl")) == sorted(errors)

    # Another method into the same folder is refused (exit 2, one line), nothing is changed.
    code = main(batch_args(model, data, out, "--methods", "gradcam"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "methods differ" in err and len(err.splitlines()) == 1


def test_target_label_explains_the_class_folder(archive, tmp_path: Path):
    model, data, ids = archive
    out = tmp_path / "out"
    args = ("--methods", TEST_METHOD, "--target", "label", "--workers", "0", "--writers", "0")
    code = main(batch_args(model, data, out, *args))
    assert code == 2  # the corrupt files
    index = read_records(out / "index.jsonl")
    assert [r["case"] for r in index] == ids
    assert all(r["target"] == r["label"] for r in index)
    assert {r["target"] for r in index} == {0, 1}


def test_target_class_name_is_its_index_and_resumes_with_it(archive, tmp_path: Path, capsys):
    model, data, ids = archive
    out = tmp_path / "out"
    args = ("--methods", TEST_METHOD, "--workers", "0", "--writers", "0")
    assert main(batch_args(model, data, out, *args, "--target", "b")) == 2  # the corrupt files
    index = read_records(out / "index.jsonl")
    assert [r["case"] for r in index] == ids
    assert all(r["target"] == 1 for r in index)
    assert json.loads((out / "run.json").read_text())["target"] == "1"
    capsys.readouterr()
    # The index spells the same run: a rerun with it resumes (no "settings differ" refusal).
    assert main(batch_args(model, data, out, *args, "--target", "1")) == 2
    assert f"{len(ids)} done before, 0 done now" in capsys.readouterr().err


def test_unknown_target_name_is_refused_listing_the_names(archive, tmp_path: Path, capsys):
    model, data, _ = archive
    out = tmp_path / "out"
    code = main(batch_args(model, data, out, "--methods", TEST_METHOD, "--target", "glioma"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'glioma'" in err and "names: a, b" in err
    assert not (out / "run.json").exists() and not (out / "index.jsonl").exists()


def test_true_label_reaches_the_overlay_and_flat_cases_have_none(archive, tmp_path: Path, monkeypatch):
    import medlrp.batch.outputs as outputs

    model, data, _ = archive
    seen: dict[str, str | None] = {}
    real = outputs.write_case_files

    def spy(result, *args, **kwargs):
        seen[result.case] = result.label  # the overlay's caption shows it ("(true: b)")
        return real(result, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_case_files", spy)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("c00.png", "c01.png"):
        (flat / name).write_bytes((data / "b" / name).read_bytes())
    args = ("--methods", TEST_METHOD, "--workers", "0", "--writers", "0")
    assert main(batch_args(model, flat, tmp_path / "out", *args)) == 0
    assert [r["label_name"] for r in read_records(tmp_path / "out" / "index.jsonl")] == [None, None]
    assert seen == {"c00": None, "c01": None}
    seen.clear()
    sub = tmp_path / "one"
    (sub / "b").mkdir(parents=True)
    (sub / "b" / "c00.png").write_bytes((data / "b" / "c00.png").read_bytes())
    assert main(batch_args(model, sub, tmp_path / "out1", *args)) == 0
    assert [r["label_name"] for r in read_records(tmp_path / "out1" / "index.jsonl")] == ["b"]
    assert seen == {"c00": "b"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--methods", "no-such-method"), "unknown method"),
        (("--batch-size", "0"), "--batch-size"),
        (("--target", "first"), "--target"),
        (("--device", "cuda:7"), "cuda"),
    ],
)
def test_bad_usage_is_one_line_exit_2(archive, tmp_path: Path, capsys, extra, message):
    model, data, _ = archive
    code = main(batch_args(model, data, tmp_path / "out", "--methods", TEST_METHOD, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_data_folder_or_out_inside_data_is_exit_2(archive, tmp_path: Path, capsys):
    model, data, _ = archive
    assert main(batch_args(model, tmp_path / "nope", tmp_path / "out", "--methods", TEST_METHOD)) == 2
    assert "nope" in capsys.readouterr().err
    assert main(batch_args(model, data, data / "out", "--methods", TEST_METHOD)) == 2
    assert "inside --data" in capsys.readouterr().err and not (data / "out").exists()


def test_a_second_run_into_a_busy_folder_is_refused(archive, tmp_path: Path, capsys):
    model, data, _ = archive
    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out):  # as a run in progress holds it
        assert main(batch_args(model, data, out, "--methods", TEST_METHOD)) == 2
    assert "another medlrp batch run" in capsys.readouterr().err
    assert not (out / "index.jsonl").exists()
