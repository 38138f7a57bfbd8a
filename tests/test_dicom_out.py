"""`--dicom`: Parametric Map and Secondary Capture outputs, checked with dciodvfy (dicom3tools) and read
back with highdicom; de-identified by default, filed with the source study under --keep-identifiers;
series off a regular grid refused."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import test_io_support as S
from medlrp.cli import main
from medlrp.io import Deidentifier, MapDescription, read_dicom_sources, write_dicom_explanation

# Distinctive values put into the sources: none may reach any output byte without --keep-identifiers.
SECRETS = {
    "PatientName": "Brynjolfsdottir^Hallveig",
    "PatientID": "PID-DCMOUT-40417",
    "PatientBirthDate": "19270311",
    "AccessionNumber": "ACC-DCMOUT-8812",
    "InstitutionName": "Sankt Dicomius Hospital",
    "ReferringPhysicianName": "Referrer^Oswaldine",
    "PerformingPhysicianName": "Performer^Gundeberga",
    "OperatorsName": "Operator^Theodulf",
    "StudyID": "STUDY-77431",
    "StudyDate": "19870923",
    "SeriesDate": "19870924",
}
PRIVATE_VALUE = "PRIVATE-SECRET-30571"


def _dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``path`` (the test fails when dciodvfy is missing)."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy not found: install dicom3tools (apt-get install dicom3tools; `make test` does)")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _source(name: str, path: Path, **changes: object) -> pydicom.Dataset:
    """A copy of a pydicom test file with :data:`SECRETS` and a private attribute, saved at ``path``."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in {**SECRETS, **changes}.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0011, "MEDLRP TEST", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _series(
    folder: Path, n: int = 4, steps: list[float] | None = None, tilt: float = 0.0
) -> list[pydicom.Dataset]:
    """CT_small as an ``n``-slice series, slice k at ``sum(steps[:k])`` mm along the normal (default 5 mm
    apart) and shifted ``k * tilt`` mm along the columns (a gantry tilt); files named against slice order."""
    steps = steps or [5.0] * (n - 1)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, origin = generate_uid(), np.array([float(v) for v in base.ImagePositionPatient])
    written = []
    for k in range(n):
        offset = np.array([0.0, k * tilt, sum(steps[:k])])
        pixels = np.roll(base.pixel_array, 9 * k, axis=1)  # slices differ: a wrong order would show
        ds = _source(
            "CT_small.dcm",
            folder / f"im{n - k:02d}.dcm",
            SeriesInstanceUID=series,
            SOPInstanceUID=generate_uid(),
            InstanceNumber=k + 1,
            ImagePositionPatient=[float(v) for v in origin + offset],
            PixelData=pixels.astype(base.pixel_array.dtype).tobytes(),
        )
        written.append(ds)
    return written


def _explain(
    capsys, ckpt: Path, out: Path, *inputs: Path, keep: bool = False, methods: str | None = None
) -> tuple[int, str]:
    args = ["explain", "--model", str(ckpt), *map(str, inputs), "--method", methods or S.method()]
    args += ["--out", str(out)]
    code = main([*args, "--dicom", *(["--keep-identifiers"] if keep else [])])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _check_map(out: Path, case: str, sources: list[pydicom.Dataset]) -> tuple[pydicom.Dataset, list]:
    """The map and overlay of ``case`` are valid; the map holds the NIfTI's values on the sources' grid.

    ``sources`` in slice order (that of the NIfTI). The map may list its frames in another order: each
    frame is matched to its slice by position and must refer to that slice and hold its values.
    """
    pm_path, overlay = out / f"{case}.relevance.dcm", sorted((out / f"{case}.overlay").glob("*.dcm"))
    assert len(overlay) == len(sources)
    for path in [pm_path, *overlay]:
        assert _dciodvfy_errors(path) == [], path.name
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(pm_path))
    relevance = np.asarray(nib.load(out / f"{case}.relevance.nii.gz").dataobj, dtype=np.float32)
    relevance = relevance.reshape(len(sources), *relevance.shape[-2:])
    frames = pm.pixel_array.reshape(len(sources), int(pm.Rows), int(pm.Columns))
    assert np.abs(frames).max() > 0
    positions = [[float(v) for v in s.ImagePositionPatient] for s in sources]
    captures = [pydicom.dcmread(p) for p in overlay]
    sc_refs = [c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures]
    assert len(set(sc_refs)) == len(sources)
    matched = []
    for frame, group in zip(frames, pm.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        k = int(np.argmin([np.abs(np.subtract(position, p)).max() for p in positions]))
        np.testing.assert_allclose(position, positions[k], atol=1e-4)
        np.testing.assert_array_equal(frame, relevance[k])
        # map and overlay are linked: the frame on slice k refers to the instance overlay k refers to
        assert group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == sc_refs[k]
        matched.append(k)
    assert sorted(matched) == list(range(len(sources)))
    shared = pm.SharedFunctionalGroupsSequence[0]
    for keyword, group in (
        ("ImageOrientationPatient", "PlaneOrientationSequence"),
        ("PixelSpacing", "PixelMeasuresSequence"),
    ):
        value = shared[group][0][keyword].value
        np.testing.assert_allclose([float(v) for v in value], [float(v) for v in sources[0][keyword].value])
    assert all(c.SamplesPerPixel == 3 and c.PhotometricInterpretation == "RGB" for c in captures)
    assert {c.StudyInstanceUID for c in captures} == {pm.StudyInstanceUID}
    assert {c.PatientID for c in captures} == {pm.PatientID}
    assert {c.ReferencedSeriesSequence[0].SeriesInstanceUID for c in captures} == {
        pm.ReferencedSeriesSequence[0].SeriesInstanceUID
    }
    return pm, captures


def _every_byte(out: Path) -> bytes:
    blobs = []
    for path in sorted(out.rglob("*")):
        blobs.append(str(path.relative_to(out)).encode())
        if path.is_file():
            raw = path.read_bytes()
            blobs.append(gzip.decompress(raw) if path.name.endswith(".gz") else raw)
    return b"\n".join(blobs)


def _source_values(sources: list[pydicom.Dataset]) -> list[str]:
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    values = [str(ds.get(k)) for ds in sources for k in uids]
    # the files' own private attributes too (CT_small has GE's), where long enough to be telling
    private = {str(e.value) for ds in sources for e in ds if e.tag.is_private and isinstance(e.value, str)}
    values += [v for v in private if len(v.strip()) >= 8]
    return [*values, *SECRETS.values(), PRIVATE_VALUE, "Brynjolfsdottir", "Hallveig", "Gundeberga"]


def test_single_files_deidentified_valid_and_linked(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    ct = _source("CT_small.dcm", tmp_path / "in" / "ct.dcm")
    mr = _source("MR_small.dcm", tmp_path / "in" / "mr.dcm")
    png = tmp_path / "in" / "picture.png"
    _png(png)
    out = tmp_path / "out"
    code, log = _explain(capsys, ckpt, out, *sorted((tmp_path / "in").iterdir()))
    assert code == 0, log
    assert "picture.png: not DICOM" in log and not (out / "picture.relevance.dcm").exists()
    maps = {}
    for case, source in (("ct", ct), ("mr", mr)):
        pm, captures = _check_map(out, case, [source])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert pm.get(keyword) != source.get(keyword)
        assert pm.SeriesInstanceUID != captures[0].SeriesInstanceUID
        assert captures[0].SourceImageSequence[0].ReferencedSOPInstanceUID != source.SOPInstanceUID
        for ds in (pm, *captures):
            assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("ANON-")
            assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert pm.PatientBirthDate == "" and pm.AccessionNumber == "" and "InstitutionName" not in pm
        maps[case] = pm
    assert maps["ct"].PatientID == maps["mr"].PatientID  # same patient, one pseudonym within the run
    assert maps["ct"].StudyInstanceUID != maps["mr"].StudyInstanceUID  # different source studies
    everything = _every_byte(out) + log.encode()
    for value in _source_values([ct, mr]):
        assert value.encode() not in everything, value


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray((np.arange(24 * 20).reshape(24, 20) % 251).astype(np.uint8)).save(path)


def test_series_with_the_study_and_deidentified(tmp_path, capsys):
    ckpt = S.make_checkpoint(tmp_path / "m3.pt", dims=3, size=8)
    sources = _series(tmp_path / "series7")
    kept = tmp_path / "kept"
    code, log = _explain(
        capsys, ckpt, kept, tmp_path / "series7", keep=True, methods=f"{S.method()},gradient"
    )
    assert code == 0, log
    _check_map(kept, "series7.gradient", sources)  # every method gets its own map and overlay series
    pm, captures = _check_map(kept, f"series7.{S.method()}", sources)  # several methods: all named
    for ds in (pm, *captures):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
            assert ds.get(keyword) == sources[0].get(keyword), keyword
        assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert pm.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures] == [
        s.SOPInstanceUID for s in sources
    ]
    anonymous = tmp_path / "anonymous"
    code, log = _explain(capsys, ckpt, anonymous, tmp_path / "series7")
    assert code == 0, log
    pm, captures = _check_map(anonymous, "series7", sources)
    assert pm.FrameOfReferenceUID not in {s.FrameOfReferenceUID for s in sources}
    everything = _every_byte(anonymous) + log.encode()
    for value in _source_values(sources):
        assert value.encode() not in everything, value


@pytest.mark.parametrize(
    ("steps", "tilt", "reason"),
    [([5.0, 5.0, 5.0], 1.5, "gantry tilt"), ([5.0, 2.5, 5.0], 0.0, "uneven slice spacing")],
)
def test_irregular_series_refused(tmp_path, capsys, steps, tilt, reason):
    ckpt = S.make_checkpoint(tmp_path / "m3.pt", dims=3, size=8)
    _series(tmp_path / "bad", steps=steps, tilt=tilt)
    out = tmp_path / "out"
    code, log = _explain(capsys, ckpt, out, tmp_path / "bad")
    assert code == 2
    errors = [line for line in log.splitlines() if line.startswith("medlrp: error")]
    assert len(errors) == 1 and reason in errors[0] and "Traceback" not in log
    assert not list(out.rglob("*.dcm")) and not list(out.rglob("*.nii.gz"))


def test_library_from_an_explanation(tmp_path):
    """A pipeline's own Explanation (at the model grid) lands on the source grid, total relevance kept."""
    import torch

    from medlrp.explanation import Explanation

    path = tmp_path / "ct.dcm"
    _source("CT_small.dcm", path)
    sources = read_dicom_sources(path)
    relevance = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    relevance[0, 0, 4, 12] = 2.0
    e = Explanation(relevance, torch.zeros(1, 2), torch.tensor([1]), "lrp", {})
    scan = np.zeros((128, 128), np.float32)
    files = write_dicom_explanation(
        tmp_path,
        "lib",
        e,
        sources,
        MapDescription("lrp", "b", "epsilon"),
        scan,
        (0.0, 1.0),
        deidentifier=Deidentifier(),
    )
    frames = pydicom.dcmread(files.parametric_map).pixel_array.reshape(128, 128)
    assert frames.sum() == pytest.approx(2.0, rel=1e-5)
    row, col = np.unravel_index(np.abs(frames).argmax(), frames.shape)
    assert 4 * 8 <= row < 5 * 8 and 12 * 8 <= col < 13 * 8  # the 16 px cell maps onto its 8x8 block
    assert all(_dciodvfy_errors(p) == [] for p in files.files)


def test_batch_writes_dicom_consistently_across_writer_processes(tmp_path, capsys):
    """Two writer processes: one run's de-identification (same pseudonym for one patient) in both."""
    from medlrp.batch import read_records

    ckpt = S.make_checkpoint(tmp_path / "m2.pt", dims=2)
    data = tmp_path / "data"
    ct = _source("CT_small.dcm", data / "a" / "ct.dcm")
    mr = _source("MR_small.dcm", data / "b" / "mr.dcm")
    _png(data / "b" / "picture.png")
    out = tmp_path / "out"
    args = ["batch", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--no-progress"]
    code = main(
        [*args, "--methods", S.method(), "--workers", "0", "--writers", "2", "--batch-size", "1", "--dicom"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = {r["case"]: r for r in read_records(out / "index.jsonl")}
    assert sorted(records) == ["a/ct", "b/mr", "b/picture"]
    assert "dicom" not in records["b/picture"]["methods"][S.method()]
    maps = []
    for case, source in (("a/ct", ct), ("b/mr", mr)):
        listed = records[case]["methods"][S.method()]["dicom"]
        assert listed[0] == f"{case}.relevance.dcm" and listed[1] == f"{case}.overlay/0001.dcm"
        pm, _ = _check_map(out / case.split("/")[0], case.split("/")[1], [source])
        maps.append(pm)
    assert maps[0].PatientID == maps[1].PatientID and maps[0].PatientID.startswith("ANON-")
    everything = _every_byte(out) + (captured.out + captured.err).encode()
    for value in _source_values([ct, mr]):
        assert value.encode() not in everything, value


def test_a_killed_runs_half_written_overlay_series_is_tidied(tmp_path):
    from medlrp.batch.journal import remove_temporaries

    half = tmp_path / "a" / ".ct.overlay.k2j4x9.part"
    half.mkdir(parents=True)
    (half / "0001.dcm").write_bytes(b"half")
    kept = tmp_path / "a" / "ct.overlay"
    kept.mkdir()
    (kept / "0001.dcm").write_bytes(b"whole")
    assert remove_temporaries(tmp_path) == [half]
    assert not half.exists() and (kept / "0001.dcm").exists()
