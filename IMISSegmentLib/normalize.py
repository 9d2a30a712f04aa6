"""Intensity normalisation: one function used by every engine, training and evaluation.

* CT is recognised by its Hounsfield range (values below -500, as air and scanner padding give, and
  values above +200). It is windowed to ``CT_WINDOW`` (HU, default -200 .. 300: soft tissue with lungs
  and bone still distinct from it) and scaled to 0 .. 1.
* Anything else (MR, already-windowed CT, phantoms) is scaled between its 0.5th and 99.5th percentiles
  to 0 .. 1 and clipped. Percentiles are taken on a strided sample so a large volume costs little.

The window is computed once per volume (:func:`intensity_window`) and applied to any slice of it
(:func:`apply_window`), so the interactive path never touches the whole volume again.
"""
from __future__ import annotations

import numpy as np

CT_WINDOW = (-200.0, 300.0)
MR_PERCENTILES = (0.5, 99.5)
_SAMPLE_VOXELS = 2_000_000


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // _SAMPLE_VOXELS)
    return flat[::step]


def looks_like_ct(array: np.ndarray) -> bool:
    """True when the intensities are in Hounsfield units (air / padding below -500, tissue above 200)."""
    sample = _sample(array)
    return bool(sample.min() < -500 and np.max(array) > 200)


def intensity_window(array: np.ndarray) -> tuple[float, float, str]:
    """Return ``(low, high, kind)`` mapping this volume's intensities to 0 .. 1; kind is "ct" or "percentile"."""
    if looks_like_ct(array):
        return CT_WINDOW[0], CT_WINDOW[1], "ct"
    low, high = np.percentile(_sample(array).astype(np.float64), MR_PERCENTILES)
    if high <= low:  # very sparse images: fall back to the full range
        low, high = float(np.min(array)), float(np.max(array))
    if high <= low:
        high = low + 1.0
    return float(low), float(high), "percentile"


def apply_window(array: np.ndarray, window: tuple[float, float] | tuple[float, float, str]) -> np.ndarray:
    """Scale ``array`` (any shape) by ``window`` to float32 in 0 .. 1."""
    low, high = float(window[0]), float(window[1])
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Normalise a whole volume (or slice) to float32 0 .. 1 by the rules in this module's docstring."""
    return apply_window(array, intensity_window(array))
