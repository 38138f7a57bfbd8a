"""Where the time of one `medlrp explain` case goes: reading, preprocessing, LRP, writing, pictures.

Run: .venv/bin/python benchmarks/explain_pipeline.py
Prints a table (median seconds of --repeats runs per stage) and writes
benchmarks/results/explain_pipeline.json.
The reference is a plain forward+backward of the same model on the same model input.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medlrp
from medlrp.io import read_image, to_input_grid, write_nifti
from medlrp.models import LoadedModel, Preprocessing
from medlrp.pipeline import explain_case, prepare
from medlrp.registry import ARCHITECTURES
from medlrp.report import case_view
from medlrp.viz import overlay_png


def _series(folder: Path, slices: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), uid, "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept = [0.7, 0.7], 2.0, 1, -1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = rng.integers(0, 2000, (size, size)).astype(np.uint16).tobytes()
        pydicom.dcmwrite(folder / f"{k:03d}.dcm", ds, enforce_file_format=True)
    return folder


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _case(label: str, source: Path, loaded: LoadedModel, out: Path, repeats: int) -> dict:
    image = read_image(source)
    x = prepare(loaded, image)
    spatial = image.array.shape[1:]
    e = medlrp.explain(loaded.model, x, method="lrp")
    r = e.relevance[0].sum(0).double().numpy()
    r_in = to_input_grid(r, spatial)
    display = image.array[0]

    def forward_backward() -> None:
        xi = x.clone().requires_grad_(True)
        loaded.model(xi)[0].max().backward()

    stages = {
        "read": lambda: read_image(source),
        "preprocess": lambda: prepare(loaded, image),
        "forward+backward": forward_backward,
        "lrp": lambda: medlrp.explain(loaded.model, x, method="lrp"),
        "resample": lambda: to_input_grid(r, spatial),
        "nifti write": lambda: write_nifti(out / "b.relevance.nii.gz", r_in.astype(np.float32), image.affine),
        "overlay png": lambda: overlay_png(display, r_in, image.affine, (-160.0, 240.0)),
        "report views": lambda: case_view(display, {"lrp": r_in}, image.affine, (-160.0, 240.0)),
        "explain_case (all)": lambda: explain_case(loaded, image, ["lrp"], out),
    }
    row = {"case": label, "input": "x".join(map(str, spatial)), "model grid": "x".join(map(str, x.shape[2:]))}
    row.update({k: _median(fn, repeats) for k, fn in stages.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        m2 = ARCHITECTURES.get("cnn2d")(in_channels=1, num_classes=2).eval()
        loaded2 = LoadedModel(m2, Preprocessing(dims=2, size=[128, 128]), ["a", "b"], "cnn2d")
        rows.append(
            _case("CT_small.dcm (2D)", Path(get_testdata_file("CT_small.dcm")), loaded2, out, args.repeats)
        )
        m3 = ARCHITECTURES.get("cnn3d")(in_channels=1, num_classes=2).eval()
        loaded3 = LoadedModel(m3, Preprocessing(dims=3, size=[48, 64, 64]), ["a", "b"], "cnn3d")
        series = _series(Path(tmp) / "series", 40, 128)
        rows.append(_case("DICOM series 40 files (3D)", series, loaded3, out, args.repeats))
    keys = list(rows[0])
    print(" | ".join(f"{k:>18}" for k in keys))
    for row in rows:
        print(" | ".join(f"{v:>18.4f}" if isinstance(v, float) else f"{v:>18}" for v in row.values()))
    for row in rows:
        fb = row["forward+backward"]
        print(
            f"{row['case']}: explain_case / (forward+backward) = {row['explain_case (all)'] / fb:.1f}x, "
            f"lrp / (forward+backward) = {row['lrp'] / fb:.2f}x"
        )
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "repeats": args.repeats,
        "rows": rows,
    }
    path = Path(__file__).parent / "results" / "explain_pipeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
