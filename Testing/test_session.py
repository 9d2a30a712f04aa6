"""Tests for InteractiveSession (DESIGN.md "The session"): prompts, the changed region, undo, reset,
propagation, cancellation, and rejection of bad input without touching the session's state.

Most tests drive the real Grow from Seeds engine (Slicer's vtkImageGrowCutSegment, slicer-core wheel)
on a synthetic 12 x 64 x 64 CT-like volume with a bright sphere (conftest.py).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from IMISSegmentLib import CancelledError, InputError, InteractiveSession, SliceUpdate
from IMISSegmentLib.engines.base import Engine, SliceResult
from IMISSegmentLib.prompts import Box, Click

from conftest import SYNTH_CENTRE, SYNTH_SHAPE

K0, J0, I0 = SYNTH_CENTRE


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _bbox(mask: np.ndarray) -> tuple:
    where = np.argwhere(mask)
    lo, hi = where.min(0), where.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# ---------------------------------------------------------------- prompts on one slice

def test_click_updates_only_its_slice_and_reports_the_changed_region(growcut_session, synthetic_ct):
    _, sphere, _ = synthetic_ct
    before = growcut_session.result.copy()
    update = growcut_session.add_click((K0, J0, I0), positive=True, axis=0)
    after = growcut_session.result
    assert isinstance(update, SliceUpdate)
    assert (update.axis, update.index) == (0, K0)
    changed = before != after
    assert changed.any()
    assert not np.delete(changed, K0, axis=0).any(), "voxels outside the clicked slice changed"
    assert update.region == _bbox(changed)
    assert update.changed_voxels == np.count_nonzero(changed)
    np.testing.assert_array_equal(update.mask, after[K0])
    assert update.mask.dtype == np.uint8
    # GrowCut from one click at the centre of a bright disk finds that disk
    assert _dice(after[K0], sphere[K0]) > 0.9


@pytest.mark.parametrize("axis", [1, 2])
def test_click_in_other_views_updates_that_plane(growcut_session, synthetic_ct, axis):
    _, sphere, _ = synthetic_ct
    point = (K0, J0, I0)
    update = growcut_session.add_click(point, positive=True, axis=axis)
    result = growcut_session.result
    assert (update.axis, update.index) == (axis, point[axis])
    plane = np.take(result, point[axis], axis=axis)
    assert plane.any()
    assert not np.delete(result, point[axis], axis=axis).any(), "voxels outside the clicked plane changed"
    np.testing.assert_array_equal(update.mask, plane)
    assert update.region[axis] == slice(point[axis], point[axis] + 1)
    assert update.region == _bbox(result > 0)
    assert _dice(plane, np.take(sphere, point[axis], axis=axis)) > 0.8


def test_click_that_changes_nothing_reports_no_region(growcut_session):
    update = growcut_session.add_click((0, 40, 5), positive=False)  # background click on an empty slice
    assert update.region is None and update.changed_voxels == 0
    assert not growcut_session.result.any()
    assert len(growcut_session.prompts) == 1


def test_prompts_are_listed_in_order(growcut_session):
    growcut_session.add_click((K0, J0, I0), positive=True)
    growcut_session.add_box(K0 + 1, (44, 45), (19, 16), axis=0)
    growcut_session.add_click((K0, J0, 60), positive=False, axis=2)
    prompts = growcut_session.prompts
    assert isinstance(prompts, tuple)
    assert prompts[0] == Click((K0, J0, I0), True, 0)
    assert prompts[1] == Box(0, K0 + 1, (19, 16), (44, 45))
    assert prompts[2] == Click((K0, J0, 60), False, 2)
    assert len(prompts) == 3


def test_result_is_read_only_and_current(growcut_session):
    result = growcut_session.result
    assert result.dtype == np.uint8 and result.shape == SYNTH_SHAPE
    with pytest.raises(ValueError):
        result[0, 0, 0] = 1
    growcut_session.add_click((K0, J0, I0))
    assert result[K0, J0, I0] == 1, "result is documented as a view of the current state"
    with pytest.raises(ValueError):
        growcut_session.result[K0] = 0
    assert growcut_session.result[K0, J0, I0] == 1


def test_inverted_box_corners_give_the_same_box(growcut_session):
    corners = [((18, 16), (45, 44)), ((45, 44), (18, 16)), ((18, 44), (45, 16)), ((45, 16), (18, 44))]
    masks = []
    for a, b in corners:
        growcut_session.reset()
        growcut_session.add_box(K0, a, b)
        assert growcut_session.prompts == (Box(0, K0, (18, 16), (45, 44)),)
        masks.append(growcut_session.result.copy())
    assert masks[0][K0].any()
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])


# ---------------------------------------------------------------- undo / reset

def test_undo_after_clicks_restores_each_previous_state_exactly(growcut_session):
    s = growcut_session
    state0 = s.result.copy()
    s.add_click((K0, J0, I0), positive=True)
    state1 = s.result.copy()
    s.add_click((K0, J0, I0 + 8), positive=False)   # a negative click inside the disk cuts it
    state2 = s.result.copy()
    assert not np.array_equal(state1, state2), "the second click must change the mask for this test to mean anything"

    assert s.undo() is True
    np.testing.assert_array_equal(s.result, state1)
    assert s.prompts == (Click((K0, J0, I0), True, 0),)
    # the slice's prompt state was restored too: the same second click gives the same mask again
    s.add_click((K0, J0, I0 + 8), positive=False)
    np.testing.assert_array_equal(s.result, state2)

    assert s.undo() and s.undo()
    np.testing.assert_array_equal(s.result, state0)
    assert s.prompts == ()
    assert s.undo() is False


def test_undo_of_click_on_another_slice_keeps_the_first(growcut_session):
    s = growcut_session
    s.add_click((K0, J0, I0))
    state1 = s.result.copy()
    s.add_click((K0 + 2, J0, I0))
    assert s.result[K0 + 2].any()
    s.undo()
    np.testing.assert_array_equal(s.result, state1)


def test_undo_of_a_box_that_replaced_a_box(growcut_session):
    s = growcut_session
    s.add_box(K0, (18, 16), (45, 44))
    state1 = s.result.copy()
    s.add_box(K0, (30, 28), (45, 44))      # a smaller box on the same slice replaces the first
    state2 = s.result.copy()
    assert not np.array_equal(state1, state2)
    assert s.undo()
    np.testing.assert_array_equal(s.result, state1)
    assert s.prompts == (Box(0, K0, (18, 16), (45, 44)),)
    # the slice's box is the first one again: propagation grows from it, as it does without the second box
    s.propagate()
    from_undo = s.result.copy()
    s.reset()
    s.add_box(K0, (18, 16), (45, 44))
    s.propagate()
    np.testing.assert_array_equal(from_undo, s.result)


def test_undo_on_a_fresh_session_returns_false(growcut_session):
    assert growcut_session.undo() is False
    assert not growcut_session.result.any()


def test_reset_clears_result_prompts_and_history_but_keeps_the_volume(growcut_session):
    s = growcut_session
    s.add_click((K0, J0, I0))
    s.propagate()
    assert s.result.any()
    s.reset()
    assert not s.result.any()
    assert s.prompts == ()
    assert s.undo() is False
    assert s.shape == SYNTH_SHAPE
    s.add_click((K0, J0, I0))
    assert s.result[K0].any()


# ---------------------------------------------------------------- propagation

def test_propagate_fills_other_slices_and_undo_reverts_it_exactly(growcut_session, synthetic_ct):
    _, sphere, _ = synthetic_ct
    s = growcut_session
    s.add_click((K0, J0, I0))
    before = s.result.copy()
    calls = []
    update = s.propagate(progress=lambda done, total: calls.append((done, total)))
    after = s.result.copy()
    changed = before != after
    assert np.count_nonzero(after.any(axis=(1, 2))) > 3, "propagation must reach other slices"
    assert update.region == _bbox(changed)
    assert update.changed_voxels == np.count_nonzero(changed)
    assert _dice(after, sphere) > 0.85
    assert calls and calls[-1][0] == calls[-1][1]
    # the history keeps the changed region (and the clicked slice) as bits: an eighth of a byte per voxel
    region_voxels = int(np.prod([r.stop - r.start for r in update.region]))
    slice_voxels = before.shape[1] * before.shape[2]
    assert s.history_bytes == -(-region_voxels // 8) + -(-slice_voxels // 8)
    prompts = s.prompts
    assert s.undo() is True
    np.testing.assert_array_equal(s.result, before)
    assert s.prompts == prompts, "undoing a propagation keeps the prompts"
    assert s.undo() is True
    assert not s.result.any()


def test_undo_steps_over_a_propagation_that_changed_nothing(growcut_session):
    """A round whose prompt and propagation change nothing (a negative click in empty background far from the
    sphere): undo takes back the empty propagation together with the click, so undo visibly steps back."""
    s = growcut_session
    s.add_click((K0, J0, I0))
    s.propagate()
    once, prompts = s.result.copy(), s.prompts
    assert s.add_click((0, 2, 2), positive=False).changed_voxels == 0
    assert s.propagate().changed_voxels == 0 and s.rounds == 2
    assert s.undo() and s.rounds == 1 and s.prompts == prompts
    np.testing.assert_array_equal(s.result, once)
    assert s.undo() and not s.result[K0 + 3].any()      # then the first propagation


def test_two_sessions_on_one_engine_each_work_on_their_own_volume(growcut_engine, synthetic_ct):
    """The engine holds the volume it works on; a session points it back at its own before each step."""
    volume, sphere, spacing = synthetic_ct
    first, second = InteractiveSession(growcut_engine), InteractiveSession(growcut_engine)
    first.set_volume(volume, spacing)
    second.set_volume(np.roll(volume, 16, axis=2), spacing)    # another volume of the same shape
    first.add_click((K0, J0, I0))
    first.propagate()
    alone = InteractiveSession(type(growcut_engine)())            # the same, on an engine of its own
    alone.set_volume(volume, spacing)
    alone.add_click((K0, J0, I0))
    alone.propagate()
    second.add_click((K0, J0, I0 + 16))                           # the engine now holds the second volume
    first.add_click((K0 + 2, J0, I0))
    alone.add_click((K0 + 2, J0, I0))
    first.propagate()
    alone.propagate()
    np.testing.assert_array_equal(first.result, alone.result)
    assert _dice(first.result, sphere) > 0.85


def test_the_result_cannot_be_made_writeable(growcut_session):
    s = growcut_session
    s.add_click((K0, J0, I0))
    view = s.result
    with pytest.raises(ValueError):
        view.flags.writeable = True
    with pytest.raises(ValueError):
        view[K0, J0, I0] = 0
    assert s.result[K0, J0, I0] == 1


def test_progress_ends_at_its_total_even_with_nothing_to_sweep():
    """A one-slice volume has nothing to propagate into (the shipped model's sweeps report nothing); the caller
    still hears that the work is done."""
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib import load_model
    s = InteractiveSession(load_model())
    volume = np.zeros((1, 32, 32), np.float32)
    volume[0, 8:24, 8:24] = 300.0
    s.set_volume(volume)
    s.add_click((0, 16, 16))
    calls = []
    s.propagate(progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] > 0


def test_cancelled_propagation_raises_and_leaves_the_result(growcut_session):
    s = growcut_session
    s.add_click((K0, J0, I0))
    before, prompts = s.result.copy(), s.prompts
    with pytest.raises(CancelledError):
        s.propagate(cancelled=lambda: True)
    np.testing.assert_array_equal(s.result, before)
    assert s.prompts == prompts
    # no propagation was recorded: one undo takes back the click itself
    assert s.undo() is True
    assert not s.result.any()
    assert s.undo() is False


# ---------------------------------------------------------------- bad input

def _bad_volume_calls():
    base = np.zeros(SYNTH_SHAPE, np.float32)
    base[0, 0, 0] = 1.0
    with_nan = base.copy()
    with_nan[1, 2, 3] = np.nan
    with_nan[2, 2, 3] = np.nan
    with_nan[3, 2, 3] = np.nan
    with_inf = base.copy()
    with_inf[1, 2, 3] = np.inf
    return {
        "2d array": (lambda s: s.set_volume(np.arange(64 * 64.0).reshape(64, 64)), re.escape("(64, 64)")),
        "4d array": (lambda s: s.set_volume(np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)), re.escape("(2, 3, 4, 5)")),
        "nan voxels": (lambda s: s.set_volume(with_nan), r"\b3 NaN"),
        "inf voxels": (lambda s: s.set_volume(with_inf), r"\b1 NaN or inf"),
        "empty": (lambda s: s.set_volume(np.zeros((0, 64, 64), np.float32)), re.escape("(0, 64, 64)")),
        "constant": (lambda s: s.set_volume(np.full((4, 8, 8), 7.5, np.float32)), r"constant.*7\.5"),
        "beyond float32": (lambda s: s.set_volume(base.astype(np.float64) * 1e39), r"beyond float32"),
        "constant in float32": (lambda s: s.set_volume(base.astype(np.float64) * 1e-300), r"constant in float32"),
        "spacing zero": (lambda s: s.set_volume(base, spacing=(0, 1, 1)), re.escape("(0, 1, 1)")),
        "spacing negative": (lambda s: s.set_volume(base, spacing=(3, -1, 1)), re.escape("(3, -1, 1)")),
        "spacing two values": (lambda s: s.set_volume(base, spacing=(1.0, 2.0)), re.escape("(1.0, 2.0)")),
        "spacing not numbers": (lambda s: s.set_volume(base, spacing=("a", 1, 1)), re.escape("('a', 1, 1)")),
    }


_BAD_PROMPTS = {
    "click k too large": (lambda s: s.add_click((12, 32, 30)), r"k=12\b"),
    "click j too large": (lambda s: s.add_click((6, 64, 30)), r"j=64\b"),
    "click i too large": (lambda s: s.add_click((6, 32, 64)), r"i=64\b"),
    "click k negative": (lambda s: s.add_click((-1, 32, 30)), r"k=-1\b"),
    "click i negative": (lambda s: s.add_click((6, 32, -3), axis=2), r"i=-3\b"),
    "click fractional": (lambda s: s.add_click((6, 32.5, 30)), r"32\.5"),
    "click not a number": (lambda s: s.add_click((6, "middle", 30)), r"middle"),
    "click None": (lambda s: s.add_click((6, None, 30)), r"None"),
    "click two values": (lambda s: s.add_click((6, 32)), re.escape("(6, 32)")),
    "click positive not bool": (lambda s: s.add_click((6, 32, 30), positive="yes"), r"'yes'"),
    "click axis 3": (lambda s: s.add_click((6, 32, 30), axis=3), r"got 3\b"),
    "box axis 3": (lambda s: s.add_box(6, (10, 10), (20, 20), axis=3), r"got 3\b"),
    "box corner outside": (lambda s: s.add_box(6, (10, 10), (70, 20)), re.escape("(70, 20)")),
    "box corner negative": (lambda s: s.add_box(6, (-2, 10), (20, 20)), re.escape("(-2, 10)")),
    "box corner outside axis 1": (lambda s: s.add_box(32, (12, 10), (5, 20), axis=1), re.escape("(12, 10)")),
    "box zero width": (lambda s: s.add_box(6, (20, 20), (40, 20)), re.escape("(20, 20) -> (40, 20)")),
    "box single voxel": (lambda s: s.add_box(6, (20, 20), (20, 20)), r"degenerate"),
    "box slice too large": (lambda s: s.add_box(12, (10, 10), (20, 20)), r"slice_index 12\b"),
    "box slice negative": (lambda s: s.add_box(-1, (10, 10), (20, 20)), r"slice_index -1\b"),
    "box slice too large axis 2": (lambda s: s.add_box(64, (1, 10), (5, 20), axis=2), r"slice_index 64\b"),
    "text slice too large": (lambda s: s.add_text("liver", slice_index=40), r"slice_index 40\b"),
}


@pytest.mark.parametrize("call,message", list(_bad_volume_calls().values()) + list(_BAD_PROMPTS.values()),
                         ids=list(_bad_volume_calls()) + list(_BAD_PROMPTS))
def test_bad_input_raises_input_error_and_changes_nothing(growcut_session, synthetic_ct, call, message):
    s = growcut_session
    s.add_click((K0, J0, I0))
    result, prompts = s.result.copy(), s.prompts
    with pytest.raises(InputError, match=message):
        call(s)
    np.testing.assert_array_equal(s.result, result)
    assert s.prompts == prompts
    assert s.shape == SYNTH_SHAPE
    # the session still works on its own volume (the engine's volume was not replaced either)
    s.propagate()
    assert _dice(s.result, synthetic_ct[1]) > 0.85


def test_prompts_before_set_volume_are_rejected(growcut_engine):
    s = InteractiveSession(growcut_engine)
    for call in (lambda: s.add_click((1, 2, 3)), lambda: s.add_box(1, (1, 1), (4, 4)),
                 lambda: s.add_text("liver", 1), lambda: s.propagate(), lambda: s.result, lambda: s.reset()):
        with pytest.raises(InputError, match="set_volume"):
            call()
    assert s.prompts == ()
    assert s.undo() is False


def test_propagate_without_prompts_is_rejected(growcut_session):
    with pytest.raises(InputError, match="nothing to propagate"):
        growcut_session.propagate()
    growcut_session.add_click((K0, J0, I0))
    growcut_session.undo()
    with pytest.raises(InputError, match="nothing to propagate"):
        growcut_session.propagate()
    assert not growcut_session.result.any()


def test_text_prompt_on_growcut_is_not_implemented(growcut_session):
    growcut_session.add_click((K0, J0, I0))
    result, prompts = growcut_session.result.copy(), growcut_session.prompts
    with pytest.raises(NotImplementedError, match=r"growcut.*text") as info:
        growcut_session.add_text("liver", slice_index=K0)
    assert "box" in str(info.value) and "click" in str(info.value)   # says what it does take
    np.testing.assert_array_equal(growcut_session.result, result)
    assert growcut_session.prompts == prompts


def test_session_rejects_a_model_that_is_not_an_engine():
    with pytest.raises(InputError, match="dict"):
        InteractiveSession({"not": "an engine"})


# ---------------------------------------------------------------- failing engines
# _ScriptedEngine is a test double of the engine protocol (engines/base.py): it segments a fixed square
# around each positive click, records the requests it is given, and raises or misbehaves on demand, so
# the session's own bookkeeping can be checked against an engine failure.

class _ScriptedEngine(Engine):
    name = "scripted"
    capabilities = frozenset({"click", "box", "propagate"})

    def __init__(self):
        super().__init__()
        self.fail = None           # None, "raise" or "shape"
        self.requests = []

    def predict_slice(self, request):
        self.requests.append(request)
        if self.fail == "raise":
            raise RuntimeError("engine exploded")
        if self.fail == "shape":
            return SliceResult(np.ones((3, 3), bool))
        mask = np.zeros(request.raw.shape, bool)
        for r, c, positive in request.clicks:
            mask[max(0, r - 2):r + 3, max(0, c - 2):c + 3] = positive
        return SliceResult(mask, state=len(request.clicks))

    def propagate(self, request, progress=None, cancelled=None):
        if self.fail == "raise":
            raise RuntimeError("propagation exploded")
        return np.ones_like(request.result)


@pytest.mark.parametrize("fail,error", [("raise", "engine exploded"), ("shape", r"shape \(3, 3\)")])
def test_failing_engine_leaves_the_session_unchanged(synthetic_ct, fail, error):
    engine = _ScriptedEngine()
    s = InteractiveSession(engine)
    s.set_volume(synthetic_ct[0], spacing=synthetic_ct[2])
    s.add_click((K0, J0, I0))
    result, prompts = s.result.copy(), s.prompts
    engine.fail = fail
    with pytest.raises(RuntimeError, match=error):
        s.add_click((K0, 10, 10))
    with pytest.raises(RuntimeError, match=error):
        s.add_box(K0 + 1, (10, 10), (20, 20))
    np.testing.assert_array_equal(s.result, result)
    assert s.prompts == prompts
    engine.fail = None
    # the failed clicks left no trace in the slice's prompts: the next request holds only the good ones
    s.add_click((K0, 50, 50))
    assert engine.requests[-1].clicks == [(J0, I0, True), (50, 50, True)]
    assert engine.requests[-1].previous_state == 1
    assert s.undo() and s.undo()
    assert not s.result.any() and s.undo() is False


def test_failing_propagation_leaves_the_session_unchanged(synthetic_ct):
    engine = _ScriptedEngine()
    s = InteractiveSession(engine)
    s.set_volume(synthetic_ct[0], spacing=synthetic_ct[2])
    s.add_click((K0, J0, I0))
    result = s.result.copy()
    engine.fail = "raise"
    with pytest.raises(RuntimeError, match="propagation exploded"):
        s.propagate()
    np.testing.assert_array_equal(s.result, result)
    assert s.undo() is True and not s.result.any() and s.undo() is False


def test_slice_request_maps_prompts_into_the_plane(synthetic_ct):
    volume, _, spacing = synthetic_ct
    engine = _ScriptedEngine()
    s = InteractiveSession(engine)
    s.set_volume(volume, spacing=spacing)
    s.add_click((K0, J0, 20), positive=True, axis=1)      # j-slice: rows k, cols i
    request = engine.requests[-1]
    assert (request.axis, request.index) == (1, J0)
    assert request.clicks == [(K0, 20, True)]
    np.testing.assert_array_equal(request.raw, volume[:, J0, :])
    assert request.spacing == (spacing[0], spacing[2])
    assert request.image.dtype == np.float32 and 0.0 <= request.image.min() and request.image.max() <= 1.0
    before = s.result[:, :, 20].copy()                      # the i-slice through the first click
    assert before.any()
    s.add_box(20, (2, 40), (9, 20), axis=2)               # i-slice: rows k, cols j
    request = engine.requests[-1]
    assert request.box == (2, 20, 9, 40)
    np.testing.assert_array_equal(request.raw, volume[:, :, 20])
    assert request.spacing == (spacing[0], spacing[1])
    np.testing.assert_array_equal(request.previous_mask, before > 0)
