"""Zoom-in for the click network: after the first click, run the network on a window around the object.

The network sees a slice resized to 256 px, so on a 512 x 512 CT a rib or an adrenal gland is a few network
pixels wide and corrections near its edge cannot be drawn finely. As RITM's "zoom-in" does, once the slice has
a mask (or a box), the network runs on a square window (physical mm) around the mask, the positive clicks and
the box, grown by ``expansion`` and at least ``min_crop_mm`` wide; the answer is pasted back into the slice.
The first click on an empty slice (and text alone) still sees the whole slice: there is nothing to zoom on.

:class:`ZoomSettings` come from the bundle's ``inference_info.json`` (``"zoom"``); :func:`zoom_window` picks
the window and :class:`Crop` moves a request's arrays and prompts into it and the answer back out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..settings import settings_from_dict
from .slice_walk import mask_bbox


@dataclass(frozen=True)
class ZoomSettings:
    """``enabled``: zoom at all; ``expansion``: the window's side over the object's longest side;
    ``min_crop_mm``: the smallest window side (mm), so small objects keep some context."""

    enabled: bool = False
    expansion: float = 1.4
    min_crop_mm: float = 80.0
    box_alone: bool = True
    #: zoom also when the slice's mask came from elsewhere (propagation, the user's edits), not from the
    #: network's own last answer on the slice
    propagated: bool = True

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "ZoomSettings":
        settings = settings_from_dict(cls, data, "zoom")
        if not (settings.expansion >= 1.0 and settings.min_crop_mm > 0):
            raise InputError(f"zoom settings need expansion >= 1 and min_crop_mm > 0, got {data}")
        return settings


def zoom_window(shape, spacing, clicks, box, previous_mask, settings: ZoomSettings, own_mask: bool = True):
    """(row0, col0, row1, col1) (ends exclusive, inside the slice) to run the network on, or None for the whole
    slice: zoom off, nothing to zoom on yet (no mask and no box), a window as large as the slice, or a mask
    that is not the network's own last answer (``own_mask`` False) with ``settings.propagated`` off."""
    if not settings.enabled:
        return None
    extents = []
    if previous_mask is not None:
        bbox = mask_bbox(previous_mask)
        if bbox is not None:
            if not own_mask and not settings.propagated:
                return None
            extents.append(bbox)
    if box is not None and (extents or settings.box_alone):
        extents.append(tuple(int(v) for v in box))
    if not extents:
        return None
    extents += [(int(r), int(c), int(r), int(c)) for r, c, positive in clicks if positive]
    r0 = min(e[0] for e in extents)
    c0 = min(e[1] for e in extents)
    r1 = max(e[2] for e in extents) + 1
    c1 = max(e[3] for e in extents) + 1
    sr, sc = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    side_mm = max(settings.min_crop_mm, settings.expansion * max((r1 - r0) * sr, (c1 - c0) * sc))
    return square_window(((r0 + r1) / 2.0, (c0 + c1) / 2.0), side_mm, (sr, sc), shape)


def square_window(centre, side_mm: float, spacing, shape):
    """(row0, col0, row1, col1) (ends exclusive) of a window ``side_mm`` wide in both directions (``spacing``: mm
    per row, per col) around ``centre`` (row, col), shifted to lie inside a slice of ``shape``; None when it would
    cover the whole slice."""
    rows, cols = int(round(side_mm / spacing[0])), int(round(side_mm / spacing[1]))
    if rows >= shape[0] and cols >= shape[1]:
        return None
    (wr0, wr1), (wc0, wc1) = _span(centre[0], rows, shape[0]), _span(centre[1], cols, shape[1])
    return wr0, wc0, wr1, wc1


def _span(centre: float, length: int, limit: int) -> tuple[int, int]:
    """[start, end) of ``length`` around ``centre``, shifted to lie inside [0, limit) (clipped when longer)."""
    if length >= limit:
        return 0, limit
    start = int(round(centre - length / 2.0))
    start = min(max(start, 0), limit - length)
    return start, start + length


@dataclass(frozen=True)
class Crop:
    """A window (row0, col0, row1, col1; ends exclusive) of a slice of ``shape``; None = the whole slice."""

    window: Optional[tuple]
    shape: tuple

    @property
    def crop_shape(self) -> tuple:
        if self.window is None:
            return tuple(self.shape)
        r0, c0, r1, c1 = self.window
        return r1 - r0, c1 - c0

    def array(self, array):
        """The window of a slice-grid array (None stays None)."""
        if array is None or self.window is None:
            return array
        r0, c0, r1, c1 = self.window
        return array[r0:r1, c0:c1]

    def clicks(self, clicks) -> list:
        """Clicks moved into the window; clicks outside it are left out (they cannot be drawn)."""
        if self.window is None:
            return list(clicks)
        r0, c0, r1, c1 = self.window
        return [(r - r0, c - c0, positive) for r, c, positive in clicks if r0 <= r < r1 and c0 <= c < c1]

    def box(self, box):
        """The box moved into the window and clipped to it (None when it misses the window)."""
        if box is None or self.window is None:
            return box
        r0, c0, r1, c1 = self.window
        br0, bc0 = max(int(box[0]), r0) - r0, max(int(box[1]), c0) - c0
        br1, bc1 = min(int(box[2]), r1 - 1) - r0, min(int(box[3]), c1 - 1) - c0
        return (br0, bc0, br1, bc1) if br1 >= br0 and bc1 >= bc0 else None

    def paste(self, values: np.ndarray, fill) -> np.ndarray:
        """Window-grid values placed on the whole slice, ``fill`` elsewhere."""
        if self.window is None:
            return values
        out = np.full(tuple(self.shape), fill, dtype=values.dtype)
        r0, c0, r1, c1 = self.window
        out[r0:r1, c0:c1] = values
        return out
