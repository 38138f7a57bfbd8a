"""The shortcuts a phantom can carry ("confounds"), each drawn outside the case's region.

A confounded data set pairs one of these with a class (:mod:`medlrp.data.phantom.writer`); a model that
reads it scores well on the training split and at chance on the test split, where it is independent of
the class. Every kind lies outside the case's ``region`` (the head for glioma, the lung fields for the
chest), so explanation-guided training with that region as its annotation can remove it:

* ``corner-token``: a mid-grey label patch in a corner of every image, a bright square inside it when
  present (the phantoms' original token; ``position`` names the corner);
* ``border-marker``: a radiographer's side marker, a brighter ``L`` or ``R`` on a bright plate at a random
  place along the border (``position``: ``any`` edge or one of them);
* ``digits``: four burned-in digits (a 3x5 bitmap font) at a random place along the top or bottom edge;
* ``ruler``: a stripe with tick marks (longer every fourth) along half of an edge.

The place, the letter and the digits come from the case's own random stream, the same whether the
confound is drawn or not, so a case drawn with and without it differs only in the confound's pixels.
``size`` scales the confound (1: the default; glyphs never get thinner than one pixel). A place is
picked among those whose box stays a pixel clear of the region; where none is (large sizes, small
images) the confound is cut at the region's outline: it never enters the region. Volumes extrude the
in-plane drawing (last two axes) over a slab of slices at a random depth; the corner token is a cube.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from medlrp.data.phantom import shapes
from medlrp.errors import InputError

#: Kind -> the positions it accepts (the first is the default).
POSITIONS: dict[str, tuple[str, ...]] = {
    "corner-token": ("top-left", "top-right", "bottom-left", "bottom-right"),
    "border-marker": ("any", "top", "bottom", "left", "right"),
    "digits": ("bottom", "top"),
    "ruler": ("left", "right", "top", "bottom"),
}
CONFOUNDS = tuple(POSITIONS)
#: The range of ``size`` (a factor on the default size).
SIZE_RANGE = (0.25, 4.0)
#: Image edge length at which a font pixel is one image pixel (``size`` 1).
FONT_BASE = 64
#: A 3x5 bitmap font: the digits and the side-marker letters.
FONT = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    "L": ("100", "100", "100", "100", "111"),
    "R": ("110", "101", "110", "101", "101"),
}
#: Intensities (the anatomy lies within about 0..1).
MARKER_PLATE, MARKER_LETTER, DIGIT, RULER = 1.0, 1.4, 1.1, 0.95


@dataclass(frozen=True)
class Confound:
    """Which shortcut to draw and how (``medlrp phantom --confound/--confound-size/--confound-position``).

    Attributes:
        kind: One of :data:`CONFOUNDS`.
        size: Factor on the kind's default size, within :data:`SIZE_RANGE`.
        position: One of the kind's :data:`POSITIONS` (``None``: its default).
    """

    kind: str = "corner-token"
    size: float = 1.0
    position: str | None = None

    def checked(self) -> Confound:
        """Validate and fill the default position.

        Raises:
            InputError: An unknown kind or position, or a size out of range.
        """
        if self.kind not in POSITIONS:
            raise InputError(f"--confound must be one of {', '.join(CONFOUNDS)}, not {self.kind!r}")
        low, high = SIZE_RANGE
        if not low <= self.size <= high:
            raise InputError(f"--confound-size must be between {low} and {high}, not {self.size}")
        known = POSITIONS[self.kind]
        if self.position is not None and self.position not in known:
            raise InputError(
                f"--confound-position for {self.kind} must be one of {', '.join(known)}, "
                f"not {self.position!r}"
            )
        return replace(self, position=self.position or known[0])


#: What :func:`draw` returns: values to paste, where to paste them, and the confound's area (where it
#: is or would be drawn: the same whether it is present or not).
Drawn = tuple[np.ndarray, np.ndarray, np.ndarray]


def draw(
    confound: Confound | None,
    shape: Sequence[int],
    region: np.ndarray,
    present: bool,
    rng: np.random.Generator,
) -> Drawn:
    """Draw one case's confound outside ``region``.

    Args:
        confound: What to draw (``None``: the default corner token).
        shape: The image's shape, ``(H, W)`` or ``(D, H, W)``.
        region: Where class evidence may lie (non-zero); nothing is pasted there.
        present: Draw the confound (the corner token's grey patch is drawn either way).
        rng: The case's confound stream (place, letter, digits).

    Returns:
        ``(value, paste, area)``: paste ``value`` where ``paste`` is true; ``area`` marks the confound.
    """
    confound = (confound or Confound()).checked()
    shape = tuple(shape)
    outside = ~np.broadcast_to(np.asarray(region).astype(bool), shape)
    if confound.kind == "corner-token":
        value, area = shapes.corner_token(shape, present, confound.size, confound.position or "top-left")
        return value, area & outside, area & outside
    pattern, depth, edges = _pattern(confound, shape, rng)
    value, area = _place(pattern, depth, edges, shape, ~outside, rng)
    area &= outside
    paste = area & (value > 0) if present else np.zeros(shape, dtype=bool)
    return value, paste, area


def font_scale(shape: Sequence[int], size: float) -> float:
    """Image pixels per font pixel: ``size`` at a 64-pixel edge, proportional to the edge, at least 1."""
    return max(1.0, min(shape[-2:]) / FONT_BASE * size)


def _pattern(
    confound: Confound, shape: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, int, tuple[str, ...]]:
    """The in-plane drawing of a glyph-like confound, its depth in slices (volumes) and its edges."""
    scale = font_scale(shape, confound.size)
    position = confound.position or POSITIONS[confound.kind][0]
    if confound.kind == "border-marker":
        letter = _bitmap(FONT["LR"[int(rng.integers(2))]])
        plate = np.pad(letter * (MARKER_LETTER - MARKER_PLATE), 1) + MARKER_PLATE
        pattern = _resize(plate, scale)
        edges = ("top", "bottom", "left", "right") if position == "any" else (position,)
        return pattern, pattern.shape[1], edges
    if confound.kind == "digits":
        glyphs = [_bitmap(FONT[str(d)]) for d in rng.integers(0, 10, size=4)]
        gap = np.zeros((5, 1))
        text = np.concatenate([part for g in glyphs for part in (g, gap)][:-1], axis=1) * DIGIT
        pattern = _resize(text, scale)
        return pattern, max(1, round(2 * scale)), (position,)
    # ruler: drawn along the last axis, turned for the left/right edges
    edge_length = shape[-1] if position in ("top", "bottom") else shape[-2]
    pattern = _ruler(max(8, round(edge_length * 0.5 * confound.size)), max(1, round(scale)))
    if position in ("left", "right"):
        pattern = pattern.T[:, ::-1] if position == "left" else pattern.T
    elif position == "top":
        pattern = pattern[::-1]
    return pattern, min(pattern.shape), (position,)


def _bitmap(rows: Sequence[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows], dtype=np.float64)


def _resize(pattern: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour resize by ``scale`` (at least one pixel per axis)."""
    out = [max(1, round(n * scale)) for n in pattern.shape]
    index = [
        np.minimum((np.arange(m) + 0.5) / m * n, n - 1).astype(int)
        for m, n in zip(out, pattern.shape, strict=True)
    ]
    return pattern[np.ix_(*index)]


def _ruler(length: int, unit: int) -> np.ndarray:
    """A ruler lying along the last axis: a bar (bottom row) with ticks up from it every ``3 * unit``."""
    ruler = np.zeros((4 * unit, length))
    ruler[-unit:, :] = RULER
    for i, start in enumerate(range(0, length - unit + 1, 3 * unit)):
        ruler[unit if i % 4 == 0 else 2 * unit :, start : start + unit] = RULER
    return ruler


def _place(
    pattern: np.ndarray,
    depth: int,
    edges: Sequence[str],
    shape: tuple[int, ...],
    region: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``pattern`` at a random place along ``edges``, clear of ``region`` where possible.

    Volumes extrude it over ``depth`` slices starting at a random slice.

    Returns:
        The values (0 outside the pattern's box) and the box.
    """
    h, w = (min(p, s) for p, s in zip(pattern.shape, shape[-2:], strict=True))
    pattern = pattern[:h, :w]
    slab: tuple[slice, ...] = ()
    plane = region
    if len(shape) == 3:
        depth = min(depth, shape[0])
        start = int(rng.integers(0, shape[0] - depth + 1))
        slab = (slice(start, start + depth),)
        plane = region[slab].any(axis=0)
    candidates = _candidates(edges, shape[-2:], (h, w), max(1, round(shape[-1] * 0.03)))
    grown = np.pad(plane, 1)  # a box clear of the region by a pixel: its grown box misses the region
    clear = [(r, c) for r, c in candidates if not grown[r : r + h + 2, c : c + w + 2].any()]
    pool = clear or candidates  # none clear: the caller cuts the confound at the region's outline
    r, c = pool[int(rng.integers(len(pool)))]
    value = np.zeros(shape)
    box = np.zeros(shape, dtype=bool)
    value[(*slab, slice(r, r + h), slice(c, c + w))] = pattern
    box[(*slab, slice(r, r + h), slice(c, c + w))] = True
    return value, box


def _candidates(
    edges: Sequence[str], plane: Sequence[int], box: tuple[int, int], offset: int
) -> list[tuple[int, int]]:
    """Top-left corners of a ``box`` lying ``offset`` pixels in from each of ``edges``."""
    (height, width), (h, w) = plane, box
    rows = {"top": min(offset, height - h), "bottom": max(0, height - offset - h)}
    cols = {"left": min(offset, width - w), "right": max(0, width - offset - w)}
    out = []
    for edge in edges:
        if edge in rows:
            out += [(rows[edge], c) for c in range(width - w + 1)]
        else:
            out += [(r, cols[edge]) for r in range(height - h + 1)]
    return out
