"""The overlay drawn with numpy and Pillow is the picture matplotlib drew: panels, colours, scale, outline.

The reference (tests/overlay_reference.py) is the former matplotlib drawing of the same panels. Panels are
compared pixel by pixel after scaling the new panel to the reference's size; colours and the colour
limit are checked against matplotlib's ``bwr`` map directly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image as PILImage

from medlrp.viz.overlay import OUTLINE_RGB, overlay_panels, overlay_picture, overlay_png
from medlrp.viz.raster import boundary, fit, nearest, nice_ticks, png_bytes
from overlay_reference import reference_overlay


def _smooth_2d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    yy, xx = np.mgrid[:48, :60]
    image = np.sin(xx / 7) + np.cos(yy / 9)
    relevance = 3e-3 * np.exp(-((xx - 20) ** 2 + (yy - 15) ** 2) / 60)
    relevance -= 1.5e-3 * np.exp(-((xx - 45) ** 2 + (yy - 30) ** 2) / 90)
    mask = ((xx - 20) ** 2 + (yy - 15) ** 2 < 80).astype(float)
    return image, relevance, np.eye(4), mask, (-2.0, 2.0)


def _smooth_3d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    z, y, x = np.mgrid[:16, :24, :20]
    image = np.sin(x / 5) + z / 10
    relevance = np.exp(-((x - 10) ** 2 + (y - 8) ** 2 + (z - 6) ** 2) / 20)
    relevance -= 0.5 * np.exp(-((x - 4) ** 2 + (y - 18) ** 2 + (z - 10) ** 2) / 10)
    mask = (((x - 10) ** 2 + (y - 8) ** 2 + (z - 6) ** 2) < 30).astype(float)
    return image, relevance, np.diag([2.0, 1.0, 1.0, 1.0]), mask, (-1.0, 3.0)


def _panel_differences(
    case, relevance_shown: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per panel: the largest channel difference between the new and the reference picture, per pixel
    (the new panel scaled to the reference's size) and at the centre of every voxel."""
    image, relevance, affine, mask, window = case
    reference, boxes = reference_overlay(*overlay_panels(image, relevance, affine, window, mask))
    shown = relevance if relevance_shown is None else relevance_shown
    panels, limit = overlay_panels(image, shown, affine, window, mask)
    new = overlay_picture(panels, limit)
    assert len(new.panels) == len(boxes)
    out = []
    for (top, left, rows, cols), (ntop, nleft, nrows, ncols), panel in zip(
        boxes, new.panels, panels, strict=True
    ):
        # the same panel size (matplotlib's layout leaves a few pixels more around the panels)
        assert abs(nrows - rows) <= 0.06 * rows and abs(ncols - cols) <= 0.06 * cols
        ours = PILImage.fromarray(new.pixels[ntop : ntop + nrows, nleft : nleft + ncols])
        ours = np.asarray(ours.resize((cols, rows), PILImage.NEAREST)).astype(np.int16)
        theirs = reference[top : top + rows, left : left + cols].astype(np.int16)
        i = (np.arange(panel[1].shape[0]) + 0.5) / panel[1].shape[0]
        j = (np.arange(panel[1].shape[1]) + 0.5) / panel[1].shape[1]
        centres_theirs = reference[(top + i * rows).astype(int)][:, (left + j * cols).astype(int)]
        centres_ours = new.pixels[(ntop + i * nrows).astype(int)][:, (nleft + j * ncols).astype(int)]
        centres = np.abs(centres_ours.astype(np.int16) - centres_theirs).max(axis=-1)
        out.append((np.abs(ours - theirs).max(axis=-1), centres))
    return out


@pytest.mark.parametrize("case", [_smooth_2d, _smooth_3d], ids=["2d", "3d"])
def test_panels_match_the_matplotlib_drawing(case):
    data = case()
    for pixels, centres in _panel_differences(data):
        # every voxel has matplotlib's colour (to rounding) at its centre; the few exceptions are where
        # matplotlib's contour line (1.4 px wide) crosses the centre of a small voxel
        assert np.percentile(centres, 99) <= 2 and (centres > 2).mean() < 0.01
        # all pixels: voxel edges land a pixel apart after two resamplings, the outline is drawn apart
        assert pixels.mean() < 6.0 and (pixels > 16).mean() < 0.06
    # the comparison sees a wrong colouring: the relevance with its sign flipped
    flipped = _panel_differences(data, -data[1])
    assert max(float((centres > 2).mean()) for _, centres in flipped) > 0.2


def test_colours_and_limit_are_matplotlibs_bwr_on_the_symmetric_limit():
    relevance = np.zeros((8, 8))
    relevance[1, 1], relevance[1, 5], relevance[5, 1] = 2.0, -2.0, 1.0  # limit max|R| = 2
    picture = overlay_picture(*overlay_panels(np.zeros((8, 8)), relevance, np.eye(4), (0.0, 1.0)))
    assert picture.limit == 2.0
    top, left, rows, cols = picture.panels[2]  # "relevance": the colours over white

    def at(i: int, j: int) -> np.ndarray:
        return picture.pixels[top + int((i + 0.5) * rows / 8), left + int((j + 0.5) * cols / 8)].astype(float)

    bwr = colormaps["bwr"]
    np.testing.assert_allclose(at(1, 1), np.array(bwr(1.0)[:3]) * 255, atol=1)  # +limit: opaque red
    np.testing.assert_allclose(at(1, 5), np.array(bwr(0.0)[:3]) * 255, atol=1)  # -limit: opaque blue
    np.testing.assert_allclose(at(3, 3), [255, 255, 255], atol=0)  # zero: transparent over white
    half = 0.5 * np.array(bwr(0.75)[:3]) * 255 + 0.5 * 255  # R = limit/2: half opaque
    np.testing.assert_allclose(at(5, 1), half, atol=2)
    # the colour bar runs from +limit (top) to -limit (bottom) in the same map
    bar = picture.pixels[:, -80]
    coloured = np.flatnonzero(np.abs(bar.astype(int) - 255).sum(axis=1) > 0)
    np.testing.assert_allclose(bar[coloured[1]], np.array(bwr(1.0)[:3]) * 255, atol=3)
    np.testing.assert_allclose(bar[coloured[-2]], np.array(bwr(0.0)[:3]) * 255, atol=3)


def test_png_is_the_picture_at_matplotlibs_size():
    for case, width in ((_smooth_2d(), 930), (_smooth_3d(), 1210)):
        image, relevance, affine, mask, window = case
        picture = overlay_picture(*overlay_panels(image, relevance, affine, window, mask), "a title")
        decoded = np.asarray(
            PILImage.open(io.BytesIO(overlay_png(image, relevance, affine, window, "a title", mask)))
        )
        assert decoded.shape == (330, width, 3) and np.array_equal(decoded, picture.pixels)
        green = np.all(decoded == OUTLINE_RGB, axis=-1)
        assert green.sum() > 100  # the mask's outline on every panel


def test_panel_sizes_keep_the_voxel_aspect():
    assert fit((10, 20), 1.0, 100, 300) == (100, 200)  # height-bound
    assert fit((10, 20), 2.0, 100, 300) == (100, 100)  # voxels twice as high as wide
    assert fit((30, 10), 1.0, 300, 50) == (150, 50)  # width-bound
    assert fit((10, 20), 0.0, 100, 300) == fit((10, 20), float("nan"), 100, 300) == (100, 200)


def test_nearest_and_boundary():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(nearest(a, 6, 8), np.repeat(np.repeat(a, 2, axis=0), 2, axis=1))
    np.testing.assert_array_equal(nearest(a, 3, 2), a[:, [1, 3]])
    mask = np.zeros((7, 7))
    mask[2:5, 2:5] = 1
    line = boundary(mask)
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    for corner in ((1, 1), (1, 5), (5, 1), (5, 5)):  # diagonal-only neighbours are not on the line
        ring[corner] = False
    np.testing.assert_array_equal(line, ring)


@pytest.mark.parametrize("limit", [1.0, 2.9e-3, 0.07, 37.0, 4.2e-7])
def test_ticks_are_round_symmetric_and_inside_the_limit(limit):
    ticks, decimals = nice_ticks(limit)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert 3 <= len(ticks) <= 9 and 0.0 in ticks and np.allclose(ticks, -ticks[::-1])
    assert ticks[-1] <= limit * (1 + 1e-9) and ticks[-1] + step > limit
    assert any(np.isclose(mantissa, m) for m in (1.0, 2.0, 2.5, 5.0))
    assert float(f"{step:.{decimals}f}") == pytest.approx(step)


@pytest.mark.parametrize("shape", [(7, 5), (6, 9, 3), (4, 3, 4)], ids=["grey", "rgb", "rgba"])
def test_png_encoder_is_lossless(shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # rows differ: the filter wraps
    decoded = np.asarray(PILImage.open(io.BytesIO(png_bytes(array))))
    assert decoded.shape == array.shape and np.array_equal(decoded, array)


@pytest.mark.parametrize(
    "array", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)]
)
def test_png_encoder_refuses_what_it_cannot_write(array):
    with pytest.raises(ValueError, match="png_bytes takes uint8"):
        png_bytes(array)
