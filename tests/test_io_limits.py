"""Readers refuse what would give a wrong map or exhaust the machine, from the header, with one line.

Decompression bombs (PNG, NIfTI, DICOM) are refused from their declared size before decoding; values
and affines are checked once read; palette-colour DICOM is looked up, RescaleSlope 0 and complex NIfTI
refused. Every refusal is one line naming the file.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

import test_io_support as S
from medlrp.errors import InputError
from medlrp.io import ReadLimits, read_image

SRC = Path(__file__).resolve().parents[1] / "src"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = 12000) -> Path:
    """A real PNG of ``side`` x ``side`` black 8-bit pixels: 144 M pixels in about 140 KB."""
    comp = zlib.compressobj(9)
    block = b"\x00" * (side + 1) * 500  # 500 rows: filter byte + pixels
    body = b"".join(comp.compress(block) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )
    return path


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and name in message, message
    return message


def test_png_bomb_refused_fast_and_small(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        with PILImage.open(bomb) as im:
            assert im.size == (12000, 12000)  # a valid PNG: Pillow reads its header
    # In a fresh process, so that time and peak memory are the read's own.
    script = (
        "import resource, sys, time\n"
        "from medlrp.io import read_image\n"
        "from medlrp.errors import InputError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    read_image(sys.argv[1])\n"
        "    print('READ')\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
        "print(time.perf_counter() - t)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(bomb)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    message, seconds, grown = run.stdout.strip().splitlines()
    assert "bomb.png" in message and "12000 x 12000" in message and "--max-pixels" in message, run.stdout
    assert float(seconds) < 2.0
    assert int(grown) < 200 * 2**20
    # With the limit raised, the same call decodes it (Pillow's own bomb warning no longer decides)
    small = png_bomb(tmp_path / "small.png", side=1000)
    with pytest.raises(InputError) as exc:
        read_image(small, limits=ReadLimits(max_pixels=999_999))
    _one_line(exc, "small.png")
    assert read_image(small, limits=ReadLimits(max_pixels=1_000_000)).array.shape == (1, 1000, 1000)


def test_pillow_bomb_warning_is_not_ignored_silently(tmp_path):
    """Above Pillow's own limit the default limits refuse (never a printed warning and a decode)."""
    bomb = png_bomb(tmp_path / "b.png", side=10000)  # 100 M pixels > Pillow's 89 M warning threshold
    with pytest.raises(InputError) as exc:
        read_image(bomb)
    assert "pixels" in _one_line(exc, "b.png")


def _nifti_header_only(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """A gzipped NIfTI whose header declares ``shape`` but whose data is a few zero bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), 1)
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 4096  # vox_offset 352
    path.write_bytes(gzip.compress(raw))
    return path


def test_nifti_bomb_refused_from_the_header(tmp_path):
    bomb = _nifti_header_only(tmp_path / "bomb.nii.gz", (2000, 2000, 2000))
    t = time.perf_counter()
    with pytest.raises(InputError) as exc:
        read_image(bomb)
    assert time.perf_counter() - t < 2.0
    message = _one_line(exc, "bomb.nii.gz")
    assert "voxels" in message and "--max-voxels" in message
    # a 4D file: one volume is read, and the decompressed size of all of them is limited too
    four = _nifti_header_only(tmp_path / "four.nii.gz", (64, 64, 64, 5000))
    with pytest.raises(InputError) as exc:
        read_image(four, index=0)
    assert "bytes" in _one_line(exc, "four.nii.gz")
    big = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), big)
    with pytest.raises(InputError):
        read_image(big, limits=ReadLimits(max_voxels=7999))
    assert read_image(big, limits=ReadLimits(max_voxels=8000)).array.shape == (1, 20, 20, 20)
    with pytest.raises(InputError) as exc:
        read_image(big, limits=ReadLimits(max_bytes=10))
    assert "--max-bytes" in _one_line(exc, "ok.nii.gz")


def test_dicom_bomb_refused_from_rows_columns_frames(tmp_path):
    ds = S.dicom_dataset(np.zeros((4, 4), np.uint16))
    ds.Rows, ds.Columns = 30000, 30000  # the pixel data holds 16 values
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "big.dcm")
    assert "30000 x 30000" in _one_line(exc, "big.dcm")
    multi = S.dicom_dataset(np.zeros((4, 4), np.uint16))
    multi.Rows, multi.Columns, multi.NumberOfFrames = 2000, 2000, 500
    multi.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "frames.dcm")
    assert "voxels" in _one_line(exc, "frames.dcm")
    series = S.write_series(
        tmp_path / "series",
        np.zeros((6, 16, 16), np.uint16),
        origin=(0, 0, 0),
        orientation=(1, 0, 0, 0, 1, 0),
        spacing=(1, 1),
        step=1.0,
    )
    with pytest.raises(InputError) as exc:
        read_image(series, limits=ReadLimits(max_voxels=6 * 16 * 16 - 1))
    _one_line(exc, "series")
    assert read_image(series, limits=ReadLimits(max_voxels=6 * 16 * 16)).array.shape == (1, 6, 16, 16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_refused(tmp_path, bad):
    data = np.ones((8, 8, 8), np.float32)
    data[3, 4, 5] = bad
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "v.nii.gz")
    assert "NaN or infinite" in _one_line(exc, "v.nii.gz")


@pytest.mark.parametrize(
    "affine",
    [
        np.zeros((4, 4)),
        np.diag([1.0, 0.0, 1.0, 1.0]),  # a zero voxel size
        np.array(
            [[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
        ),  # two axes in one direction
        np.diag([1.0, 1.0, np.nan, 1.0]),
    ],
)
def test_singular_or_non_finite_affine_refused(tmp_path, affine):
    img = nib.Nifti1Image(np.ones((6, 6, 6), np.float32), None)
    img.header.set_sform(None, 0)
    img.header.set_qform(None, 0)
    path = tmp_path / "a.nii"
    nib.save(img, path)
    raw = bytearray(path.read_bytes())  # write the sform rows by hand: nibabel refuses to set them
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[0], affine[1], affine[2]
    path.write_bytes(header.binaryblock + bytes(raw[348:]))
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert "affine" in _one_line(exc, "a.nii")


def test_complex_nifti_refused(tmp_path):
    data = (np.ones((6, 6, 6)) + 1j * np.ones((6, 6, 6))).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "c.nii.gz")
    assert "complex" in _one_line(exc, "c.nii.gz")


def test_rescale_slope_zero_refused(tmp_path):
    S.dicom_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), slope=0.0).save_as(
        tmp_path / "s.dcm", enforce_file_format=True
    )
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "s.dcm")
    assert "RescaleSlope" in _one_line(exc, "s.dcm")


def test_palette_colour_dicom_is_looked_up():
    path = Path(get_testdata_file("examples_palette.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    image = read_image(path)
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)  # (rows, cols, 3) colours
    assert image.array.shape == (3, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(image.array, np.moveaxis(expected, -1, 0).astype(np.float32))
    # the stored indices are not what is read: the lookup changed the values
    assert not np.array_equal(image.array[0], ds.pixel_array.astype(np.float32))


def test_limits_reject_nonsense():
    with pytest.raises(InputError, match="max-pixels"):
        ReadLimits(max_pixels=0)
