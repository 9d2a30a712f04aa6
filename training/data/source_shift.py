"""A slice made to look as if it came from another scanner or protocol: another field of view, a coarser
resolution, another contrast.

Why: the text localiser reads a whole slice, so what it learns is tied to how the training sets frame and
render their scans (BTCV's abdomen fills its slice, LA's slices are cut around the heart). On the validation
split the 0.6.0 localiser lost a quarter of its Dice on average (up to half) when the same slices were shown with
another field of view, a coarser in-plane resolution or another gamma (docs/evaluation/source-shifts). The click network
reads a zoomed crop around the prompts and barely moves under the same changes.

:func:`shift_source` works on a slice before it is fitted to the network (raw slice grid, intensities already
windowed to 0..1), so the field of view changes exactly as a scan with another one would: padding adds
background around the body, cropping cuts a window out; the geometry then resizes whatever results.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHIFT_KEYS = ("fov", "fov_range", "blur", "blur_range", "contrast", "noise")


@dataclass(frozen=True)
class SourceShift:
    """Probabilities and ranges of each change (config ``data.source_shift``; all 0 = off).

    ``fov``: probability of another field of view, its scale drawn log-uniformly in ``fov_range`` (above 1
    pads with the slice's background, below 1 crops a random window of that share of each side);
    ``blur``: probability of a coarser resolution, the slice sampled down by a factor in ``blur_range`` and
    back up; ``contrast``: probability of another window (an affine change of the 0..1 intensities, then a
    gamma); ``noise``: probability of Gaussian noise (sigma up to 0.04)."""
    fov: float = 0.0
    fov_range: tuple = (0.6, 1.7)
    blur: float = 0.0
    blur_range: tuple = (1.3, 3.0)
    contrast: float = 0.0
    noise: float = 0.0

    @classmethod
    def from_config(cls, config) -> "SourceShift":
        config = dict(config or {})
        unknown = sorted(set(config) - set(SHIFT_KEYS))
        if unknown:
            raise ValueError(f"data.source_shift: unknown keys {unknown} (known: {', '.join(SHIFT_KEYS)})")
        for key in ("fov", "blur", "contrast", "noise"):
            value = float(config.get(key, 0.0))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.source_shift.{key} is a probability in 0..1, got {value}")
            config[key] = value
        for key in ("fov_range", "blur_range"):
            if key in config:
                low, high = (float(v) for v in config[key])
                if not 0.0 < low <= high:
                    raise ValueError(f"data.source_shift.{key} must be [low, high] with 0 < low <= high")
                config[key] = (low, high)
        return cls(**config)

    @property
    def active(self) -> bool:
        return any((self.fov, self.blur, self.contrast, self.noise))


def _field_of_view(image, label, scale: float, rng):
    """Pad (scale > 1) with the slice's background or crop (scale < 1) a random window; label follows."""
    shape = np.array(image.shape)
    if scale >= 1.0:
        extra = np.round(shape * (scale - 1.0)).astype(int)
        before = np.array([rng.integers(0, e + 1) for e in extra])
        pads = [(int(b), int(e - b)) for b, e in zip(before, extra)]
        background = float(np.percentile(image, 1))
        return (np.pad(image, pads, constant_values=background),
                np.pad(label, [(0, 0)] + pads) if label.ndim == 3 else np.pad(label, pads))
    keep = np.clip(np.round(shape * scale).astype(int), np.minimum(shape, 8), shape)   # thin slices stay whole
    start = [int(rng.integers(0, s - k + 1)) for s, k in zip(shape, keep)]
    window = tuple(slice(a, a + k) for a, k in zip(start, keep))
    return image[window], label[(Ellipsis,) + window]


def _coarser(image, factor: float):
    """The slice sampled down by ``factor`` (area-like: prefiltered) and back up to its grid."""
    small = ndimage.zoom(ndimage.gaussian_filter(image, sigma=0.4 * factor), 1.0 / factor, order=1)
    back = ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)
    return back[:image.shape[0], :image.shape[1]]


def _contrast(image, rng):
    scale, shift = np.exp(rng.uniform(-0.3, 0.3)), rng.uniform(-0.12, 0.12)
    gamma = np.exp(rng.uniform(-0.6, 0.6))
    return np.clip((image - 0.5) * scale + 0.5 + shift, 0.0, 1.0) ** gamma


def shift_source(image: np.ndarray, label: np.ndarray, shift: SourceShift, rng):
    """``(image, label)`` of one slice under a random draw of ``shift``; ``label`` is (H, W) or (C, H, W) on the
    slice grid and follows the field of view; intensities stay in 0..1."""
    image = np.asarray(image, np.float32)
    if shift.fov and rng.random() < shift.fov:
        low, high = shift.fov_range
        image, label = _field_of_view(image, label, float(np.exp(rng.uniform(np.log(low), np.log(high)))), rng)
    if shift.blur and rng.random() < shift.blur and min(image.shape) >= 16:
        image = _coarser(image, float(rng.uniform(*shift.blur_range)))
    if shift.contrast and rng.random() < shift.contrast:
        image = _contrast(image, rng)
    if shift.noise and rng.random() < shift.noise:
        image = np.clip(image + rng.normal(0.0, rng.uniform(0.0, 0.04), image.shape), 0.0, 1.0)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)
