"""A click on a slice the structure was missed on answers about the neighbouring slice's size, not many times it.

When propagation stops short of a structure's end, the user clicks on a slice with no mask; the correction network
then sees the nearest slice's mask as its prior (``SliceRequest.neighbour_mask``). A structure changes little
from one slice to the next, and where propagation stopped it is usually getting smaller, yet the network, sure
of the click, often answers with a blob several times the neighbour's area (an adrenal gland's 15 pixels become
136). When the answer is more than ``max_growth`` times the neighbour mask's area, the threshold is raised step by
step (``GrowthCheckSettings.thresholds``) until it is not, as long as every positive click stays inside the
answer (so the answer keeps the part the user pointed at); the last threshold that keeps the clicks is used when
none is small enough. The shift applies to the logits, so the probabilities fed back on the next click agree
with the mask shown (as :mod:`IMISSegmentLib.engines.box_fill` does the other way).

:class:`GrowthCheckSettings` come from the bundle's ``inference_info.json`` (``"growth_check"``; off when absent).
Their ``neighbour`` says how the neighbouring slice's mask enters: ``"prior"``, as the previous mask (what a
propagated-slice correction network was trained on) and as the area limit; ``"area"``, as the area limit
alone (the click is answered as a first click is); ``"auto"``, "prior" with a propagated-slice correction network
and nothing without one (the behaviour of bundles made before the setting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from ..settings import settings_from_dict
from .box_fill import threshold_offset

NEIGHBOUR_MODES = ("auto", "prior", "area", "off")


@dataclass(frozen=True)
class GrowthCheckSettings:
    """``enabled``: check answers on the neighbour's prior at all; ``max_growth``: the largest answer area over
    the neighbour mask's area; ``thresholds``: the probabilities (above 0.5, ascending) tried in turn;
    ``neighbour``: how the neighbour's mask enters (NEIGHBOUR_MODES, the module docstring)."""

    enabled: bool = False
    max_growth: float = 2.0
    thresholds: tuple = (0.6, 0.7, 0.8, 0.9, 0.95)
    neighbour: str = "auto"

    def neighbour_mode(self, corrects_propagated: bool) -> str:
        """"prior", "area" or "off" for an engine that has (or has not) a propagated-slice correction network."""
        if self.neighbour == "auto":
            return "prior" if corrects_propagated else "off"
        return self.neighbour

    @classmethod
    def from_dict(cls, data) -> "GrowthCheckSettings":
        settings = settings_from_dict(cls, data, "growth_check")
        thresholds = tuple(float(t) for t in settings.thresholds)
        if not (settings.max_growth >= 1.0 and all(0.5 < t < 1.0 for t in thresholds)
                and list(thresholds) == sorted(thresholds)):
            raise InputError(f"growth_check settings need max_growth >= 1 and thresholds ascending in (0.5, 1), "
                             f"got {data}")
        if settings.neighbour not in NEIGHBOUR_MODES:
            raise InputError(f"growth_check neighbour must be one of {', '.join(NEIGHBOUR_MODES)}, "
                             f"got {settings.neighbour!r}")
        return GrowthCheckSettings(bool(settings.enabled), float(settings.max_growth), thresholds, settings.neighbour)


def growth_shift(mask_at: Callable[[float], np.ndarray], neighbour_area: int, positive_points,
                 settings: GrowthCheckSettings) -> float:
    """The logit offset to subtract so the answer is at most ``max_growth`` times ``neighbour_area``, or the
    largest that keeps every positive click (``positive_points``: (row, col)) inside when none gets there. 0.0
    when the check is off, when the answer at the usual threshold (``mask_at(0.0)``: the slice mask where
    logits > 0) is small enough already, or when the first raised threshold would already drop a click."""
    if not settings.enabled or neighbour_area <= 0:
        return 0.0
    limit = settings.max_growth * neighbour_area
    if np.count_nonzero(mask_at(0.0)) <= limit:
        return 0.0
    points = [(int(r), int(c)) for r, c in positive_points]
    chosen = 0.0
    for threshold in settings.thresholds:
        offset = threshold_offset(threshold)
        mask = mask_at(offset)
        if not all(mask[r, c] for r, c in points):
            break
        chosen = offset
        if np.count_nonzero(mask) <= limit:
            break
    return chosen
