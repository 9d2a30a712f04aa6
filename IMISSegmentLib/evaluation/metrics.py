"""Segmentation metrics: Dice, normalised surface Dice (NSD), area under the curve, clicks to a target."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

NOC_CAP = 20


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two masks (any shape); 1.0 when both are empty."""
    a, b = np.asarray(prediction, bool), np.asarray(reference, bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(a & b) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def normalized_surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """Share of both surfaces lying within ``tolerance_mm`` of the other surface (NSD, 2D or 3D).

    ``spacing`` has one entry per array axis, in mm. 1.0 when both masks are empty, 0.0 when one is.
    """
    a, b = np.asarray(prediction, bool), np.asarray(reference, bool)
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    spacing = tuple(float(s) for s in spacing)
    # work in the bounding box of both masks, grown so distances up to the tolerance are exact
    coords = np.argwhere(a | b)
    margin = [int(min(np.ceil(tolerance_mm / s), n)) + 2 for s, n in zip(spacing, a.shape)]
    region = tuple(slice(max(0, lo - m), min(n, hi + 1 + m))
                   for lo, hi, m, n in zip(coords.min(0), coords.max(0), margin, a.shape))
    a, b = a[region], b[region]
    surf_a, surf_b = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)
    close = np.count_nonzero(dist_to_b[surf_a] <= tolerance_mm) + np.count_nonzero(dist_to_a[surf_b] <= tolerance_mm)
    return close / (np.count_nonzero(surf_a) + np.count_nonzero(surf_b))


def area_under_curve(values) -> float:
    """Trapezoid area under a per-step curve with unit step (5 correction steps -> 0 .. 4)."""
    values = np.asarray(values, float)
    if values.size < 2:
        return float("nan")
    return float(np.sum((values[1:] + values[:-1]) / 2.0))


def clicks_to_reach(dice_by_interaction, threshold: float, cap: int = NOC_CAP) -> int:
    """NoC: 1-based count of interactions until Dice >= threshold; ``cap`` if never reached within it."""
    for count, value in enumerate(dice_by_interaction, start=1):
        if count > cap:
            break
        if value >= threshold:
            return count
    return cap
