"""The simulated user (DESIGN.md), one for training and evaluation.

* First prompt, on the slice where the structure has its largest area: the tight ground-truth box, or a
  click at the maximum of the distance transform of the structure on that slice.
* Each correction: a click at the distance-transform maximum of the largest connected error component
  (missed foreground and false positive components compete by size); positive if it is missed
  foreground. Components are 3D for volumes and 2D for one slice.

Distances use the voxel spacing, so clicks sit at the anatomical centre of anisotropic regions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ..prompts import plane_axes, slice_of


@dataclass(frozen=True)
class SimulatedClick:
    point: tuple          # (k, j, i) for volumes, (row, col) for slices
    positive: bool


def largest_slice(mask: np.ndarray, axis: int = 0) -> int:
    """Index of the slice normal to ``axis`` where ``mask`` has the most voxels."""
    other = tuple(a for a in range(3) if a != axis)
    areas = np.count_nonzero(mask, axis=other)
    if areas.max() == 0:
        raise ValueError("the mask is empty: no slice to prompt")
    return int(np.argmax(areas))


def tight_box(mask2d: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Inclusive corners ((row0, col0), (row1, col1)) of the mask's bounding box on a slice."""
    rows, cols = np.nonzero(mask2d)
    return (int(rows.min()), int(cols.min())), (int(rows.max()), int(cols.max()))


def interior_point(region: np.ndarray, spacing=None) -> tuple:
    """The voxel of ``region`` farthest from its border (distance-transform maximum; first on ties)."""
    padded = np.pad(region.astype(bool), 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)
    flat = int(np.argmax(distance))
    return tuple(int(v) - 1 for v in np.unravel_index(flat, padded.shape))


def first_click(mask3d: np.ndarray, spacing, axis: int = 0) -> tuple:
    """(k, j, i) of the first click: the interior point of the largest slice's mask."""
    index = largest_slice(mask3d, axis)
    rows, cols = plane_axes(axis)
    r, c = interior_point(slice_of(mask3d, axis, index), (spacing[rows], spacing[cols]))
    point = [0, 0, 0]
    point[axis], point[rows], point[cols] = index, r, c
    return tuple(point)


def first_box(mask3d: np.ndarray, axis: int = 0):
    """(slice_index, corner_a, corner_b) of the tight box on the largest slice.

    A box must span two voxels each way, so a structure one voxel thin gets its box widened by one voxel.
    """
    index = largest_slice(mask3d, axis)
    plane = slice_of(mask3d, axis, index)
    a, b = tight_box(plane)
    a, b = list(a), list(b)
    for d in (0, 1):
        if a[d] == b[d]:
            if b[d] + 1 < plane.shape[d]:
                b[d] += 1
            else:
                a[d] -= 1
    return index, tuple(a), tuple(b)


def _largest_component(mask: np.ndarray):
    if not mask.any():
        return None, 0
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    return labels == best, int(sizes[best])


def next_click(prediction: np.ndarray, reference: np.ndarray, spacing=None) -> Optional[SimulatedClick]:
    """The correction click for ``prediction`` against ``reference`` (2D or 3D); None when they agree."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    missed, _missed_size = _largest_component(reference & ~prediction)
    extra, _extra_size = _largest_component(prediction & ~reference)
    if missed is None and extra is None:
        return None
    positive = extra is None or (missed is not None and _missed_size >= _extra_size)
    region = missed if positive else extra
    return SimulatedClick(interior_point(region, spacing), positive)
