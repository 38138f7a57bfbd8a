"""Tests generated from the registries: every input format of :data:`medlrp.io.FORMATS` and every metric
of :data:`medlrp.metrics.suite.METRICS` (a new entry is tested without a new test)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medlrp.data.folder import scan_cases
from medlrp.io import (
    FORMATS,
    IMAGE_SUFFIXES,
    SIGNAL_SUFFIXES,
    expand_input,
    find_mask,
    format_of,
    is_signal,
    read_image,
    stem,
    write_nifti,
    write_npy,
    write_png,
    write_wfdb,
)
from medlrp.metrics.suite import CASE_METRICS, METRICS, NEEDS, evaluate_methods
from medlrp.pipeline import _metrics
from medlrp.registry import ARCHITECTURES
from test_io_support import dicom_dataset

PIXELS = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 3) % 200


def _jpeg(path: Path) -> None:
    PILImage.fromarray(PIXELS.astype(np.uint8)).save(path)


#: A writer of a tiny file per registered format (a format without one fails test_every_format_has_a_writer).
WRITERS = {
    "png": lambda p: write_png(p, PIXELS.astype(np.uint8)),
    "jpeg": _jpeg,
    "nifti": lambda p: write_nifti(p, PIXELS.astype(np.float32)[..., None], np.eye(4)),
    "npy": lambda p: write_npy(p, np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)),
    "wfdb": lambda p: write_wfdb(p, np.random.default_rng(0).normal(size=(2, 64)), fs=100.0),
    "dicom": lambda p: dicom_dataset(PIXELS).save_as(p, enforce_file_format=True),
}
CASES = [(f, s) for f in FORMATS for s in f.suffixes]


def test_every_format_has_a_writer_and_suffixes_are_derived():
    assert set(WRITERS) == {f.name for f in FORMATS}
    assert set(IMAGE_SUFFIXES) == {s for f in FORMATS for s in f.suffixes}
    assert len(IMAGE_SUFFIXES) == len(set(IMAGE_SUFFIXES))  # no suffix claimed twice
    assert set(SIGNAL_SUFFIXES) == {".npy", ".hea"}
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    # Documented: only DICOM files are not inputs one by one (a folder of them is one series).
    assert [f.name for f in FORMATS if not f.listed] == ["dicom"]


@pytest.mark.parametrize(("fmt", "suffix"), CASES, ids=[s for _, s in CASES])
def test_format_is_read_listed_and_stemmed(tmp_path, fmt, suffix):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / f"case{suffix}"
    WRITERS[fmt.name](path)
    assert format_of(path) is fmt
    assert format_of(folder / f"CASE{suffix.upper()}") is fmt  # case-insensitive
    assert stem(path) == "case"
    image = read_image(path)
    assert image.array.size > 0 and np.isfinite(image.array).all()
    assert is_signal(image) == fmt.signal
    # A folder listing takes the file as an input of its own, or (DICOM) the folder as one series.
    assert expand_input(folder) == ([path] if fmt.listed else [folder])
    if not fmt.listed:  # the folder reads as one series
        assert read_image(folder).array.shape == image.array.shape
    # The dataset layout <class>/<case>.<ext> takes every registered format as a case.
    classes, cases = scan_cases(folder.parent, ["in"])
    assert [c.case_id for c in cases] == ["case"] and cases[0].image == path


@pytest.mark.parametrize(("fmt", "suffix"), CASES, ids=[s for _, s in CASES])
def test_mask_formats_are_found_beside_an_input_and_never_listed(tmp_path, fmt, suffix):
    image = tmp_path / "case.png"
    WRITERS["png"](image)
    mask = tmp_path / f"case_mask{suffix}"
    WRITERS[fmt.name](mask)
    assert find_mask(image) == (mask if fmt.mask else None)
    assert mask not in expand_input(tmp_path)


# ---- metrics ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation():
    torch.manual_seed(0)
    model = ARCHITECTURES.get("cnn2d")(in_channels=1, num_classes=2, width=4, stages=2).eval()
    x = torch.randn(3, 1, 32, 32)
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    batches = [(x, torch.tensor([0, 1, 0]), mask, ["a", "b", "c"])]
    return evaluate_methods(model, batches, ["lrp", "gradient"], patch_size=[8, 8])


def test_metric_registry_is_consistent():
    assert len({m.name for m in METRICS}) == len(METRICS)
    assert all(m.needs in NEEDS and callable(m.function) and m.low < m.high for m in METRICS)
    assert [m.name for m in CASE_METRICS] == [m.name for m in METRICS if m.needs == "mask"]


@pytest.mark.parametrize("info", METRICS, ids=[m.name for m in METRICS])
def test_every_metric_is_measured_within_its_range(evaluation, info):
    assert evaluation.methods == ["lrp", "gradient"], evaluation.unavailable
    values = [v for m in evaluation.methods for v in evaluation.values[m][info.name]]
    assert len(values) == 6
    finite = [v for v in values if math.isfinite(v)]
    assert finite, info.name  # LRP conserves, every case has a mask: each metric has values
    assert all(info.low <= v <= info.high for v in finite), (info.name, finite)


@pytest.mark.parametrize("info", CASE_METRICS, ids=[m.name for m in CASE_METRICS])
def test_explain_case_metrics_come_from_the_registry(info):
    rng = np.random.default_rng(1)
    relevance = rng.normal(size=(16, 16)).astype(np.float32)
    mask = np.zeros((16, 16))
    mask[4:10, 3:12] = 1
    values = _metrics(relevance, mask)
    expected = info.function(
        torch.as_tensor(relevance)[None, None], torch.as_tensor(mask > 0).float()[None, None]
    )
    assert values[info.name] == pytest.approx(float(expected[0]))
    assert info.low <= values[info.name] <= info.high


def test_docs_metric_table_matches_the_registry():
    text = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    section = text[text.index("| metric | range | better |") :].split("\n\n")[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    table = {name.strip().strip("`"): (rng.strip(), better.strip()) for name, rng, better in rows}
    assert list(table) == [m.name for m in METRICS]
    for m in METRICS:
        assert table[m.name] == (m.range_text().replace("inf", "∞"), "↑" if m.higher_is_better else "↓")
