"""A positive click adds to a slice's mask; it does not take most of it away.

The user clicks inside the structure where the mask misses it. The click network, given the slice's mask as its
prior, sometimes answers such a click with a small blob around it and drops the rest (a left ventricle of 983
pixels answered with 49; docs/evaluation/3d-rounds: 9 of 290 positive clicks on a masked slice answer with less
than half the mask, and in 7 of them the mask as it was had fewer wrong pixels). When the prompt is a positive
click and the answer covers less than ``min_share`` of the slice's previous mask, the answer is joined to the
previous mask: what the click added stays, and what it took away comes back. Only a click is checked (the session
says which prompt a request answers, ``SliceRequest.new_prompt``): a box drawn after a positive click is not.
Negative clicks are left alone (of the 36 that removed over half a mask, 32 were right to).

:class:`ShrinkCheckSettings` come from the bundle's ``inference_info.json`` (``"shrink_check"``; off when absent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..settings import settings_from_dict


@dataclass(frozen=True)
class ShrinkCheckSettings:
    """``enabled``: check positive clicks' answers at all; ``min_share``: the smallest answer area, as a share of
    the previous mask's, taken as it is."""

    enabled: bool = False
    min_share: float = 0.5

    @classmethod
    def from_dict(cls, data) -> "ShrinkCheckSettings":
        settings = settings_from_dict(cls, data, "shrink_check")
        if not isinstance(settings.enabled, bool):
            raise InputError(f"shrink_check enabled must be true or false, got {settings.enabled!r}")
        share = settings.min_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
            raise InputError(f"shrink_check min_share must be a number in (0, 1], got {share!r}")
        return ShrinkCheckSettings(settings.enabled, float(share))


def shrink_checked(mask: np.ndarray, previous_mask: Optional[np.ndarray], clicks, new_prompt: str,
                   settings: ShrinkCheckSettings) -> np.ndarray:
    """``mask`` joined to ``previous_mask`` when the check is on, the prompt answered (``new_prompt``,
    SliceRequest.new_prompt) is a click, the latest of ``clicks`` ((row, col, positive) in order, so that click) is
    positive and ``mask`` covers less than ``min_share`` of a non-empty ``previous_mask``; else ``mask`` itself (the
    same object, so callers can tell). A box drawn after a positive click is not checked: a smaller box may mean to
    cut the mask back."""
    if (not settings.enabled or new_prompt != "click" or not clicks or not clicks[-1][2]
            or previous_mask is None):
        return mask
    previous = np.asarray(previous_mask, bool)
    previous_area = int(np.count_nonzero(previous))
    if previous_area == 0 or np.count_nonzero(mask) >= settings.min_share * previous_area:
        return mask
    return mask | previous
