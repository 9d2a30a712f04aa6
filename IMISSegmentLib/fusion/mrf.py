"""Multi-round fusion: merge a round's new result with the previous round's, slice by slice.

A round is one ``propagate()`` after new prompts. Its result may be worse than the last round's on slices
far from the correction (the memory network re-propagates the whole structure). For every slice along the
propagation axis where the two results differ, two checks decide whether it keeps the previous mask:

* the direction check (``direction_margin``): a round whose new prompts are all positive clicks says "more
  of the structure", one of negative clicks alone "less". A slice the user did not touch whose new mask
  moves the other way -- shrinks after positive clicks, grows after negative ones, by more than
  ``direction_margin`` of the previous mask's area -- got that change from the re-propagation, not from the
  correction: it keeps the previous mask. Rounds with a box, a text or clicks of both kinds have no direction.
* the quality network (:mod:`IMISSegmentLib.fusion.quality`, ``network``) scores whether the previous mask
  is the better one; above ``threshold`` the slice keeps it, otherwise it takes the new one.

The user's prompted slices are never fused: they keep the user's latest result.

Slices are scored in batches of ``batch_size`` as they are read, so the memory used does not grow with the
volume beyond the output array.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import CancelledError, InputError
from ..evaluation.metrics import dice
from ..normalize import apply_window
from ..prompts import Click, plane_axes, slice_of
from ..settings import settings_from_dict
from .quality import FUSION_ROI_MARGIN_MM, FUSION_ROI_SCALE, fusion_inputs, slice_context


SPREADS = ("all", "contiguous", "agree")
EXTENDS = ("always", "clicked")


@dataclass
class FusionSettings:
    #: whether sessions fuse rounds unless told otherwise (InteractiveSession(fusion=None))
    enabled: bool = True
    #: keep the previous mask on a slice when P(previous is better) exceeds this
    threshold: float = 0.5
    roi_scale: float = FUSION_ROI_SCALE
    roi_margin_mm: float = FUSION_ROI_MARGIN_MM
    batch_size: int = 32
    #: "all": every differing slice is decided on its own; "contiguous": a slice takes the new mask only when a
    #: run of new-mask slices joins it to a slice prompted in this round (a correction changes the slices next
    #: to it; changes beyond the first slice that keeps the previous mask, or that did not change, are the
    #: re-propagation's, and are dropped)
    #: "agree": walking out from each slice prompted in this round, slices take the new mask until the first one
    #: whose new and previous masks already agree (Dice >= ``agree_dice``) or that keeps the previous mask; there
    #: the correction has faded out, and every slice beyond keeps the previous round's mask (a correction fixes
    #: its neighbourhood; the re-propagation's drift elsewhere is dropped)
    spread: str = "all"
    #: "agree" spread: new / previous masks this alike (Dice) end the correction's reach
    agree_dice: float = 0.9
    #: "agree" spread, slices the previous round left empty (past the structure's ends as it saw them):
    #: "always" takes their new masks like any other; "clicked" only when the walk starts from a slice that was
    #: empty in the previous round too (the user is extending the structure); a correction of a slice that had
    #: a mask says nothing about the structure going on past its ends, and the re-propagation that runs on past
    #: them is dropped
    extend: str = "always"
    #: the direction check: after a round of positive (negative) clicks alone, a slice whose new mask is smaller
    #: (larger) than the previous one by more than this share of the previous mask's area keeps the previous
    #: mask; None: no direction check
    direction_margin: Optional[float] = None
    #: whether the quality network decides the slices the direction check leaves (False: they take the new mask)
    network: bool = True

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "FusionSettings":
        settings = settings_from_dict(cls, values, "fusion")
        if not 0.0 <= float(settings.threshold) <= 1.0:
            raise InputError(f"fusion threshold must be between 0 and 1, got {settings.threshold!r}")
        if int(settings.batch_size) < 1:
            raise InputError(f"fusion batch_size must be >= 1, got {settings.batch_size!r}")
        agree = settings.agree_dice
        if isinstance(agree, bool) or not isinstance(agree, (int, float)) or not 0.0 < agree <= 1.0:
            raise InputError(f"fusion agree_dice must be a number in (0, 1], got {agree!r}")
        settings.agree_dice = float(agree)
        if settings.extend not in EXTENDS:
            raise InputError(f"fusion extend must be one of {', '.join(EXTENDS)}, got {settings.extend!r}")
        if settings.spread not in SPREADS:
            raise InputError(f"fusion spread must be one of {', '.join(SPREADS)}, got {settings.spread!r}")
        for name in ("enabled", "network"):
            if not isinstance(getattr(settings, name), bool):
                raise InputError(f"fusion {name} must be true or false, got {getattr(settings, name)!r}")
        margin = settings.direction_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0):
            raise InputError(f"fusion direction_margin must be a number >= 0 or null, got {margin!r}")
        return settings


def round_direction(prompts) -> int:
    """+1 when a round's new ``prompts`` are positive clicks alone, -1 for negative clicks alone, 0 otherwise
    (no prompts, clicks of both kinds, a box or a text: the round says nothing about more or less)."""
    if not prompts or not all(isinstance(p, Click) for p in prompts):
        return 0
    kinds = {bool(p.positive) for p in prompts}
    return 0 if len(kinds) > 1 else (1 if kinds.pop() else -1)


def against_direction(previous_area: int, current_area: int, direction: int, margin: Optional[float]) -> bool:
    """Whether a slice's new mask moved against the round's ``direction`` by more than ``margin`` of the
    previous mask's area (False when the check is off or the round has no direction)."""
    if margin is None or direction == 0:
        return False
    if direction > 0:
        return current_area < previous_area * (1.0 - margin)
    return current_area > previous_area * (1.0 + margin)


def fuse_rounds(volume, previous: np.ndarray, current: np.ndarray, axis: int, scorer,
                settings: Optional[FusionSettings] = None, protected=(), new_prompted=(), cancelled=None,
                direction: int = 0, extending=()):
    """The fused (K, J, I) uint8 result and a report.

    ``volume``: the engine's VolumeContext (array, spacing, window); ``previous`` / ``current``: the two
    rounds' results; ``axis``: the propagation axis; ``scorer.score(inputs (N, 3, S, S), context (N, 2))`` ->
    P(previous better) (not used, and may be None, when ``settings.network`` is off); ``protected``: slice
    indices on ``axis`` that keep ``current`` (the user's slices); ``new_prompted``: those of them prompted in
    this round (the rest were prompted before); ``direction``: the round's :func:`round_direction`;
    ``extending``: those of ``new_prompted`` that had no mask before this round's prompts (``extend`` "clicked").
    Report: ``{"axis", "differing", "scored", "kept_previous": [indices], "against_direction": [indices],
    "seconds"}``.
    """
    settings = settings or FusionSettings()
    if settings.network and scorer is None:
        raise InputError("fusion settings ask for the quality network (\"network\": true), but there is none")
    started = time.perf_counter()
    rows, cols = plane_axes(axis)
    spacing = (volume.spacing[rows], volume.spacing[cols])
    fused = np.array(current, np.uint8, copy=True)
    protected = set(int(i) for i in protected)
    new_prompted = set(int(i) for i in new_prompted)
    older = protected - new_prompted
    kept, scored, differing, against = [], 0, [], []
    batch, contexts, indices = [], [], []

    def decide():
        nonlocal scored
        probabilities = np.asarray(scorer.score(np.stack(batch), np.stack(contexts)), np.float64).reshape(-1)
        scored += len(indices)
        for index, probability in zip(indices, probabilities):
            if probability > settings.threshold:
                slice_of(fused, axis, index)[...] = slice_of(previous, axis, index)
                kept.append(index)
        batch.clear()
        contexts.clear()
        indices.clear()

    for index in range(current.shape[axis]):
        if index in protected:
            continue
        old, new = slice_of(previous, axis, index), slice_of(current, axis, index)
        if np.array_equal(old, new):
            continue
        differing.append(index)
        if cancelled is not None and cancelled():
            raise CancelledError("fusion cancelled")
        if against_direction(np.count_nonzero(old), np.count_nonzero(new), direction, settings.direction_margin):
            slice_of(fused, axis, index)[...] = old
            kept.append(index)
            against.append(index)
            continue
        if not settings.network:
            continue
        image = apply_window(slice_of(volume.array, axis, index), volume.window)
        batch.append(fusion_inputs(image, old > 0, new > 0, spacing, scorer.size,
                                   settings.roi_scale, settings.roi_margin_mm))
        contexts.append(slice_context(index, new_prompted, older, volume.spacing[axis]))
        indices.append(index)
        if len(batch) >= settings.batch_size:
            decide()
    if batch:
        decide()
    if settings.spread in ("contiguous", "agree") and new_prompted:
        if settings.spread == "contiguous":
            joined = reached(new_prompted, differing, kept, protected, current.shape[axis])
        else:
            joined = reached_until_agreement(new_prompted, previous, current, axis, kept, protected,
                                             settings.agree_dice, settings.extend, extending)
        for index in sorted(set(differing) - set(kept) - joined):
            slice_of(fused, axis, index)[...] = slice_of(previous, axis, index)
            kept.append(index)
    report = {"axis": axis, "differing": len(differing), "scored": scored, "kept_previous": sorted(kept),
              "against_direction": against, "seconds": time.perf_counter() - started}
    return fused, report


def _walk_out(starts, length: int, takes) -> set:
    """Slice indices reached from each of ``starts`` outwards, both ways, while ``takes(index, start)`` holds (the
    walk stops at the first slice that does not, and at the volume's ends)."""
    out = set()
    for start in starts:
        for step in (-1, 1):
            index = start + step
            while 0 <= index < length and takes(index, start):
                out.add(index)
                index += step
    return out


def reached_until_agreement(starts, previous, current, axis: int, kept, protected, agree_dice: float,
                            extend: str = "always", extending=()) -> set:
    """Slice indices a correction reaches (the "agree" spread): from each of ``starts`` outwards, the slices whose
    new mask differs from the previous one (Dice < ``agree_dice``), up to the first that agrees, keeps the
    previous mask (``kept``) or is one of the user's slices (``protected``: their own masks hold beyond them).
    ``extend`` "clicked": a slice empty in the previous round stops the walk too, unless the start is one of
    ``extending`` (slices that had no mask before this round's prompts)."""
    stops = set(kept) | set(protected)
    extending = set(extending)
    extends = {start: extend != "clicked" or start in extending for start in starts}

    def takes(index, start):
        old = slice_of(previous, axis, index)
        if index in stops or (not extends[start] and not old.any()):
            return False
        return dice(old, slice_of(current, axis, index)) < agree_dice

    return _walk_out(starts, current.shape[axis], takes)


def reached(starts, differing, kept, protected, length: int) -> set:
    """Slice indices joined to one of ``starts`` by a run of slices that changed and took the new mask
    (the user's slices, ``protected``, do not break a run)."""
    joined = (set(differing) - set(kept)) | set(protected)
    return _walk_out(starts, length, lambda index, start: index in joined)
