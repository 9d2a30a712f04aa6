"""Training slices seen through the inference zoom-in window (IMISSegmentLib/engines/zoom.py).

At inference, once a slice has a box or a mask, the 2D network runs on a square window around it (the object's
extent times ``expansion``, at least ``min_crop_mm``), resized to the network's size: objects then fill more of
the input than on the whole slice the network was trained on. As RITM and FocalClick train on crops around the
object, :class:`ZoomCrops` cuts a share of the training slices to such a window, its expansion and minimum side
drawn from ranges and its centre jittered, so the network learns the scales the zoom shows it and the zoom
settings (chosen afterwards on the validation split) can zoom further.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from IMISSegmentLib.engines.zoom import square_window


@dataclass(frozen=True)
class ZoomCrops:
    """``fraction`` of the real training slices are cut to a window around their structure: side = max(a
    ``min_crop_mm`` drawn from its range, an ``expansion`` drawn from its range x the structure's longest extent),
    centre moved by up to ``jitter`` x the side. ``priors``: cut the samples that start from a previous mask
    (propagated or defective) too, around the previous mask and the structure together, as the inference zoom
    frames a correction on a propagated mask (``zoom.propagated``) around that mask and the clicks."""

    fraction: float = 0.0
    expansion: tuple = (1.5, 4.0)
    min_crop_mm: tuple = (40.0, 240.0)
    jitter: float = 0.15
    priors: bool = False

    @classmethod
    def from_dict(cls, data) -> "ZoomCrops":
        data = dict(data or {})
        unknown = sorted(set(data) - {"fraction", "expansion", "min_crop_mm", "jitter", "priors"})
        if unknown:
            raise ValueError(f"data.zoom: unknown settings {unknown} "
                             "(known: fraction, expansion, min_crop_mm, jitter, priors)")
        if not isinstance(data.get("priors", False), bool):
            raise ValueError(f"data.zoom.priors must be true or false, got {data['priors']!r}")
        crops = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        for name, value, least, rule in (("expansion", crops.expansion, 1.0, "1 <= low <= high"),
                                         ("min_crop_mm", crops.min_crop_mm, 1e-6, "0 < low <= high")):
            numbers = isinstance(value, tuple) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
            if not (numbers and least <= value[0] <= value[1]):
                shown = list(value) if isinstance(value, tuple) else value
                raise ValueError(f"data.zoom.{name} must be [low, high], finite, with {rule}, got {shown!r}")
        for name, value in (("fraction", crops.fraction), ("jitter", crops.jitter)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"data.zoom.{name} must be a number in 0..1, got {value!r}")
        return crops

    def window(self, mask: np.ndarray, spacing, rng):
        """(row0, col0, row1, col1) (ends exclusive) of a window around ``mask``'s structure, or None (no crop
        this time, an empty mask, or a window as large as the slice)."""
        if self.fraction <= 0.0 or rng.random() >= self.fraction:
            return None
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return None
        spacing = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
        spans = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)          # pixels
        side_mm = max(rng.uniform(*self.min_crop_mm),
                      rng.uniform(*self.expansion) * max(spans[0] * spacing[0], spans[1] * spacing[1]))
        sides = (int(round(side_mm / spacing[0])), int(round(side_mm / spacing[1])))  # pixels, as square_window
        if sides[0] >= mask.shape[0] and sides[1] >= mask.shape[1]:
            return None
        # the centre moves by up to jitter x the side, but never so far that the structure leaves the window
        limits = [min(self.jitter * side, max(0.0, (side - span) / 2.0)) for side, span in zip(sides, spans)]
        centre = ((rows.min() + rows.max() + 1) / 2.0 + rng.uniform(-limits[0], limits[0]),
                  (cols.min() + cols.max() + 1) / 2.0 + rng.uniform(-limits[1], limits[1]))
        return square_window(centre, side_mm, spacing, mask.shape)
