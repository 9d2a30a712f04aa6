"""A box alone says the structure spans it.

A box is drawn around the structure, so the structure reaches (nearly) every row and every column of the box.
An answer that leaves most of the box's rows or columns empty contradicts the prompt: the network was unsure
of the structure (a large uniform organ, say) and kept a few confident pixels of something else inside the
box. Then the answer's threshold is lowered step by step (``BoxFillSettings.thresholds``) until the answer
spans ``min_span`` of the box's rows and of its columns (the box-projection idea of box-supervised
segmentation); if no threshold does, the answer stays as it was. The shift applies to the logits, so the
probabilities fed back on the next click agree with the mask shown.

:class:`BoxFillSettings` come from the bundle's ``inference_info.json`` (``"box_fill"``; off when absent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from ..settings import settings_from_dict


@dataclass(frozen=True)
class BoxFillSettings:
    """``enabled``: check a box alone at all; ``min_span``: the share of the box's rows and of its columns the
    answer must reach; ``thresholds``: the probabilities (below 0.5, descending) tried in turn."""

    enabled: bool = False
    min_span: float = 0.5
    thresholds: tuple = (0.4, 0.3, 0.2)

    @classmethod
    def from_dict(cls, data) -> "BoxFillSettings":
        settings = settings_from_dict(cls, data, "box_fill")
        thresholds = tuple(float(t) for t in settings.thresholds)
        if not (0.0 < settings.min_span <= 1.0 and all(0.0 < t < 0.5 for t in thresholds)
                and list(thresholds) == sorted(thresholds, reverse=True)):
            raise InputError(f"box_fill settings need 0 < min_span <= 1 and thresholds descending in (0, 0.5), "
                             f"got {data}")
        return BoxFillSettings(bool(settings.enabled), float(settings.min_span), thresholds)


def box_span(mask: np.ndarray, box) -> float:
    """The smaller of the shares of the box's rows and of its columns that ``mask`` reaches inside the box
    (``box`` = (row0, col0, row1, col1), inclusive)."""
    r0, c0, r1, c1 = (int(v) for v in box)
    inside = np.asarray(mask, bool)[r0:r1 + 1, c0:c1 + 1]
    if inside.size == 0:
        return 0.0
    return float(min(inside.any(axis=1).mean(), inside.any(axis=0).mean()))


def threshold_offset(probability: float) -> float:
    """The logit at which the sigmoid reaches ``probability``: subtracting it from the logits moves the
    threshold from 0.5 to ``probability`` (shared by the answer checks, box_fill and growth_check)."""
    return math.log(probability / (1.0 - probability))


def box_fill_shift(mask_at: Callable[[float], np.ndarray], box, settings: BoxFillSettings) -> float:
    """The logit offset to subtract so the answer spans the box: 0.0 when the answer at the usual threshold
    (``mask_at(0.0)``, the slice mask where logits > 0) already does, or when no threshold makes it.
    ``mask_at(offset)`` is the slice mask where logits > offset."""
    if not settings.enabled or box_span(mask_at(0.0), box) >= settings.min_span:
        return 0.0
    for threshold in settings.thresholds:
        offset = threshold_offset(threshold)
        if box_span(mask_at(offset), box) >= settings.min_span:
            return offset
    return 0.0
