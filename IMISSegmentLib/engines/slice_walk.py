"""Slice-by-slice propagation shared by the engines that have no memory network (yet).

:func:`walk_slices` starts at every prompted slice and walks both ways along that slice's axis; each step
asks ``segment_next(axis, index, previous_mask)`` for the next slice's mask given the mask of the slice
just before it. A walk stops when the mask becomes empty, at the volume's end, or at another prompted
slice of the same axis (that slice's own walk goes on from there with the user's mask). The result is the
union of all walks; prompted slices keep the user's mask. Progress counts slices against an upper bound
(walks that stop early add what they skipped), and ``cancelled`` is checked before every slice.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..errors import CancelledError, InputError
from ..prompts import plane_axes, slice_of
from .base import CancelCheck, ProgressCallback, PropagationRequest

SegmentNext = Callable[[int, int, np.ndarray], np.ndarray]   # (axis, index, previous mask) -> (H, W) bool


def mask_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """(row0, col0, row1, col1) inclusive of a 2D mask's nonzero pixels, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def grow_box(box_rc, margin: int, shape) -> tuple[int, int, int, int]:
    """``box_rc`` grown by ``margin`` px on every side and clipped to a slice of ``shape``."""
    r0, c0, r1, c1 = box_rc
    return (max(0, r0 - margin), max(0, c0 - margin),
            min(shape[0] - 1, r1 + margin), min(shape[1] - 1, c1 + margin))


def prompted_sources(request: PropagationRequest, shape) -> list:
    """[(axis, index, mask)] of the request's prompted slices, checked against the volume ``shape``."""
    if tuple(request.result.shape) != tuple(shape):
        raise InputError(f"result shape {request.result.shape} does not match the volume {tuple(shape)}")
    sources = []
    for (axis, index), mask in request.prompted.items():
        axis, index = int(axis), int(index)
        if axis not in (0, 1, 2) or not 0 <= index < shape[axis]:
            raise InputError(f"prompted slice (axis {axis}, index {index}) is outside the volume {tuple(shape)}")
        mask = np.asarray(mask, dtype=bool)
        expected = tuple(shape[a] for a in plane_axes(axis))
        if mask.shape != expected:
            raise InputError(f"prompted mask on (axis {axis}, index {index}) has shape {mask.shape}, "
                             f"expected {expected}")
        sources.append((axis, index, mask))
    return sources


def walk_slices(request: PropagationRequest, shape, segment_next: SegmentNext, name: str,
                progress: Optional[ProgressCallback] = None, cancelled: Optional[CancelCheck] = None) -> np.ndarray:
    """The (K, J, I) uint8 union of the walks from every prompted slice (see the module docstring)."""
    shape = tuple(shape)
    sources = prompted_sources(request, shape)
    prompted_by_axis = {a: {i for a2, i, _ in sources if a2 == a} for a in (0, 1, 2)}
    walks = []
    for axis, index, mask in sources:
        if not mask.any():
            continue
        for step in (-1, 1):
            stop = -1 if step < 0 else shape[axis]
            barrier = [i for i in prompted_by_axis[axis] if (i - index) * step > 0]
            if barrier:
                stop = min(barrier, key=lambda i: abs(i - index))
            walks.append((axis, index, mask, step, stop, abs(stop - index) - 1))
    total = sum(w[5] for w in walks)
    done = 0
    if progress is not None:
        progress(0, total)

    def check_cancel():
        if cancelled is not None and cancelled():
            raise CancelledError(f"{name} propagation cancelled")

    out = np.zeros(shape, dtype=np.uint8)
    for axis, index, mask, step, stop, length in walks:
        previous, walked = mask, 0
        for current in range(index + step, stop, step):
            check_cancel()
            predicted = np.asarray(segment_next(axis, current, previous), dtype=bool)
            walked += 1
            done += 1
            if progress is not None:
                progress(done, total)
            if not predicted.any():
                break
            slice_of(out, axis, current)[predicted] = 1
            previous = predicted
        if walked < length:
            done += length - walked
            if progress is not None:
                progress(done, total)
    check_cancel()
    for axis, index, mask in sources:   # the user's slices keep their mask
        slice_of(out, axis, index)[...] = mask
    return out
