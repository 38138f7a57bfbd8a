"""The HTML report: self-contained, loads in headless Chromium without console errors, sliders work."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from medlrp.report import ReportSection, build_report, case_view, markdown_to_html, table_html, write_report
from medlrp.viz import diverging_rgba, symmetric_limit

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync"
).split()


PEAK = (6, 11, 3)  # the volume's relevance peak (array index)


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    volume = rng.random((9, 16, 12)) * 100
    relevance = rng.standard_normal((9, 16, 12)) * 0.1
    relevance[PEAK] = 5.0
    affine = np.diag([3.0, 0.8, 0.8, 1.0])[[2, 1, 0, 3]]  # array axis 0 runs along z: axial slices
    mask3d = np.zeros((9, 16, 12))
    mask3d[4:8, 8:14, 2:6] = 1
    image2d = rng.random((20, 24))
    mask2d = np.zeros((20, 24))
    mask2d[5:12, 6:15] = 1
    common = {
        "kind": "nifti",
        "probabilities": {"a": 0.25, "b": 0.75},
        "prediction_name": "b",
        "probability": 0.75,
        "target_name": "b",
        "timing": {"total_s": 0.5},
    }
    maps = {"lrp": relevance, "gradient": -relevance}
    return [
        {
            **common,
            "case": "vol",
            "label_name": "a",
            "shape": [9, 16, 12],
            "spacing": [3.0, 0.8, 0.8],
            "_view": case_view(volume, maps, affine, (0.0, 100.0), mask=mask3d),
            "metrics": {
                "lrp": {"positive_share_in_mask": 0.5, "top_k_share_in_mask": 0.25, "pointing_game": 1.0},
                "gradient": {"positive_share_in_mask": 0.0, "top_k_share_in_mask": 0.0, "pointing_game": 0.0},
            },
        },
        {
            **common,
            "case": "flat",
            "label_name": "b",
            "shape": [20, 24],
            "spacing": [1.0, 1.0],
            "_view": case_view(image2d, {"lrp": image2d - 0.5}, np.eye(4), (0.0, 1.0), mask=mask2d),
            "metrics": {
                "lrp": {"positive_share_in_mask": 0.75, "top_k_share_in_mask": 1.0, "pointing_game": 1.0}
            },
        },
    ]


def _evaluation_section() -> ReportSection:
    """The table ``medlrp evaluate`` writes, from made-up values within each metric's range."""
    from medlrp.metrics.suite import METRICS, EvaluationResult
    from medlrp.metrics.table import table_markdown

    rng = np.random.default_rng(1)
    values = {
        m: {info.name: list(rng.uniform(max(info.low, -1.0), min(info.high, 2.0), 5)) for info in METRICS}
        for m in ("lrp", "gradcam")
    }
    result = EvaluationResult(methods=["lrp", "gradcam"], cases=[f"c{i}" for i in range(5)], values=values)
    return ReportSection("Metrics", markdown=table_markdown(result))


def test_report_is_self_contained_and_escapes_sections():
    text = build_report(
        _records(),
        title="t <b>",
        sections=[
            ReportSection(
                "Metrics", markdown="| method | AOPC |\n|---|---|\n| lrp | 0.5 |\n\n<script>x</script>"
            )
        ],
        failures=[{"input": "bad.dcm", "error": "bad.dcm: truncated"}],
    )
    assert "http://" not in text and "https://" not in text
    for attr in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert attr.startswith("data:"), attr
    assert "<script>x</script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text
    assert "<td>lrp</td><td>0.5</td>" in text and "t &lt;b&gt;" in text and "bad.dcm: truncated" in text
    assert "positive_share_in_mask [0, 1]" in text


def test_markdown_and_tables():
    html = markdown_to_html("# Title\n\nSome `code` and **bold**.\n\n- one\n- two")
    assert "<h3>Title</h3>" in html and "<code>code</code>" in html and "<li>two</li>" in html
    assert table_html([{"a": 0.123456, "b": None}]) == (
        '<table class="grid"><thead><tr><th>a</th><th>b</th></tr></thead>'
        "<tbody><tr><td>0.1235</td><td></td></tr></tbody></table>"
    )


def test_colours_are_signed_and_symmetric():
    r = np.array([[0.0, 2.0], [-1.0, 1.0]])
    limit = symmetric_limit(r)
    assert limit == 2.0
    rgba = diverging_rgba(r, limit)
    assert rgba[0, 0, 3] == 0 and tuple(rgba[0, 0, :3]) == (255, 255, 255)  # zero: white, transparent
    assert rgba[0, 1, 0] > 200 and rgba[0, 1, 2] < 50 and rgba[0, 1, 3] == 255  # +max: red, opaque
    assert rgba[1, 0, 2] == 255 and 120 < rgba[1, 0, 0] < 136  # -max/2: light blue, half alpha
    assert rgba[1, 0, 3] == 128
    # a positive-only map keeps zero white (no min-max stretching)
    assert tuple(diverging_rgba(np.array([0.0, 1.0]), 1.0)[0, :3]) == (255, 255, 255)


def _driver(tmp: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _in_range(text: str, low: float, high: float) -> bool:
    value = float(text.split("±")[0].replace("−", "-"))
    return low <= value <= high


def _range(header: str) -> tuple[float, float] | None:
    m = re.search(r"[\[(]\s*(-?[0-9.]+|-?inf|[-−]?∞)\s*,\s*(-?[0-9.]+|inf|∞)\s*[\])]", header)
    if m is None:
        return None
    return tuple(float(g.replace("∞", "inf").replace("−", "-")) for g in m.groups())  # type: ignore[return-value]


def test_report_in_headless_chromium(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian chromium and chromium-driver are needed: run `make chromium` (as root) first")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path = write_report(
        tmp_path / "report.html", _records(), title="browser test", sections=[_evaluation_section()]
    )
    profile = tempfile.mkdtemp(prefix="medlrp-chromium-")
    driver = _driver(profile)
    try:
        driver.get(path.resolve().as_uri())
        case = driver.find_element(By.ID, "case-0")
        # three orthogonal planes, each with its own slider, each opening at the relevance peak
        starts = {}
        for plane, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
            holder = case.find_element(By.CSS_SELECTOR, f'.plane[data-plane="{plane}"]')
            starts[plane] = holder.get_attribute("data-slice")
            assert starts[plane] == str(PEAK[axis] + 1), plane
            assert holder.find_element(By.CSS_SELECTOR, ".slice-value").text.startswith(
                f"{PEAK[axis] + 1} / "
            )
        axial = case.find_element(By.CSS_SELECTOR, '.plane[data-plane="axial"]')
        coronal = case.find_element(By.CSS_SELECTOR, '.plane[data-plane="coronal"]')
        slider = axial.find_element(By.CSS_SELECTOR, "input.slice")
        base = axial.find_element(By.CSS_SELECTOR, "img.base")
        layer = axial.find_element(By.CSS_SELECTOR, "img.layer")
        edge = axial.find_element(By.CSS_SELECTOR, "img.outline")
        coronal_base = coronal.find_element(By.CSS_SELECTOR, "img.base").get_attribute("src")
        slider.send_keys(Keys.HOME)
        before = (slider.get_attribute("value"), base.get_attribute("src"), layer.get_attribute("src"))
        assert before[0] == "0" and axial.get_attribute("data-slice") == "1"
        slider.send_keys(Keys.ARROW_RIGHT)
        after = (slider.get_attribute("value"), base.get_attribute("src"), layer.get_attribute("src"))
        assert after[0] == "1" and axial.get_attribute("data-slice") == "2"
        assert after[1] != before[1] and after[2] != before[2], "the slice slider did not change the pictures"
        assert axial.find_element(By.CSS_SELECTOR, ".slice-value").text == "2 / 9"
        assert edge.get_attribute("src").startswith("data:image/png;base64,")
        # one plane's slider leaves the others alone
        assert coronal.find_element(By.CSS_SELECTOR, "img.base").get_attribute("src") == coronal_base
        assert coronal.get_attribute("data-slice") == starts["coronal"]
        opacity = case.find_element(By.CSS_SELECTOR, "input.opacity")
        opacity.send_keys(Keys.HOME)
        assert layer.value_of_css_property("opacity") == "0"
        flat_layer = driver.find_element(By.CSS_SELECTOR, "#case-1 img.layer")
        assert flat_layer.get_attribute("src").startswith("data:image/png;base64,")

        for case_id in ("case-0", "case-1"):
            box = driver.find_element(By.ID, case_id)
            # a colour bar saying what the colours mean, shown (not only present)
            bar = box.find_element(By.CSS_SELECTOR, ".colorbar")
            assert bar.is_displayed() and bar.size["width"] > 100
            gradient = bar.value_of_css_property("background-image")
            assert "rgb(0, 0, 255)" in gradient and "rgb(255, 0, 0)" in gradient, gradient
            legend = box.find_element(By.CSS_SELECTOR, ".legend").text
            assert "red: evidence for the class" in legend and "blue: evidence against" in legend
            assert "mask" in legend
            # the mask outline over every picture (image and each method), visible
            stacks = box.find_elements(By.CSS_SELECTOR, ".stack")
            outlines = box.find_elements(By.CSS_SELECTOR, ".stack img.outline")
            assert len(outlines) == len(stacks) > 0 and all(o.is_displayed() for o in outlines)
            # the true label beside the prediction
            text = box.text
            assert "prediction: b" in text and "true label:" in text
        assert "true label: a (wrong)" in driver.find_element(By.ID, "case-0").text
        assert "true label: b (correct)" in driver.find_element(By.ID, "case-1").text

        # every metric shown states its range, and no value leaves it
        cells = driver.find_elements(By.CSS_SELECTOR, "td[data-metric]")
        assert len(cells) == 3 * 2 + 3
        for cell in cells:
            low, high = float(cell.get_attribute("data-low")), float(cell.get_attribute("data-high"))
            assert low <= float(cell.get_attribute("data-value")) <= high, cell.get_attribute("data-metric")
            assert _in_range(cell.text, low, high)
        checked = 0
        for table in driver.find_elements(By.CSS_SELECTOR, "table.grid"):
            heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
            if "method" not in heads or "probability" in heads or "mean rank" in heads:
                continue
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
                for head, td in zip(heads[1:], row.find_elements(By.CSS_SELECTOR, "td")[1:], strict=True):
                    bounds = _range(head)
                    assert bounds is not None, f"metric {head!r} states no range"
                    if td.text not in ("–", ""):
                        assert _in_range(td.text, *bounds), (head, td.text)
                        checked += 1
        assert checked >= 2 * 9 + 9  # the evaluation table (2 methods x 9 metrics) and the cases' cells
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # console errors
        assert errors == []
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_slices_are_shown_in_radiological_orientation():
    from medlrp.viz import oriented_mip, oriented_slice, plane_name, slice_axis

    nx, ny, nz = 4, 5, 3
    vol = np.fromfunction(lambda x, y, z: x * 100 + y * 10 + z, (nx, ny, nz))
    ras = np.eye(4)  # NIfTI-style: array axes x (to the right), y (anterior), z (superior)
    assert slice_axis(ras, "axial") == 2 and plane_name(ras, 0) == "sagittal"
    axial = oriented_slice(vol, ras, 2, 1)
    assert axial.shape == (ny, nx)
    assert axial[0, 0] == vol[nx - 1, ny - 1, 1]  # anterior at the top, patient's right on the left
    coronal = oriented_slice(vol, ras, 1, 2)
    assert coronal.shape == (nz, nx) and coronal[0, 0] == vol[nx - 1, 2, nz - 1]  # superior at the top
    # a DICOM-style stack (slice, row, col) with rows running posterior and columns to the patient's left
    dicom = np.zeros((4, 4))
    dicom[:3, 0], dicom[:3, 1], dicom[:3, 2] = [0, 0, 2.5], [0, -0.7, 0], [-0.7, 0, 0]
    stack = np.arange(3 * 6 * 5).reshape(3, 6, 5).astype(float)
    assert slice_axis(dicom, "axial") == 0
    np.testing.assert_array_equal(oriented_slice(stack, dicom, 0, 2), stack[2])  # shown as stored
    mip = oriented_mip(np.array([[[1.0, -3.0]], [[2.0, 0.5]]]), np.eye(4), 0, signed=True)
    # rays along x: (y, z) = (0, 0) sees 1 and 2 -> 2; (0, 1) sees -3 and 0.5 -> -3 (sign kept); z up
    assert mip.tolist() == [[-3.0], [2.0]]
