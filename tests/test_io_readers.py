"""Readers: DICOM series / multi-frame / single files, NIfTI, PNG; geometry kept; bad input is one line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless

import test_io_support as S
from medlrp.errors import InputError
from medlrp.io import WINDOW_PRESETS, apply_window, expand_input, read_image, to_input_grid, window_preset

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _dicom_world(ds: pydicom.Dataset, r: int, c: int) -> np.ndarray:
    """DICOM PS3.3 C.7.6.2.1.1: the LPS position of pixel (row r, column c), converted to RAS."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    d_row, d_col = (float(v) for v in ds.PixelSpacing)
    lps = ipp + iop[:3] * d_col * c + iop[3:] * d_row * r
    return LPS_TO_RAS @ lps


@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1), (0.8, 0.6, 0, 0, 0, -1)],
    ids=["axial", "coronal", "oblique"],
)
def test_dicom_series_and_nifti_round_trip(tmp_path, orientation):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 4000, size=(5, 12, 10)).astype(np.uint16)
    slope, intercept = 0.5, -1024.0
    folder = S.write_series(
        tmp_path / "series",
        stored,
        origin=(-30.0, 12.5, 7.0),
        orientation=orientation,
        spacing=(0.8, 0.7),
        step=2.5,
        slope=slope,
        intercept=intercept,
    )
    image = read_image(folder)
    assert image.kind == "dicom" and image.array.shape == (1, 5, 12, 10)
    np.testing.assert_allclose(image.array[0], stored * slope + intercept)  # sorted by position, rescaled
    # every voxel sits where the DICOM standard puts the pixel of its file
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        k = int(np.flatnonzero((stored == ds.pixel_array).all(axis=(1, 2)))[0])
        for r, c in [(0, 0), (11, 9), (3, 7)]:
            np.testing.assert_allclose(image.affine @ [k, r, c, 1], [*_dicom_world(ds, r, c), 1], atol=1e-6)
    np.testing.assert_allclose(image.spacing, (2.5, 0.8, 0.7), atol=1e-9)
    # the same volume written as NIfTI by nibabel reads back with the same voxels and geometry
    nib.save(nib.Nifti1Image(stored * slope + intercept, image.affine), tmp_path / "vol.nii.gz")
    again = read_image(tmp_path / "vol.nii.gz")
    np.testing.assert_allclose(again.array, image.array)
    np.testing.assert_allclose(again.affine, image.affine, atol=1e-6)


def test_ct_small_keeps_hounsfield_units_geometry_and_identifiers_apart():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image.array[0], hu)
    np.testing.assert_allclose(
        image.affine[:3, 3], LPS_TO_RAS @ np.array(ds.ImagePositionPatient, float), atol=1e-5
    )
    np.testing.assert_allclose(image.spacing, [float(v) for v in ds.PixelSpacing], atol=1e-6)
    assert image.identifiers["PatientName"] == str(ds.PatientName)
    assert str(ds.PatientName) not in repr(image.meta) and str(ds.PatientID) not in repr(image.meta)


def test_multiframe_rt_dose_uses_frame_offsets_and_scaling():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.array.shape == (1, 15, 10, 10)
    np.testing.assert_allclose(image.array[0], ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    step = float(ds.GridFrameOffsetVector[1]) - float(ds.GridFrameOffsetVector[0])
    np.testing.assert_allclose(image.affine[:3, 0], [0, 0, step])
    np.testing.assert_allclose(image.affine[:3, 3], LPS_TO_RAS @ np.array(ds.ImagePositionPatient, float))


def test_enhanced_multiframe_frames_sorted_by_position(tmp_path):
    frames = np.stack([np.full((6, 7), v, np.uint16) for v in (30, 10, 20)])  # frame z: 6, 2, 4
    ds = S.dicom_dataset(frames[0], slope=1.0)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
    ):
        delattr(ds, kw)
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 2.0
    transform.RescaleSlope, transform.RescaleIntercept = 2, -5
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for z in (6.0, 2.0, 4.0):
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "mf.dcm")
    assert image.array[0, :, 0, 0].tolist() == [10 * 2 - 5, 20 * 2 - 5, 30 * 2 - 5]
    np.testing.assert_allclose(image.affine[:3, 0], [0, 0, 2.0])
    np.testing.assert_allclose(image.affine[:3, 3], [0, 0, 2.0])


def test_png_16_bit_and_jpeg(tmp_path):
    data = (np.arange(20 * 30).reshape(20, 30) * 97 % 65535).astype(np.uint16)
    PILImage.fromarray(data).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.array.shape == (1, 20, 30) and image.array.max() > 255
    np.testing.assert_array_equal(image.array[0], data)
    PILImage.fromarray(np.full((8, 9, 3), 128, np.uint8)).save(tmp_path / "b.jpg")
    jpeg = read_image(tmp_path / "b.jpg")
    assert jpeg.kind == "jpeg" and jpeg.array.shape == (3, 8, 9)


def test_nifti_4d_needs_an_index(tmp_path):
    data = np.arange(4 * 5 * 6 * 3, dtype=np.float32).reshape(4, 5, 6, 3)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "f.nii.gz")
    with pytest.raises(InputError, match=r"f\.nii\.gz: 4D volume with 3 volumes; choose one with --index"):
        read_image(tmp_path / "f.nii.gz")
    image = read_image(tmp_path / "f.nii.gz", index=2)
    np.testing.assert_array_equal(image.array[0], data[..., 2])
    np.testing.assert_array_equal(image.affine, affine)
    with pytest.raises(InputError, match="out of range"):
        read_image(tmp_path / "f.nii.gz", index=3)


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and name in message
    return message


def test_bad_dicom_inputs_are_one_line_errors(tmp_path):
    good = tmp_path / "good.dcm"
    S.dicom_dataset(np.ones((32, 32), np.uint16)).save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) - 700])
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "cut.dcm")
    assert "truncated" in _one_line(exc, "cut.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\x00\x01garbage" * 5)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "junk.dcm")
    _one_line(exc, "junk.dcm")
    # compressed pixel data whose decoder is missing (JPEG Lossless SV1, common in CT archives, needs
    # pylibjpeg-libjpeg or gdcm: not installed)
    ds = S.dicom_dataset(np.ones((8, 8), np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 30])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg14.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "jpeg14.dcm")
    assert "compressed DICOM (JPEG Lossless" in _one_line(exc, "jpeg14.dcm")
    # a decoder that is installed (JPEG-LS: pyjpegls, which highdicom brings) but a damaged stream
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 30])
    ds.save_as(tmp_path / "jls.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "jls.dcm")
    assert "cannot decode DICOM pixel data" in _one_line(exc, "jls.dcm")


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError) as exc:
        expand_input(tmp_path / "empty")
    assert "no images" in _one_line(exc, "empty")
    with pytest.raises(InputError):
        read_image(tmp_path / "empty")
    mixed = tmp_path / "two"
    vol = np.ones((2, 8, 8), np.uint16)
    geometry = dict(origin=(0, 0, 0), orientation=(1, 0, 0, 0, 1, 0), spacing=(1, 1), step=1.0)
    S.write_series(mixed / "a", vol, **geometry)
    S.write_series(mixed / "b", vol, **geometry)
    for p in (mixed / "b").iterdir():
        p.rename(mixed / "a" / ("b" + p.name))
    with pytest.raises(InputError) as exc:
        read_image(mixed / "a")
    assert "2 DICOM series" in _one_line(exc, "a")
    assert expand_input(mixed) == [mixed / "a"]  # a folder of series folders: each series an input


def test_window_presets_and_resampling_keeps_total():
    assert set(WINDOW_PRESETS) == {"brain", "lung", "bone", "soft-tissue"}
    assert window_preset("soft_tissue") == WINDOW_PRESETS["soft-tissue"]
    assert window_preset("LUNG") == (-600.0, 1500.0)
    with pytest.raises(InputError, match="unknown window preset"):
        window_preset("liver")
    np.testing.assert_array_equal(apply_window(np.array([-2000.0, 40.0, 900.0]), 40, 80), [0.0, 40.0, 80.0])
    r = np.random.default_rng(0).standard_normal((8, 8, 8))
    up = to_input_grid(r, (16, 24, 16))
    assert up.shape == (16, 24, 16)
    assert up.sum() == pytest.approx(r.sum(), rel=0.05, abs=0.05)
    down = to_input_grid(np.random.default_rng(1).standard_normal((16, 16)), (8, 4))
    assert down.shape == (8, 4)
    big = np.random.default_rng(1).standard_normal((16, 16))
    assert to_input_grid(big, (8, 4)).sum() == pytest.approx(big.sum())


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    import os
    import stat

    from medlrp.io import atomic_path

    target = tmp_path / "sub" / "r.relevance.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            assert not target.exists()
            raise RuntimeError("crash mid-write")
    assert list((tmp_path / "sub").iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and list((tmp_path / "sub").iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
