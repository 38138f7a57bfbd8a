"""12-lead ECG phantoms: beats with a class-defining ST elevation in V1-V3, noise and baseline wander.

Each beat is a sum of Gaussian waves (P, Q, R, S, T) with lead-specific amplitudes (aVR inverted, R
growing from V1 to V6). Class ``st_elevation`` lifts the ST segment (from the end of the S wave into
the T wave) of leads V1-V3 by 0.15-0.3 mV in every beat; class ``normal`` leaves it at the baseline.
The mask marks these ST segments in V1-V3 for both classes (where the decision lies). Noise: white
(0.03 mV), baseline wander (sinusoids below 0.5 Hz, up to 0.25 mV per lead), a heart rate of 55-95
bpm with a 3% beat-to-beat jitter.

The shortcut (``token``): a pacing-spike-like artefact (two samples, 1.5 mV, every lead) in the
silent interval between two beats, outside every mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlrp.data.phantom.case import PhantomCase, rngs
from medlrp.io.signal import ECG_LEADS

__all__ = ["CLASSES", "ECG_LEADS", "FS", "ecg_case"]

#: Class folder names; sorted order gives the labels (0: normal, 1: st_elevation).
CLASSES = ("normal", "st_elevation")
NORMAL, ST_ELEVATION = 0, 1
#: Sampling rate: 1000 samples are 10 s, as PTB-XL's 100 Hz records.
FS = 100.0
#: Leads V1-V3 (indices in the standard order I, II, III, aVR, aVL, aVF, V1..V6).
ST_LEADS = (6, 7, 8)
#: (centre s, width s, amplitude mV) per wave, relative to the R peak; amplitudes scaled per lead.
WAVES = {
    "P": (-0.18, 0.025, 0.12),
    "Q": (-0.035, 0.012, -0.1),
    "R": (0.0, 0.014, 1.0),
    "S": (0.035, 0.014, -0.3),
    "T": (0.28, 0.05, 0.3),
}
#: Lead gains of the QRS and of the P/T waves (aVR is inverted; R grows across V1..V6).
QRS_GAIN = np.array([0.8, 1.1, 0.4, -0.9, 0.4, 0.7, 0.4, 0.7, 1.0, 1.3, 1.2, 1.0])
PT_GAIN = np.array([0.8, 1.0, 0.3, -0.8, 0.4, 0.6, 0.3, 0.6, 0.8, 1.0, 0.9, 0.8])
#: The ST segment: from the end of S to the T wave's upslope (seconds after the R peak).
ST_START, ST_END = 0.06, 0.24


def ecg_case(seed: Sequence[int], shape: Sequence[int], label: int, token: bool) -> PhantomCase:
    """Draw one 12-lead ECG.

    Args:
        seed: Integers seeding this case (the same seed gives the same case).
        shape: ``(samples,)`` (1000 at 100 Hz is 10 s).
        label: ``NORMAL`` (0) or ``ST_ELEVATION`` (1).
        token: Draw the pacing-spike-like artefact.

    Returns:
        The case: ``image`` ``float32 (12, samples)`` in mV, ``mask`` ``uint8 (12, samples)``.
    """
    (samples,) = tuple(shape)
    r_beat, r_st, r_noise, r_token = rngs(seed, 4)
    t = np.arange(samples) / FS
    rate = r_beat.uniform(55, 95) / 60.0
    peaks = _beat_times(r_beat, samples / FS, rate)
    signal = np.zeros((12, samples))
    mask = np.zeros((12, samples), dtype=np.uint8)
    lead_jitter = r_beat.uniform(0.85, 1.15, size=12)
    elevation = r_st.uniform(0.15, 0.3) if label == ST_ELEVATION else 0.0
    for peak in peaks:
        for wave, (centre, width, amp) in WAVES.items():
            gain = QRS_GAIN if wave in "QRS" else PT_GAIN
            bump = amp * np.exp(-0.5 * ((t - peak - centre) / width) ** 2)
            signal += (gain * lead_jitter)[:, None] * bump[None]
        st = (t >= peak + ST_START) & (t <= peak + ST_END)
        mask[list(ST_LEADS)] |= st.astype(np.uint8)
        if elevation:
            # a smooth plateau inside the ST segment (raised cosine edges): nothing changes outside it
            plateau = np.clip(np.minimum(t - peak - ST_START, peak + ST_END - t) / 0.03, 0, 1)
            lift = elevation * 0.5 * (1 - np.cos(np.pi * plateau))
            signal[list(ST_LEADS)] += lift[None] * np.array([0.8, 1.0, 0.9])[:, None]
    freqs = r_noise.uniform(0.05, 0.5, size=(12, 2))
    phases = r_noise.uniform(0, 2 * np.pi, size=(12, 2))
    amps = r_noise.uniform(0.05, 0.25, size=(12, 1))
    wander = (amps * np.sin(2 * np.pi * freqs[..., None] * t + phases[..., None]).sum(axis=1)) / 2
    signal += wander + 0.03 * r_noise.normal(size=signal.shape)
    meta: dict[str, float] = {"rate_bpm": rate * 60.0, "beats": float(len(peaks)), "elevation_mv": elevation}
    if token:
        where = _spike_position(r_token, peaks, samples)
        signal[:, where : where + 2] += 1.5
        meta["spike_sample"] = float(where)
    return PhantomCase(
        image=signal.astype(np.float32),
        mask=mask,
        label=label,
        token=token,
        lesion=mask.astype(np.float32),
        meta=meta,
        region=mask,
    )


def _beat_times(rng: np.random.Generator, duration: float, rate: float) -> list[float]:
    times = []
    now = rng.uniform(0.25, 0.25 + 1.0 / rate)
    while now < duration - 0.35:
        times.append(now)
        now += rng.normal(1.0, 0.03) / rate
    return times


def _spike_position(rng: np.random.Generator, peaks: list[float], samples: int) -> int:
    """A sample in the silent interval (after T, before the next P) of a random pair of beats."""
    gaps = [(a + ST_END + 0.12, b - 0.22) for a, b in zip(peaks, peaks[1:], strict=False)]
    gaps = [(lo, hi) for lo, hi in gaps if hi > lo]
    lo, hi = gaps[int(rng.integers(len(gaps)))] if gaps else (0.0, 0.15)
    return int(np.clip(rng.uniform(lo, hi) * FS, 0, samples - 2))
