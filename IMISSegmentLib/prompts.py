"""Prompts in volume index space, the slice geometry of the three axes, and prompt encoding into maps.

A prompt is given in array index order (k, j, i) with ``axis`` the normal of the view it was made in
(0: axial k-slices, 1: j-slices, 2: i-slices). On a slice the two remaining axes are (row, col) in
increasing axis order: axis 0 -> (j, i), axis 1 -> (k, i), axis 2 -> (k, j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

CLICK_RADIUS_PX = 5


def plane_axes(axis: int) -> tuple[int, int]:
    """The volume axes that are (row, col) on a slice normal to ``axis``."""
    return {0: (1, 2), 1: (0, 2), 2: (0, 1)}[axis]


def check_axis(axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or int(axis) not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2 (the normal of the view), got {axis!r}")
    return int(axis)


def slice_of(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A view of the 2D slice ``index`` normal to ``axis`` (rows, cols as in :func:`plane_axes`)."""
    return array[(slice(None),) * axis + (index,)]  # basic indexing: a view (np.take would copy)


def slice_region(axis: int, index: int) -> tuple[slice, slice, slice]:
    """The volume region (a tuple of slices) covering slice ``index`` normal to ``axis``."""
    region = [slice(None)] * 3
    region[axis] = slice(index, index + 1)
    return tuple(region)  # type: ignore[return-value]


def _as_int_tuple(value, length: int, what: str) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise InputError(f"{what} must be a sequence of {length} integers, got {value!r}") from None
    if len(items) != length:
        raise InputError(f"{what} must have {length} values, got {len(items)}: {value!r}")
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be whole voxel indices, got {value!r}") from None
        if isinstance(item, (bool, np.bool_)) or not np.isfinite(number) or number != int(number):
            raise InputError(f"{what} must be whole voxel indices, got {value!r}")
        out.append(int(float(item)))
    return tuple(out)


@dataclass(frozen=True)
class Click:
    """A click at voxel ``point`` = (k, j, i) in a view normal to ``axis``."""

    point: tuple[int, int, int]
    positive: bool
    axis: int = 0

    @property
    def slice_index(self) -> int:
        return self.point[self.axis]

    @property
    def in_plane(self) -> tuple[int, int]:
        r, c = plane_axes(self.axis)
        return self.point[r], self.point[c]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box on slice ``slice_index`` normal to ``axis``; corners inclusive, ordered lo/hi."""

    axis: int
    slice_index: int
    lo: tuple[int, int]
    hi: tuple[int, int]

    @property
    def as_rc(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), inclusive."""
        return self.lo[0], self.lo[1], self.hi[0], self.hi[1]


@dataclass(frozen=True)
class TextPrompt:
    text: str
    axis: int
    slice_index: int


def make_click(point, positive, axis, shape) -> Click:
    axis = check_axis(axis)
    k, j, i = _as_int_tuple(point, 3, "click point (k, j, i)")
    for value, size, name in zip((k, j, i), shape, "kji"):
        if not 0 <= value < size:
            raise InputError(f"click {name}={value} is outside the volume (valid 0..{size - 1}, volume shape {tuple(shape)})")
    if not isinstance(positive, (bool, np.bool_)):
        raise InputError(f"positive must be True or False, got {positive!r}")
    return Click((k, j, i), bool(positive), axis)


def check_slice_index(slice_index, axis: int, shape) -> int:
    (index,) = _as_int_tuple((slice_index,), 1, "slice_index")
    if not 0 <= index < shape[axis]:
        raise InputError(f"slice_index {index} is outside the volume along axis {axis} (valid 0..{shape[axis] - 1})")
    return index


def make_box(slice_index, corner_a, corner_b, axis, shape) -> Box:
    """Validate and order a box; a box must span at least 2 voxels along each in-plane axis."""
    axis = check_axis(axis)
    index = check_slice_index(slice_index, axis, shape)
    a = _as_int_tuple(corner_a, 2, "box corner_a")
    b = _as_int_tuple(corner_b, 2, "box corner_b")
    rows, cols = (shape[ax] for ax in plane_axes(axis))
    for corner, name in ((a, "corner_a"), (b, "corner_b")):
        if not (0 <= corner[0] < rows and 0 <= corner[1] < cols):
            raise InputError(f"box {name}={corner} is outside the slice (valid rows 0..{rows - 1}, cols 0..{cols - 1})")
    lo = (min(a[0], b[0]), min(a[1], b[1]))
    hi = (max(a[0], b[0]), max(a[1], b[1]))
    if hi[0] == lo[0] or hi[1] == lo[1]:
        raise InputError(f"box {a} -> {b} is degenerate (zero width or height); drag a box of at least 2 x 2 voxels")
    return Box(axis, index, lo, hi)


def disk_map(points, shape, radius: float = CLICK_RADIUS_PX, scale=(1.0, 1.0)) -> np.ndarray:
    """float32 (H, W) map, 1 inside a disk of ``radius`` px around each (row, col) point scaled by ``scale``."""
    out = np.zeros(shape, np.float32)
    if not points:
        return out
    rr = np.arange(shape[0], dtype=np.float32)[:, None]
    cc = np.arange(shape[1], dtype=np.float32)[None, :]
    for r, c in points:
        r0, c0 = (r + 0.5) * scale[0] - 0.5, (c + 0.5) * scale[1] - 0.5
        lo_r, hi_r = max(0, int(r0 - radius)), min(shape[0], int(r0 + radius) + 2)
        lo_c, hi_c = max(0, int(c0 - radius)), min(shape[1], int(c0 + radius) + 2)
        if lo_r >= hi_r or lo_c >= hi_c:
            continue
        inside = (rr[lo_r:hi_r] - r0) ** 2 + (cc[:, lo_c:hi_c] - c0) ** 2 <= radius * radius
        out[lo_r:hi_r, lo_c:hi_c][inside] = 1.0
    return out


def box_map(box_rc, shape, scale=(1.0, 1.0)) -> np.ndarray:
    """float32 (H, W) map, 1 inside the box (row0, col0, row1, col1) scaled by ``scale``."""
    out = np.zeros(shape, np.float32)
    if box_rc is None:
        return out
    r0, c0, r1, c1 = box_rc
    out[int(np.floor(r0 * scale[0])): int(np.ceil((r1 + 1) * scale[0])),
        int(np.floor(c0 * scale[1])): int(np.ceil((c1 + 1) * scale[1]))] = 1.0
    return out


def encode_prompt_maps(clicks, box_rc, previous_mask, slice_shape, shape,
                       radius: float = CLICK_RADIUS_PX) -> np.ndarray:
    """Stack the prompt maps a network takes: (4, H, W) float32 = positive disks, negative disks, box, previous mask.

    ``clicks`` are (row, col, positive) and ``box_rc`` (row0, col0, row1, col1) in the slice's own pixel
    grid of ``slice_shape``; ``shape`` is the network resolution, so disks keep ``radius`` px at that
    resolution whatever the slice size. ``previous_mask`` (slice grid) is resized by nearest neighbour.
    """
    src = tuple(slice_shape)
    scale = (shape[0] / src[0], shape[1] / src[1])
    pos = disk_map([(r, c) for r, c, p in clicks if p], shape, radius, scale)
    neg = disk_map([(r, c) for r, c, p in clicks if not p], shape, radius, scale)
    boxes = box_map(box_rc, shape, scale)
    prev = np.zeros(shape, np.float32)
    if previous_mask is not None:
        rows = np.minimum((np.arange(shape[0]) / scale[0]).astype(int), src[0] - 1)
        cols = np.minimum((np.arange(shape[1]) / scale[1]).astype(int), src[1] - 1)
        prev = previous_mask[np.ix_(rows, cols)].astype(np.float32)
    return np.stack([pos, neg, boxes, prev])
