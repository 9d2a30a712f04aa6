"""How the engines use a bundle's text localiser (IMISSegmentLib.networks.text_localiser): settings, the code ->
output map lookup and the map's parts. numpy only; the runtimes (onnxruntime, torch) live in the engines.

A bundle with the localiser has a ``text_localiser`` stage and, in its ``text`` entry, ``"localiser": {"codes":
[[category, side], ...], "threshold": 0.0, ...}``. A name typed alone on a slice that holds no mask is answered
with its map on the whole slice (``ClickNetEngineBase.predict_slice``); a name with clicks or a box, or on a slice
that already holds a mask, and a name the localiser has no map for, go to the click network's text stage as
before. Clicks after a name-alone answer correct it as they correct any answer of the engine (fed back, the parts
the clicks point at kept: "kidney" and then a click on the left one gives the left kidney).

* ``codes``: the structure code of each output map, in order. A name whose code has a map is localised; a
  category whose sides have maps, named without a side, takes both sides' maps; a side named for a category
  mapped without sides takes that map.
* ``threshold``: the logit above which a localised pixel is in the mask.
* ``min_part_share``: a name alone keeps the parts of its map with at least this share of the largest part's
  pixels (0: every part).
* ``keep_confirmed``: a part of the name's answer that a later positive click lands in stays in the answers on
  that slice until a negative click lands in it (:mod:`.named_parts`; false: the click network's answer alone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

LOCALISER_STAGE = "text_localiser"
SETTINGS = ("codes", "threshold", "min_part_share", "keep_confirmed")


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


@dataclass(frozen=True)
class LocaliserSettings:
    codes: tuple                 # ((category, side), ...): the code of each output map
    threshold: float = 0.0
    min_part_share: float = 0.0
    keep_confirmed: bool = False

    @classmethod
    def from_entry(cls, entry, source: str = "bundle") -> "LocaliserSettings":
        """From the bundle's ``text.localiser`` entry; InputError naming the bad field."""
        if not isinstance(entry, dict):
            raise InputError(f"{source}: text.localiser must be an object, got {entry!r}")
        unknown = sorted(set(entry) - set(SETTINGS))
        if unknown:
            raise InputError(f"{source}: text.localiser has unknown keys {unknown} (known: {', '.join(SETTINGS)})")
        codes = entry.get("codes")
        if (not isinstance(codes, (list, tuple)) or not codes
                or not all(isinstance(c, (list, tuple)) and len(c) == 2 and all(_whole(v) for v in c) for c in codes)
                or any(c < 1 or s not in (0, 1, 2) for c, s in codes)
                or len({tuple(c) for c in codes}) != len(codes)):
            raise InputError(f"{source}: text.localiser.codes must be a non-empty list of distinct [category >= 1, "
                             f"side 0..2] (whole numbers), got {codes!r}")
        threshold = entry.get("threshold", 0.0)
        if not _number(threshold):
            raise InputError(f"{source}: text.localiser.threshold must be a number, got {threshold!r}")
        share = entry.get("min_part_share", 0.0)
        if not _number(share) or not 0.0 <= share <= 1.0:
            raise InputError(f"{source}: text.localiser.min_part_share must be a number in 0..1, got {share!r}")
        keep = entry.get("keep_confirmed", False)
        if not isinstance(keep, bool):
            raise InputError(f"{source}: text.localiser.keep_confirmed must be true or false, got {keep!r}")
        return cls(tuple((int(c), int(s)) for c, s in codes), float(threshold), float(share), keep)

    def check_maps(self, maps, source) -> None:
        """InputError unless the localiser network's maps fit ``codes``: ``maps`` the graph's number of output maps,
        or the network's own list of codes (which must be the same, in the same order)."""
        if isinstance(maps, (list, tuple)):
            if [tuple(c) for c in maps] != list(self.codes):
                raise InputError(f"{source}: the text localiser's maps are {[list(c) for c in maps]}, but the bundle's "
                                 f"text.localiser.codes say {[list(c) for c in self.codes]}; re-export it")
        elif maps != len(self.codes):
            raise InputError(f"{source}: the text localiser gives {maps} maps, but the bundle's text.localiser names "
                             f"{len(self.codes)} codes; re-export it")

    def channels(self, code) -> list:
        """The output maps of ``code`` (category, side): its own; for a side-less name of a category whose sides
        have maps, both sides'; for a sided name of a category mapped without sides, that map; else []."""
        category, side = int(code[0]), int(code[1])
        if (category, side) in self.codes:
            return [self.codes.index((category, side))]
        if side == 0:
            return [n for n, (c, _) in enumerate(self.codes) if c == category]
        return [self.codes.index((category, 0))] if (category, 0) in self.codes else []


def label_parts(mask: np.ndarray) -> tuple:
    """(labels, count) of the 8-connected parts of a 2D mask."""
    from scipy import ndimage
    return ndimage.label(mask, structure=np.ones((3, 3), bool))


def main_parts(mask: np.ndarray, share: float) -> np.ndarray:
    """``mask`` without its parts smaller than ``share`` x its largest part (``mask`` itself when none is dropped)."""
    if share <= 0.0 or not mask.any():
        return mask
    parts, count = label_parts(mask)
    if count < 2:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    keep = np.flatnonzero(sizes >= share * sizes.max()) + 1
    return mask if len(keep) == count else np.isin(parts, keep)


def code_logits(logits: np.ndarray, channels: list) -> np.ndarray:
    """(C, S, S) localiser logits -> the (S, S) map of ``channels`` (their maximum: a pixel of either side)."""
    return np.max(np.asarray(logits, np.float32)[channels], axis=0)
