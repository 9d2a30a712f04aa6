"""The parts of a name's answer that clicks confirm stay in the answer (``text.localiser.keep_confirmed``).

A name alone on an empty slice is answered by the text localiser (:mod:`.text_localiser`); the clicks that follow
go to the click network with the name and that answer as the previous mask. Given a ring it did not draw (the
myocardium) and a click on it, the click network answers the click alone: a blob around the click, the ring lost
(docs/evaluation/confirming-clicks). With ``keep_confirmed``, a part of the name's answer that a positive click
lands in is confirmed: it stays in every later answer on that slice (added to the network's), until a negative
click lands in it, which rejects it for good. The record travels with the slice's engine state, so undo and
redo restore it with the mask. numpy only.

A name finer than the localiser's map (a lobe of the lung, answered with the lung's map) is not confirmed: the
clicked part holds more than was asked for. Numbered instances of the categories in ``INSTANCE_CATEGORIES`` ("rib
8") are confirmed: their map's parts are the instances (training/data/text_data.py splits them so).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .text_localiser import label_parts

#: categories whose localiser map's parts are the named structure's instances (one rib per part)
INSTANCE_CATEGORIES = ("rib",)


def confirmable(code) -> bool:
    """Whether clicks may confirm parts of the answer to this TextCode: the name asks for the map's structure (no
    finer detail), or for one instance of a category whose parts are its instances."""
    return not code.detail or code.category_name in INSTANCE_CATEGORIES


def name_key(code) -> tuple:
    """What a record of a name's answer is kept for: the TextCode's category, side and detail (another name typed
    on the slice later does not inherit the parts clicks confirmed for this one)."""
    return (int(code.category), int(code.side), str(code.detail))


@dataclass(frozen=True)
class NamedParts:
    """The parts of a name's answer on one slice and which of them clicks confirmed or rejected."""

    parts: np.ndarray                 # (H, W) int32: the name's answer's 8-connected parts, 1.., 0 outside
    confirmed: frozenset = frozenset()
    rejected: frozenset = frozenset()
    clicks_seen: int = 0              # the slice's clicks already counted (a request carries all of them)
    name: tuple = ()                  # name_key() of the name the answer was given for

    @classmethod
    def of(cls, mask: np.ndarray, name: tuple = ()) -> "NamedParts":
        parts, _ = label_parts(np.asarray(mask, bool))
        return cls(parts.astype(np.int32), name=tuple(name))

    def after(self, clicks) -> "NamedParts":
        """This record with the clicks past ``clicks_seen`` counted: a positive click in a part not rejected
        confirms it, a negative click in a part rejects it."""
        confirmed, rejected = set(self.confirmed), set(self.rejected)
        rows, cols = self.parts.shape
        for r, c, positive in list(clicks)[self.clicks_seen:]:
            part = int(self.parts[r, c]) if 0 <= r < rows and 0 <= c < cols else 0
            if not part:
                continue
            if not positive:
                confirmed.discard(part)
                rejected.add(part)
            elif part not in rejected:
                confirmed.add(part)
        return replace(self, confirmed=frozenset(confirmed), rejected=frozenset(rejected), clicks_seen=len(clicks))

    def kept(self) -> Optional[np.ndarray]:
        """The confirmed parts as a (H, W) bool mask, or None when there are none."""
        if not self.confirmed:
            return None
        return np.isin(self.parts, sorted(self.confirmed))
