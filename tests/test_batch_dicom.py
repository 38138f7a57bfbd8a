"""DICOM in a batch: a single file is explained, a series folder a 2D model cannot take fails alone,
and no patient identifier reaches any output byte unless --keep-identifiers."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from medlrp.batch import read_records
from medlrp.cli import main
from test_batch_support import (
    SECRETS,
    TEST_METHOD,
    batch_args,
    make_checkpoint,
    registered_test_method,
    write_dicom,
)


@pytest.fixture(autouse=True, scope="module")
def _test_method() -> Iterator[None]:
    with registered_test_method():
        yield


def _every_byte(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def test_dicom_cases_and_identifiers(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    write_dicom(data / "a" / "1.2.840.99.1.dcm", rng.integers(0, 3000, (32, 32)))
    series = generate_uid()
    for k in range(3):  # a 3D series folder as one case: the 2D model cannot take it
        write_dicom(
            data / "b" / "series7" / f"IM{k}.dcm", rng.integers(0, 3000, (32, 32)), z=2.0 * k, series=series
        )
    model = make_checkpoint(tmp_path / "m.pt")

    out = tmp_path / "out"
    assert main(batch_args(model, data, out, "--methods", TEST_METHOD, "--workers", "0")) == 2
    assert [r["case"] for r in read_records(out / "index.jsonl")] == ["a/1.2.840.99.1"]
    (error,) = read_records(out / "errors.jsonl")
    assert error["case"] == "b/series7" and "3D" in error["reason"]
    everything = _every_byte(out)
    for secret in SECRETS.values():
        assert secret.encode() not in everything

    kept = tmp_path / "kept"
    args = ("--methods", TEST_METHOD, "--workers", "0", "--keep-identifiers")
    assert main(batch_args(model, data, kept, *args)) == 2
    (record,) = read_records(kept / "index.jsonl")
    assert SECRETS["PatientID"] in record["identifiers"].values()
