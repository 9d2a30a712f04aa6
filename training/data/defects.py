"""Defective masks after LIM-Net: a good mask spoilt the ways a network's or a round's mask goes wrong.

Each corruption has its own probability (``DefectConfig``); a defective mask gets every corruption whose
coin comes up (at least one). Amounts are LIM-Net's, in pixels of a ``reference_px`` (480 px) slice, and
are scaled to the canvas they are applied on (``canvas_px / reference_px``), so the same config spoils a
128 px ROI crop as much, relatively, as a 480 px slice:

* ``shapes_added``: random rectangles, triangles or polygons added inside or near the mask;
* ``dilated``: 10-30 iterations; ``eroded``: 10 iterations;
* ``boundary_moved``: boundary pixels displaced by 10-30 px (a smooth random displacement field);
* ``smoothed``: a Gaussian blur of the mask, re-thresholded (corners and thin parts lost);
* ``shapes_removed``: a connected component dropped, or a random piece cut out of the mask;
* ``shapes_merged``: a blob grown from the boundary outwards (a neighbour merged in).

Used to build the MRF data set (``training/data/mrf_data.py``) and, with ``data.defective_fraction``, as the
previous mask the 2D correction network starts from (``training/data/datasets.py``, ``sample_defective``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

CORRUPTIONS = ("shapes_added", "dilated", "eroded", "boundary_moved", "smoothed", "shapes_removed", "shapes_merged")


@dataclass
class DefectConfig:
    probabilities: dict = field(default_factory=lambda: {
        "shapes_added": 0.3, "dilated": 0.2, "eroded": 0.2, "boundary_moved": 0.3, "smoothed": 0.15,
        "shapes_removed": 0.25, "shapes_merged": 0.25})
    dilation_px: tuple = (10, 30)
    erosion_px: int = 10
    displacement_px: tuple = (10, 30)
    reference_px: int = 480

    @classmethod
    def from_dict(cls, values=None) -> "DefectConfig":
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown defect settings {sorted(unknown)}")
        config = cls(**values)
        bad = set(config.probabilities) - set(CORRUPTIONS)
        if bad:
            raise ValueError(f"unknown corruptions {sorted(bad)} (known: {', '.join(CORRUPTIONS)})")
        return config


def _scaled(amount: float, scale: float) -> int:
    return max(1, int(round(amount * scale)))


def _polygon(shape, centre, radius: float, corners: int, rng) -> np.ndarray:
    """A filled random polygon (3 corners: a triangle) around ``centre``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.5, 1.0, corners)
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    points = np.stack([centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles)], 1)
    # points in angular order make a star-shaped, convex-enough polygon: a pixel is inside when it lies on the
    # same side of every edge (all cross products of one sign)
    left, right = np.ones(shape, bool), np.ones(shape, bool)
    for a, b in zip(points, np.roll(points, -1, 0)):
        cross = (b[1] - a[1]) * (rr - a[0]) - (b[0] - a[0]) * (cc - a[1])
        left &= cross <= 0
        right &= cross >= 0
    return left | right


def _random_shape(shape, centre, radius: float, rng) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:   # rectangle
        h, w = radius * rng.uniform(0.4, 1.2, 2)
        r0, c0 = int(centre[0] - h), int(centre[1] - w)
        out = np.zeros(shape, bool)
        out[max(r0, 0):max(int(centre[0] + h), 0), max(c0, 0):max(int(centre[1] + w), 0)] = True
        return out
    return _polygon(shape, centre, radius, 3 if kind == 1 else int(rng.integers(4, 8)), rng)


def _size(mask: np.ndarray) -> float:
    """Equivalent radius of the mask in pixels (>= 2)."""
    return max(2.0, float(np.sqrt(mask.sum() / np.pi)))


def _boundary_point(mask: np.ndarray, rng):
    edge = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(edge if edge.any() else mask)
    return points[rng.integers(len(points))].astype(float)


def shapes_added(mask, rng, scale):
    out = mask.copy()
    for _ in range(int(rng.integers(1, 4))):
        centre = _boundary_point(mask, rng) + rng.normal(0, 0.5 * _size(mask), 2)
        out |= _random_shape(mask.shape, centre, _size(mask) * rng.uniform(0.2, 0.7), rng)
    return out


def dilated(mask, rng, scale, config: DefectConfig):
    return ndimage.binary_dilation(mask, iterations=_scaled(rng.uniform(*config.dilation_px), scale))


def eroded(mask, rng, scale, config: DefectConfig):
    return ndimage.binary_erosion(mask, iterations=_scaled(config.erosion_px, scale))


def boundary_moved(mask, rng, scale, config: DefectConfig):
    """Warp the mask by a smooth random displacement of 10-30 px (scaled) at its largest."""
    amount = _scaled(rng.uniform(*config.displacement_px), scale)
    sigma = max(2.0, _size(mask) * rng.uniform(0.3, 0.8))
    fields_ = [ndimage.gaussian_filter(rng.normal(size=mask.shape), sigma) for _ in range(2)]
    peak = max(float(np.abs(np.stack(fields_)).max()), 1e-6)
    rr, cc = np.mgrid[:mask.shape[0], :mask.shape[1]].astype(float)
    coords = [rr + fields_[0] * amount / peak, cc + fields_[1] * amount / peak]
    return ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant") > 0.5


def smoothed(mask, rng, scale):
    sigma = max(1.0, _size(mask) * rng.uniform(0.15, 0.4))
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma) > rng.uniform(0.35, 0.65)


def shapes_removed(mask, rng, scale):
    labels, count = ndimage.label(mask)
    if count > 1 and rng.random() < 0.5:
        return mask & (labels != int(rng.integers(1, count + 1)))
    centre = np.argwhere(mask)[rng.integers(int(mask.sum()))].astype(float)
    return mask & ~_random_shape(mask.shape, centre, _size(mask) * rng.uniform(0.3, 0.9), rng)


def shapes_merged(mask, rng, scale):
    """A blob outside the mask, touching its boundary: a neighbouring structure merged in."""
    point = _boundary_point(mask, rng)
    centre_of_mass = np.argwhere(mask).mean(0)
    direction = point - centre_of_mass
    direction /= max(np.linalg.norm(direction), 1e-6)
    radius = _size(mask) * rng.uniform(0.3, 0.9)
    centre = point + direction * radius * 0.8
    rr, cc = np.mgrid[:mask.shape[0], :mask.shape[1]]
    ry, rx = radius * rng.uniform(0.6, 1.2, 2)
    blob = ((rr - centre[0]) / ry) ** 2 + ((cc - centre[1]) / rx) ** 2 <= 1.0
    return mask | blob


_NEEDS_CONFIG = {"dilated", "eroded", "boundary_moved"}


def corrupt_mask(mask: np.ndarray, rng, config: DefectConfig | None = None) -> np.ndarray:
    """A defective copy of a non-empty 2D bool mask (may come out empty: a structure missed entirely)."""
    config = config or DefectConfig()
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("corrupt_mask needs a non-empty mask")
    scale = max(mask.shape) / float(config.reference_px)
    chosen = [name for name in CORRUPTIONS if rng.random() < config.probabilities.get(name, 0.0)]
    if not chosen:
        chosen = [CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]]
    rng.shuffle(chosen)
    out = mask
    for name in chosen:
        if not out.any():
            break
        function = globals()[name]
        out = function(out, rng, scale, config) if name in _NEEDS_CONFIG else function(out, rng, scale)
    return np.asarray(out, bool)
