"""The 2D and 3D interaction protocols (DESIGN.md), run through an InteractiveSession.

2D: first prompt on the largest slice, then correction clicks from 2D error components on that slice,
up to ``max_interactions`` interactions in all (NoC needs 20). 3D: first prompt, propagate, then
``rounds`` correction rounds of one click (3D error component) + propagate. Each step records Dice, NSD
and the seconds the session took (prompt, plus propagation in 3D). When the prediction is already
perfect the remaining steps repeat the last values, as interactive benchmarks do.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..prompts import plane_axes, slice_of
from .metrics import dice, normalized_surface_dice
from .simulated_user import first_box, first_click, largest_slice, next_click

#: first prompts: a box, a click, the structure's name alone ("text"; its labels.json name), or the name and
#: then the first click ("text+click": step 0 is after both)
PROMPT_KINDS = ("box", "click", "text", "text+click")
TEXT_PROMPTS = ("text", "text+click")


DROP = 0.01   # a step "drops" when its Dice is more than this below the step before


@dataclass
class Step:
    step: int             # 0 = first prompt, then one per correction
    interactions: int     # prompts given so far (first prompt counts 1)
    action: str           # "box", "click+", "text", "text+click+", "click-"; "none": nothing left to correct
    dice: float
    nsd: float
    seconds: float
    fusion_seconds: float = 0.0   # 3D: of ``seconds``, the multi-round fusion's share

    def as_dict(self) -> dict:
        return asdict(self)


def supported(engine, protocol: str, prompt: str) -> str:
    """'' when the engine can run this protocol with this first prompt, else the reason it cannot."""
    needs = "text" if prompt in TEXT_PROMPTS else prompt
    if needs not in engine.capabilities:
        return f"{engine.name} takes no {needs} prompts"
    if protocol == "3d" and "propagate" not in engine.capabilities:
        return f"{engine.name} cannot propagate"
    return ""


def text_unsupported(engine, prompt: str, name: str) -> str:
    """'' when ``engine`` can take ``name`` as a text prompt (or ``prompt`` is no text prompt), else why not."""
    if prompt not in TEXT_PROMPTS:
        return ""
    try:
        engine.resolve_text(name)
    except (ValueError, NotImplementedError) as error:   # InputError is a ValueError
        return str(error).split(";")[0]
    return ""


def _first_prompt(session, reference, spacing, prompt: str, axis: int, name: str = "") -> str:
    if prompt == "box":
        index, a, b = first_box(reference, axis)
        session.add_box(index, a, b, axis=axis)
        return "box"
    if prompt in TEXT_PROMPTS:
        session.add_text(name, largest_slice(reference, axis), axis=axis)
        if prompt == "text":
            return "text"
    session.add_click(first_click(reference, spacing, axis), positive=True, axis=axis)
    return "text+click+" if prompt == "text+click" else "click+"


def run_2d(session, reference: np.ndarray, spacing, prompt: str, max_interactions: int = 20,
           axis: int = 0, tolerance_mm: float = 2.0, name: str = ""):
    """2D protocol on the largest slice of ``reference`` normal to ``axis``; returns (steps, final 3D mask).
    ``name``: the structure's name, for the text prompts."""
    session.reset()
    index = largest_slice(reference, axis)
    rows, cols = plane_axes(axis)
    plane_spacing = (spacing[rows], spacing[cols])
    truth = slice_of(reference, axis, index)

    def measure(step, action, seconds):
        predicted = slice_of(session.result, axis, index) > 0
        return Step(step, step + 1, action, dice(predicted, truth),
                    normalized_surface_dice(predicted, truth, plane_spacing, tolerance_mm), seconds)

    start = time.perf_counter()
    action = _first_prompt(session, reference, spacing, prompt, axis, name)
    steps = [measure(0, action, time.perf_counter() - start)]
    can_click = "click" in session.engine.capabilities
    for step in range(1, max_interactions if can_click else 1):
        click = next_click(slice_of(session.result, axis, index) > 0, truth, plane_spacing)
        if click is None:
            steps.append(Step(step, step + 1, "none", steps[-1].dice, steps[-1].nsd, 0.0))
            continue
        point = [0, 0, 0]
        point[axis], point[rows], point[cols] = index, click.point[0], click.point[1]
        start = time.perf_counter()
        session.add_click(tuple(point), positive=click.positive, axis=axis)
        steps.append(measure(step, "click+" if click.positive else "click-", time.perf_counter() - start))
    return steps, session.result.copy()


def run_3d(session, reference: np.ndarray, spacing, prompt: str, rounds: int = 5,
           axis: int = 0, tolerance_mm: float = 2.0, progress=None, cancelled=None, name: str = "",
           on_round=None):
    """3D protocol: first prompt + propagate, then ``rounds`` of click + propagate; (steps, final mask).
    ``on_round(click, before, answered, after)``, if given, sees each correction round: the simulated click,
    the result before it, the clicked slice's mask right after the click, and the result after propagation."""
    session.reset()

    def measure(step, action, seconds):
        predicted = session.result > 0
        return Step(step, step + 1, action, dice(predicted, reference),
                    normalized_surface_dice(predicted, reference, spacing, tolerance_mm), seconds)

    start = time.perf_counter()
    action = _first_prompt(session, reference, spacing, prompt, axis, name)
    session.propagate(progress=progress, cancelled=cancelled)
    steps = [measure(0, action, time.perf_counter() - start)]
    can_click = "click" in session.engine.capabilities
    for step in range(1, rounds + 1 if can_click else 1):
        click = next_click(session.result > 0, reference, spacing)
        if click is None:
            steps.append(Step(step, step + 1, "none", steps[-1].dice, steps[-1].nsd, 0.0))
            continue
        before = session.result.copy() if on_round is not None else None
        start = time.perf_counter()
        answer = session.add_click(click.point, positive=click.positive, axis=axis)
        update = session.propagate(progress=progress, cancelled=cancelled)
        steps.append(measure(step, "click+" if click.positive else "click-", time.perf_counter() - start))
        steps[-1].fusion_seconds = float((update.fusion or {}).get("seconds", 0.0))
        if on_round is not None:
            on_round(click, before, answer.mask, session.result)
    return steps, session.result.copy()


def round_record(click, before, answered, after, reference, axis: int = 0) -> dict:
    """One correction round of the 3D protocol (``run_3d``'s ``on_round``) against the reference: the click,
    the clicked slice's area and wrong pixels before and right after the click, the Dice before and after the
    round, and the Dice had only the clicked slice or only the other slices changed."""
    index = int(click.point[axis])
    before, after = before > 0, after > 0
    truth, old = slice_of(reference, axis, index), slice_of(before, axis, index)
    only_slice, only_others = before.copy(), after.copy()
    slice_of(only_slice, axis, index)[...] = slice_of(after, axis, index)
    slice_of(only_others, axis, index)[...] = old
    return {"positive": bool(click.positive), "slice": index, "reference_px": int(np.count_nonzero(truth)),
            "mask_px": int(np.count_nonzero(old)), "answer_px": int(np.count_nonzero(answered)),
            "wrong_before": int(np.count_nonzero(old ^ truth)),
            "wrong_after": int(np.count_nonzero((np.asarray(answered) > 0) ^ truth)),
            "dice_before": dice(before, reference), "dice_after": dice(after, reference),
            "dice_slice_only": dice(only_slice, reference), "dice_others_only": dice(only_others, reference)}


def clicked_slice_drops(rounds, tolerance: float = DROP) -> int:
    """Of the rounds (:func:`round_record`) whose Dice fell by more than ``tolerance``, those whose clicked slice
    got worse with the click: drops that multi-round fusion, which keeps the user's slices, cannot prevent."""
    return sum(1 for r in rounds
               if r["dice_after"] < r["dice_before"] - tolerance and r["wrong_after"] > r["wrong_before"])
