"""The engine protocol: what the session asks of a segmentation method.

An engine turns the prompts on one slice into that slice's mask (:meth:`Engine.predict_slice`, the fast
interactive path) and, if it can, carries masks through the volume (:meth:`Engine.propagate`). The
session owns prompts, results and undo; an engine owns only its caches (image features, sessions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..prompts import Box, Click, TextPrompt

ProgressCallback = Callable[[int, int], None]   # (done, total)
CancelCheck = Callable[[], bool]                # True -> stop as soon as possible


@dataclass
class VolumeContext:
    """The volume an engine works on: raw intensities (K, J, I), spacing (sk, sj, si) and the intensity window."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    window: tuple[float, float, str]

    @property
    def window_kind(self) -> str:
        """"ct" or "percentile" (IMISSegmentLib.normalize.intensity_window); "" for a window without one."""
        return self.window[2] if len(self.window) > 2 else ""


#: how far (mm) the session looks for a neighbouring slice's mask (SliceRequest.neighbour_mask); the
#: propagated-slice correction network was trained with priors 2-20 mm away (training/data/datasets.py)
NEIGHBOUR_MM = 20.0


@dataclass
class SliceRequest:
    """Everything prompted on one slice, in that slice's (row, col) grid (see prompts.plane_axes)."""

    axis: int
    index: int
    image: np.ndarray                      # (H, W) float32 normalised 0..1
    raw: np.ndarray                        # (H, W) raw intensities
    spacing: tuple[float, float]           # mm per row, per col
    clicks: list = field(default_factory=list)      # [(row, col, positive)] in order
    box: Optional[tuple[int, int, int, int]] = None  # (row0, col0, row1, col1) inclusive
    text: Optional[str] = None
    previous_mask: Optional[np.ndarray] = None      # (H, W) bool: the slice's mask before this prompt
    previous_state: object = None                    # what this engine returned last time for this slice
    #: (H, W) bool: when the slice has no mask yet, the mask of the nearest slice along the axis that has one
    #: (within NEIGHBOUR_MM), e.g. where propagation stopped short of the structure's end; None otherwise
    neighbour_mask: Optional[np.ndarray] = None
    #: how ``image`` was normalised (IMISSegmentLib.normalize): "ct" (Hounsfield units, fixed window), "percentile"
    #: (MR and already-windowed images), "" unknown
    window_kind: str = ""
    #: the prompt this request answers, the slice's latest: "click", "box" or "text" (the session says); "" when
    #: the caller does not say (checks that concern one kind of prompt then stay out)
    new_prompt: str = ""


@dataclass
class SliceResult:
    mask: np.ndarray            # (H, W) bool
    state: object = None        # engine-private (e.g. low-resolution logits fed back next round)


@dataclass
class PropagationRequest:
    """All prompts so far (volume coordinates) and the current result, for carrying masks through the volume."""

    clicks: list[Click]
    boxes: list[Box]
    texts: list[TextPrompt]
    prompted: dict              # {(axis, index): (H, W) bool mask} the user's slices, latest result each
    result: np.ndarray          # (K, J, I) uint8 current result
    new_prompted: tuple = ()    # the (axis, index) keys prompted since the last propagation (this round's)
    new_prompts: tuple = ()     # the prompts (Click, Box, TextPrompt) given since the last propagation, in order
    new_empty: tuple = ()       # of new_prompted (in its order), those whose slice had no mask before its first
                                # prompt of this round


class Engine:
    """Base class; subclasses set ``name`` and ``capabilities`` and implement :meth:`predict_slice`."""

    name = "engine"
    #: any of "click", "box", "text", "propagate", "fuse" (multi-round fusion, :meth:`fuse_rounds`)
    capabilities: frozenset = frozenset()

    def __init__(self) -> None:
        self.volume: Optional[VolumeContext] = None

    def set_volume(self, volume: VolumeContext) -> None:
        """Called once per volume before any prediction; drop caches that belong to the previous one."""
        self.volume = volume

    def predict_slice(self, request: SliceRequest) -> SliceResult:
        raise NotImplementedError

    def resolve_text(self, text: str):
        """What a text prompt means to this engine (engines with the "text" capability); InputError with the
        closest known names when it names nothing the engine knows. Called before a text prompt is predicted."""
        raise NotImplementedError(f"engine '{self.name}' does not take text prompts")

    def propagate(self, request: PropagationRequest, progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelCheck] = None) -> np.ndarray:
        """Return a new (K, J, I) uint8 result; must not modify ``request.result``."""
        raise NotImplementedError(
            f"engine '{self.name}' cannot propagate through the volume yet "
            "(it segments single slices only)")

    def fuse_rounds(self, request: PropagationRequest, previous: np.ndarray, current: np.ndarray,
                    cancelled: Optional[CancelCheck] = None) -> np.ndarray:
        """Merge a round's result (``current``, from :meth:`propagate`) with the previous round's; engines with
        the "fuse" capability keep the better mask per slice. This default keeps ``current``."""
        return current

    def describe(self) -> dict:
        return {"name": self.name, "capabilities": sorted(self.capabilities)}
