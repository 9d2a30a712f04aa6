"""``InteractiveSession``: the one public API (DESIGN.md). Prompts in, masks out, with undo.

The session owns the volume, every prompt, the result and the undo history; the engine only predicts.
Each prompt call validates everything first, then predicts, then commits, so a bad prompt or a failing
engine leaves the session exactly as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .engines.base import NEIGHBOUR_MM, Engine, PropagationRequest, SliceRequest, VolumeContext
from .errors import InputError
from .normalize import apply_window, intensity_window
from .prompts import (Box, Click, TextPrompt, check_axis, check_slice_index, make_box, make_click,
                      plane_axes, slice_of, slice_region)


def _prompt_kind(prompt) -> str:
    """SliceRequest.new_prompt for a prompt: "click", "box", "text", or "" for None."""
    if isinstance(prompt, Click):
        return "click"
    if isinstance(prompt, Box):
        return "box"
    return "text" if isinstance(prompt, TextPrompt) else ""


@dataclass
class SliceUpdate:
    """What a prompt changed: the slice, its new mask, and the changed region in volume indices."""

    axis: int
    index: int
    mask: np.ndarray                 # (H, W) uint8, the slice's new mask
    region: Optional[tuple]          # tuple of 3 slices bounding the changed voxels; None if nothing changed
    changed_voxels: int


@dataclass
class PropagationUpdate:
    region: Optional[tuple]
    changed_voxels: int
    #: the multi-round fusion's report when this round was fused (IMISSegmentLib.fusion.fuse_rounds:
    #: axis, differing, scored, kept_previous, seconds), else None
    fusion: Optional[dict] = None


@dataclass
class _SliceState:
    clicks: list = field(default_factory=list)   # [Click]
    box: Optional[Box] = None
    text: Optional[TextPrompt] = None
    engine_state: object = None

    def copy(self) -> "_SliceState":
        return _SliceState(list(self.clicks), self.box, self.text, self.engine_state)


@dataclass(frozen=True)
class _Saved:
    """A block of the result kept for undo: as bits when it holds only 0 and 1 (an eighth of the memory, so a
    long session on a large volume keeps its history small), else as it is."""

    shape: tuple
    data: np.ndarray
    packed: bool

    @classmethod
    def of(cls, values: np.ndarray) -> "_Saved":
        values = np.ascontiguousarray(values)
        if values.dtype == np.uint8 and values.max(initial=0) <= 1:
            return cls(values.shape, np.packbits(values, axis=None), True)
        return cls(values.shape, values.copy(), False)

    def values(self) -> np.ndarray:
        if not self.packed:
            return self.data
        count = int(np.prod(self.shape))
        return np.unpackbits(self.data, count=count).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class _UndoRecord:
    kind: str                        # "prompt" or "propagate"
    region: Optional[tuple]          # where the result changed
    old_values: Optional[_Saved]     # the result there before
    slice_key: Optional[tuple] = None
    old_slice_state: Optional[_SliceState] = None
    prompt_count: int = 0
    fusion: Optional[bool] = None    # a propagation's: whether it was fused


def _array_bytes(state) -> int:
    """Bytes of the numpy arrays an engine state holds (an array, or an object or tuple of them)."""
    if isinstance(state, np.ndarray):
        return state.nbytes
    values = vars(state).values() if hasattr(state, "__dict__") else state if isinstance(state, tuple) else ()
    return sum(value.nbytes for value in values if isinstance(value, np.ndarray))


def _changed_region(old: np.ndarray, new: np.ndarray):
    """(bounding region as a tuple of slices, count) of the voxels that differ; (None, 0) if none do."""
    diff = old != new
    count = int(np.count_nonzero(diff))
    if count == 0:
        return None, 0
    region = []
    for axis in range(diff.ndim):
        hits = np.flatnonzero(diff.any(axis=tuple(a for a in range(diff.ndim) if a != axis)))
        region.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(region), count


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be three numbers (sk, sj, si) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing must be three positive finite numbers (sk, sj, si) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def check_volume_array(array) -> np.ndarray:
    """Validate a (K, J, I) intensity array; InputError naming the problem otherwise."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume array (K, J, I), got an array of shape {array.shape}")
    if array.size == 0:
        raise InputError(f"the volume is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"expected integer or floating-point voxels, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(f"the volume has {bad} NaN or infinite voxels; expected finite intensities")
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(f"the volume is constant (every voxel is {low}); nothing to segment")
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4:   # the networks work in float32
        if max(abs(float(low)), abs(float(high))) > float(np.finfo(np.float32).max):
            raise InputError(f"intensities from {low} to {high} are beyond float32's range (about 3.4e38)")
        if np.float32(low) == np.float32(high):
            raise InputError(f"the volume is constant in float32 (intensities {low} to {high}); nothing to segment")
    return array


class InteractiveSession:
    """Interactive segmentation of one structure in one volume.

    >>> s = InteractiveSession(load_model())
    >>> s.set_volume(array_kji, spacing=(sk, sj, si))
    >>> s.add_click((k, j, i), positive=True, axis=0)
    >>> s.result   # uint8 (K, J, I)
    """

    def __init__(self, model=None, device: str = "auto", fusion: Optional[bool] = None) -> None:
        if model is None or isinstance(model, str):
            from .models import load_model
            model = load_model(model, device=device)
        if not isinstance(model, Engine):
            raise InputError(f"model must be an engine from load_model(), got {type(model).__name__}")
        self.engine: Engine = model
        self.device = device
        #: multi-round fusion: each propagate() after the first keeps, per slice, the better of the previous
        #: and the new round's mask (engines with the "fuse" capability); False for the plain new result.
        #: None: the model's own default (its bundle's ``fusion.settings.enabled``)
        if fusion is None:
            settings = getattr(model, "fusion_settings", None)
            fusion = bool(settings is not None and settings.enabled)
        self.fusion = bool(fusion)
        self._volume: Optional[VolumeContext] = None
        self._result: Optional[np.ndarray] = None
        self._slices: dict = {}
        self._prompts: list = []
        self._undo: list[_UndoRecord] = []

    # -- volume -----------------------------------------------------------------------------------
    def set_volume(self, array_kji, spacing=(1.0, 1.0, 1.0)) -> None:
        """Start on a new volume (clears prompts, result and undo). The array is used, not copied."""
        array = check_volume_array(array_kji)
        spacing = _check_spacing(spacing)
        volume = VolumeContext(array, spacing, intensity_window(array))
        self.engine.set_volume(volume)
        self._volume = volume
        self._result = np.zeros(array.shape, np.uint8)
        self._slices, self._prompts, self._undo = {}, [], []

    def _require_volume(self) -> VolumeContext:
        if self._volume is None:
            raise InputError("no volume: call set_volume(array, spacing) first")
        return self._volume

    @property
    def shape(self) -> tuple:
        return self._require_volume().array.shape

    @property
    def result(self) -> np.ndarray:
        """The current mask, uint8 (K, J, I); read-only view, always the current state."""
        self._require_volume()
        # over a read-only buffer: unlike a view with the flag cleared, it cannot be made writeable again
        return np.frombuffer(memoryview(self._result).toreadonly(), np.uint8).reshape(self._result.shape)

    @property
    def prompts(self) -> tuple:
        """Every prompt so far, in order (Click, Box, TextPrompt)."""
        return tuple(self._prompts)

    @property
    def can_propagate(self) -> bool:
        return "propagate" in self.engine.capabilities

    @property
    def can_fuse(self) -> bool:
        """True when the engine can fuse rounds: its bundle has a ``fusion`` entry (the direction check, and the
        quality network where the bundle has one; see :attr:`fusion`)."""
        return "fuse" in self.engine.capabilities

    @property
    def history_bytes(self) -> int:
        """Memory the undo history holds (bytes): the result blocks it restores and the engine's state of each
        prompted slice before the prompt (the 2D network's fed-back probabilities); the prompts aside."""
        return sum((record.old_values.nbytes if record.old_values is not None else 0)
                   + _array_bytes(record.old_slice_state.engine_state if record.old_slice_state else None)
                   for record in self._undo)

    @property
    def rounds(self) -> int:
        """Propagations so far (each one closes a round: the prompts since the last one, then propagate)."""
        return sum(1 for record in self._undo if record.kind == "propagate")

    # -- prompts ----------------------------------------------------------------------------------
    def add_click(self, point, positive: bool = True, axis: int = 0) -> SliceUpdate:
        """A click at voxel (k, j, i) in a view normal to ``axis``; updates that slice at once."""
        click = make_click(point, positive, axis, self.shape)
        self._require_capability("click")
        key = (click.axis, click.slice_index)
        state = self._slices.get(key, _SliceState()).copy()
        state.clicks.append(click)
        return self._predict_and_commit(key, state, click)

    def add_box(self, slice_index, corner_a, corner_b, axis: int = 0) -> SliceUpdate:
        """A box with inclusive corners (any order) on slice ``slice_index`` normal to ``axis``.

        A new box on a slice replaces that slice's previous box; its clicks are kept.
        """
        box = make_box(slice_index, corner_a, corner_b, axis, self.shape)
        self._require_capability("box")
        key = (box.axis, box.slice_index)
        state = self._slices.get(key, _SliceState()).copy()
        state.box = box
        return self._predict_and_commit(key, state, box)

    def add_text(self, text, slice_index, axis: int = 0) -> SliceUpdate:
        """A structure name ("left kidney") on a slice, alone or with clicks / a box there."""
        axis = check_axis(axis)
        index = check_slice_index(slice_index, axis, self.shape)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"text must be a non-empty structure name, got {text!r}")
        self._require_capability("text")
        self.engine.resolve_text(text.strip())   # unknown names fail here, with the closest known ones
        prompt = TextPrompt(text.strip(), axis, index)
        state = self._slices.get((axis, index), _SliceState()).copy()
        state.text = prompt
        return self._predict_and_commit((axis, index), state, prompt)

    def _require_capability(self, what: str) -> None:
        if what not in self.engine.capabilities:
            raise NotImplementedError(
                f"engine '{self.engine.name}' does not take {what} prompts "
                f"(it takes: {', '.join(sorted(self.engine.capabilities - {'propagate', 'fuse'})) or 'none'})")

    def _slice_request(self, key, state: _SliceState, prompt=None) -> SliceRequest:
        volume = self._volume
        axis, index = key
        rows, cols = plane_axes(axis)
        raw = slice_of(volume.array, axis, index)
        previous = slice_of(self._result, axis, index).astype(bool)
        return SliceRequest(
            axis=axis, index=index, image=apply_window(raw, volume.window), raw=raw,
            spacing=(volume.spacing[rows], volume.spacing[cols]),
            clicks=[(*c.in_plane, c.positive) for c in state.clicks],
            box=state.box.as_rc if state.box else None,
            text=state.text.text if state.text else None,
            previous_mask=previous,
            previous_state=state.engine_state,
            neighbour_mask=None if previous.any() else self._nearest_mask(axis, index),
            window_kind=volume.window_kind, new_prompt=_prompt_kind(prompt))

    def _nearest_mask(self, axis: int, index: int):
        """The mask of the nearest slice along ``axis`` (within NEIGHBOUR_MM, at least one slice) that has one,
        or None: what an engine may take as a prior for a slice propagation did not reach."""
        # at most the volume's length: a tiny spacing must not make this loop long
        reach = max(1, min(self.shape[axis], round(NEIGHBOUR_MM / float(self._volume.spacing[axis]))))
        for distance in range(1, reach + 1):
            for other in (index - distance, index + distance):
                if 0 <= other < self.shape[axis]:
                    mask = slice_of(self._result, axis, other)
                    if mask.any():
                        return mask.astype(bool)
        return None

    def _attached_engine(self) -> Engine:
        """The engine, pointed at this session's volume: one engine may serve several sessions (two sessions on
        one model, the Slicer logic binding a new volume), and it holds the volume it works on."""
        volume = self._require_volume()
        if getattr(self.engine, "volume", None) is not volume:
            self.engine.set_volume(volume)
        return self.engine

    def _predict_and_commit(self, key, state: _SliceState, prompt) -> SliceUpdate:
        request = self._slice_request(key, state, prompt)
        prediction = self._attached_engine().predict_slice(request)
        mask = np.asarray(prediction.mask).astype(np.uint8)
        if mask.shape != request.raw.shape:
            raise RuntimeError(f"engine '{self.engine.name}' returned a mask of shape {mask.shape} "
                               f"for a slice of shape {request.raw.shape}")
        axis, index = key
        target = slice_of(self._result, axis, index)
        old = target.copy()
        region, changed = _changed_region(old[None], mask[None])
        self._undo.append(_UndoRecord("prompt", slice_region(axis, index), _Saved.of(np.expand_dims(old, axis)),
                                      key, self._slices.get(key), len(self._prompts)))
        target[...] = mask
        state.engine_state = prediction.state
        self._slices[key] = state
        self._prompts.append(prompt)
        if region is not None:  # (1, rows, cols) slice-local -> volume indices
            full = list(slice_region(axis, index))
            full[plane_axes(axis)[0]], full[plane_axes(axis)[1]] = region[1], region[2]
            region = tuple(full)
        return SliceUpdate(axis, index, target.copy(), region, changed)

    # -- propagation ------------------------------------------------------------------------------
    def propagation_request(self) -> PropagationRequest:
        """What :meth:`propagate` hands the engine: every prompt and the prompted slices' current masks."""
        self._require_volume()
        if not self._slices:
            raise InputError("nothing to propagate: add a click or a box first")
        new_prompts = tuple(self._prompts[self._round_start():])
        new_prompted = tuple(dict.fromkeys((p.axis, p.slice_index) for p in new_prompts))
        return PropagationRequest(
            clicks=[p for p in self._prompts if isinstance(p, Click)],
            boxes=[state.box for state in self._slices.values() if state.box is not None],
            texts=[state.text for state in self._slices.values() if state.text is not None],
            prompted={key: slice_of(self._result, *key).astype(bool) for key in self._slices},
            result=self.result,
            new_prompted=new_prompted, new_prompts=new_prompts,
            new_empty=self._empty_at_round_start(new_prompted))

    def _empty_at_round_start(self, new_prompted) -> tuple:
        """Of ``new_prompted`` (this round's slices, in order), those that had no mask before their first prompt
        of the round (each prompt's undo record holds its slice as it was)."""
        first = {}
        for record in reversed(self._undo):
            if record.kind == "propagate":
                break
            first[record.slice_key] = record   # walking back: the round's earliest prompt on the slice stays
        return tuple(key for key in new_prompted if not first[key].old_values.values().any())

    def _round_start(self) -> int:
        """How many prompts came before this round (the prompt count at the last propagation)."""
        for record in reversed(self._undo):
            if record.kind == "propagate":
                return record.prompt_count
        return 0

    def propagate(self, progress=None, cancelled=None) -> PropagationUpdate:
        """Carry the prompted slices' masks through the volume in both directions: one round.

        From the second round on, with :attr:`fusion` on and an engine that can fuse, the new result is
        merged with the previous one slice by slice (multi-round fusion); the prompted slices keep the
        user's latest mask. ``progress(done, total)`` is called as slices finish; ``cancelled()`` returning
        True stops the work with CancelledError and leaves the result as it was. The last call of
        ``progress`` has ``done == total``, even where there was nothing to sweep.

        Propagating again with no prompt since the last round (and the same :attr:`fusion`) changes nothing
        and is no new round: re-running it would drop the last round's fusion, which needs the round's
        prompts to tell its direction.
        """
        request = self.propagation_request()
        last = next((r for r in reversed(self._undo) if r.kind == "propagate"), None)
        if last is not None and last.prompt_count == len(self._prompts) and last.fusion == self.fusion:
            if progress is not None:
                progress(1, 1)
            return PropagationUpdate(None, 0, None)
        reported = []

        def report_progress(done, total):
            reported[:] = [(done, total)]
            progress(done, total)

        engine = self._attached_engine()
        new = np.asarray(engine.propagate(request, progress=report_progress if progress else None,
                                          cancelled=cancelled), np.uint8)
        if new.shape != self._result.shape:
            raise RuntimeError(f"engine '{engine.name}' returned a result of shape {new.shape}, "
                               f"expected {self._result.shape}")
        report = None
        fused = bool(self.fusion and self.can_fuse and self.rounds > 0)
        if fused:
            new = np.asarray(engine.fuse_rounds(request, self._result, new, cancelled=cancelled), np.uint8)
            report = dict(getattr(engine, "last_fusion", {}) or {})
        region, changed = _changed_region(self._result, new)
        # a record even when nothing changed: it marks where the round ends (undo_round)
        self._undo.append(_UndoRecord("propagate", region,
                                      _Saved.of(self._result[region]) if region is not None else None,
                                      prompt_count=len(self._prompts), fusion=self.fusion))
        if region is not None:
            self._result[region] = new[region]
        if progress is not None and (not reported or reported[0][0] != reported[0][1]):
            total = reported[0][1] if reported and reported[0][1] else 1
            progress(total, total)
        return PropagationUpdate(region, changed, report)

    # -- history ----------------------------------------------------------------------------------
    def undo(self) -> bool:
        """Revert the last prompt or propagation; False when there is nothing to undo.

        A propagation that changed nothing is reverted together with the step before it, so every undo
        that returns True visibly steps back."""
        if not self._undo:
            return False
        while self._undo:
            record = self._pop_undo()
            if not (record.kind == "propagate" and record.region is None):
                break
        return True

    def undo_round(self) -> bool:
        """Revert a whole round: the last propagation and the prompts that led to it (or, before the round
        is propagated, its prompts so far), back to the previous round's result. False when nothing to undo."""
        if not self._undo:
            return False
        if self._undo[-1].kind == "propagate":
            self._pop_undo()
        while self._undo and self._undo[-1].kind == "prompt":
            self._pop_undo()
        return True

    def _pop_undo(self) -> _UndoRecord:
        record = self._undo.pop()
        if record.region is not None:
            self._result[record.region] = record.old_values.values()
        if record.kind == "prompt":
            if record.old_slice_state is None:
                self._slices.pop(record.slice_key, None)
            else:
                self._slices[record.slice_key] = record.old_slice_state
            del self._prompts[record.prompt_count:]
        return record

    def reset(self) -> None:
        """Forget every prompt and the result; keep the volume."""
        self._require_volume()
        self._result[...] = 0
        self._slices, self._prompts, self._undo = {}, [], []
