"""Labelled cases shown as another scanner or protocol would show them (``imis-segment evaluate --shift``).

A model that only works on scans framed, sampled and windowed as its training sets were will fail on the next
hospital's. A shift changes each evaluated volume (and its label map) in the axial plane, the same way for
every method of the run, so a validation split can say how much a model depends on those choices:

* ``fov:F``: the field of view F times as wide (F > 1 pads each side of the J and I axes with the volume's
  lowest value, i.e. air or background; F < 1 keeps the central window);
* ``resolution:R``: in-plane voxels R times as large (the image smoothed and resampled, the label map by
  nearest neighbour, the spacing scaled to match);
* ``gamma:G``: intensities inside the window a session would take (CT's Hounsfield window, or the 0.5th - 99.5th
  percentiles) raised to the power G within it (another contrast), values outside it left as they are: the
  volume keeps its units, so a session recognises it as before (HU CT stays CT) and its window turns
  ``w`` into ``w ** G``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.volume import Volume
from ..normalize import apply_window, intensity_window

SHIFT_KINDS = {"fov": (0.25, 4.0), "resolution": (1.0, 8.0), "gamma": (0.2, 5.0)}


@dataclass(frozen=True)
class Shift:
    kind: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_shift(text) -> Shift | None:
    """``"fov:1.5"`` -> Shift; None / "" / "none" -> None; InputError naming the problem otherwise."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    kind, _, value = str(text).strip().partition(":")
    if kind not in SHIFT_KINDS:
        raise InputError(f"unknown shift {text!r}: expected fov:F, resolution:R or gamma:G (e.g. fov:1.5)")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"shift {text!r}: {kind} needs a number, e.g. {kind}:1.5") from None
    low, high = SHIFT_KINDS[kind]
    if not low <= number <= high:
        raise InputError(f"shift {text!r}: {kind} must be between {low:g} and {high:g}")
    return Shift(kind, number)


def _field_of_view(volume: Volume, labels: np.ndarray, factor: float):
    """Returns (array, labels, spacing, first): ``first`` the (j, i) position, in the old grid's voxels, of the new
    grid's first voxel."""
    array = volume.array
    if factor >= 1.0:
        pads = [(0, 0)] + [(int(e) // 2, int(e) - int(e) // 2)
                           for e in np.round(np.array(array.shape[1:]) * (factor - 1.0))]
        return (np.pad(array, pads, constant_values=array.min()), np.pad(labels, pads), volume.spacing,
                (-float(pads[1][0]), -float(pads[2][0])))
    keep = np.maximum(np.round(np.array(array.shape[1:]) * factor).astype(int), 1)
    start = (np.array(array.shape[1:]) - keep) // 2
    window = (slice(None),) + tuple(slice(int(a), int(a + k)) for a, k in zip(start, keep))
    return array[window], labels[window], volume.spacing, tuple(float(a) for a in start)


def _resolution(volume: Volume, labels: np.ndarray, factor: float):
    from scipy import ndimage
    array = volume.array.astype(np.float32)
    size = np.maximum(np.round(np.array(array.shape[1:]) / factor).astype(int), 1)
    zoom = (1.0,) + tuple(size / np.array(array.shape[1:]))
    smooth = ndimage.gaussian_filter(array, sigma=(0.0, 0.4 * factor, 0.4 * factor))
    image = ndimage.zoom(smooth, zoom, order=1, grid_mode=True, mode="nearest")
    label = ndimage.zoom(labels, zoom, order=0, grid_mode=True, mode="nearest")
    ratios = [old / new for old, new in zip(array.shape[1:], image.shape[1:])]
    spacing = (volume.spacing[0],) + tuple(float(s) * r for s, r in zip(volume.spacing[1:], ratios))
    # grid_mode: the new voxels tile the old extent, so the first new centre sits (ratio - 1) / 2 old voxels in
    return image, label, spacing, tuple((r - 1.0) / 2.0 for r in ratios)


def _gamma(volume: Volume, labels: np.ndarray, power: float):
    low, high, _ = intensity_window(volume.array)
    array = volume.array.astype(np.float32)
    inside = (array > low) & (array < high)
    windowed = apply_window(array[inside], (low, high))
    out = array.copy()
    out[inside] = np.float32(low) + windowed ** np.float32(power) * np.float32(high - low)
    return out, labels, volume.spacing, (0.0, 0.0)


def apply_shift(shift: Shift | None, volume: Volume, labels: np.ndarray):
    """``(volume, labels)`` as ``shift`` shows them (unchanged for None): the direction kept, the spacing following
    a change of resolution, the origin moved to the new grid's first voxel (masks written on the shifted grid
    land where the structure is)."""
    if shift is None:
        return volume, labels
    change = {"fov": _field_of_view, "resolution": _resolution, "gamma": _gamma}[shift.kind]
    array, label, spacing, (first_j, first_i) = change(volume, np.asarray(labels), shift.value)
    offset_xyz = np.array([first_i * volume.spacing[2], first_j * volume.spacing[1], 0.0])   # (i, j, k) in mm
    origin = tuple(float(v) for v in np.asarray(volume.origin, float)
                   + np.asarray(volume.direction, float).reshape(3, 3) @ offset_xyz)
    return (Volume(np.ascontiguousarray(array), tuple(float(s) for s in spacing), origin, volume.direction,
                   volume.source, dict(volume.metadata, shift=shift.label)), np.ascontiguousarray(label))
