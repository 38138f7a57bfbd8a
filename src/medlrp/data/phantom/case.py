"""What one phantom generator call returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PhantomCase:
    """One synthetic case.

    Attributes:
        image: ``float32`` spatial array (``(H, W)`` or ``(D, H, W)``), intensities about 0..1.5.
        mask: ``uint8`` 0/1 map of the region that should matter (tumour; lung fields for the chest).
        label: Class index.
        token: Whether the confound (the shortcut: the corner token by default) is drawn.
        lesion: The lesion's opacity map (0 outside the lesion); ``mask`` covers every non-zero value.
        meta: The drawn parameters (sizes, contrasts), for inspection and tests.
        region: ``uint8`` 0/1 map of where class evidence may lie (the head, i.e. inside the scalp
            outline, for glioma; the lung fields for the chest): the generous "may matter" annotation
            of explanation-guided training (the confound lies outside it). In memory only; dataset
            folders hold ``mask``.
        token_area: Boolean map of where the confound is, or would be when ``token`` is false (the same
            either way; see :mod:`medlrp.data.phantom.confounds`). In memory only.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    token: bool
    lesion: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    region: np.ndarray | None = None
    token_area: np.ndarray | None = None


def rngs(seed: Sequence[int], count: int) -> list[np.random.Generator]:
    """Independent generators for a case's components (anatomy, lesion, noise, ...).

    Separate streams keep the anatomy and noise identical when only the lesion changes, which lets the
    tests check that the lesion alters the image only inside its mask.
    """
    return [np.random.default_rng([*seed, part]) for part in range(count)]


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude-image noise (as in MRI): ``|image + sigma * (n1 + i n2)|``."""
    n1, n2 = rng.normal(size=image.shape), rng.normal(size=image.shape)
    return np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)
