"""A box alone says the structure spans it (IMISSegmentLib/engines/box_fill.py): the check, and the engine
lowering its threshold on a real slice where the shipped network answers a box with a few pixels."""
import math
from dataclasses import replace

import numpy as np
import pytest

from helpers import EXAMPLE_DATA
from IMISSegmentLib.engines.box_fill import BoxFillSettings, box_fill_shift, box_span
from IMISSegmentLib.errors import InputError


def test_box_span_is_the_smaller_share_of_box_rows_and_columns_the_mask_reaches():
    mask = np.zeros((20, 30), bool)
    box = (2, 4, 11, 23)                      # 10 rows, 20 columns
    assert box_span(mask, box) == 0.0
    mask[2:12, 10] = True                     # every row, one column
    assert box_span(mask, box) == pytest.approx(1 / 20)
    mask[5, 4:24] = True                      # and every column
    assert box_span(mask, box) == 1.0
    outside = np.zeros_like(mask)
    outside[15:, :] = True                    # below the box: does not count
    assert box_span(outside, box) == 0.0


def test_the_shift_is_the_first_threshold_whose_answer_spans_the_box():
    rows, cols = np.mgrid[:40, :40]
    # logits fall off with the distance from (20, 20): each threshold gives a larger disk
    logits = 2.0 - 0.25 * np.hypot(rows - 20, cols - 20)
    box = (4, 4, 35, 35)
    mask_at = lambda offset: logits > offset  # noqa: E731
    settings = BoxFillSettings(enabled=True, min_span=0.5, thresholds=(0.4, 0.3, 0.2, 0.1))
    offset = box_fill_shift(mask_at, box, settings)
    assert offset < 0.0 and box_span(mask_at(offset), box) >= 0.5
    assert offset in [math.log(t / (1 - t)) for t in settings.thresholds]
    higher = [math.log(t / (1 - t)) for t in settings.thresholds if math.log(t / (1 - t)) > offset]
    assert all(box_span(mask_at(o), box) < 0.5 for o in [0.0] + higher)   # the first that spans it
    assert box_fill_shift(mask_at, (14, 14, 25, 25), settings) == 0.0       # a small box: spanned already
    assert box_fill_shift(lambda offset: np.zeros((40, 40), bool), box, settings) == 0.0   # none does: as it was
    assert box_fill_shift(mask_at, box, BoxFillSettings(enabled=False)) == 0.0


@pytest.mark.parametrize("values, message", [({"min_spann": 0.5}, "unknown box_fill"),
                                             ({"min_span": 0.0}, "min_span"),
                                             ({"thresholds": [0.3, 0.4]}, "descending"),
                                             ({"thresholds": [0.6]}, "thresholds")])
def test_box_fill_settings_reject_bad_values(values, message):
    with pytest.raises(InputError, match=message):
        BoxFillSettings.from_dict(values)


def test_the_engine_fills_a_box_its_network_answered_with_a_few_pixels():
    """The tight box around the liver of the abdominal CT. The previous shipped network answered it with a few
    pixels of bone at the box's top (the reason for the rule): with the check the answer spans the box, contains
    the plain answer and overlaps the liver far better. The pretrained network answers it well: the check then
    leaves the answer as it is. Either way the probabilities kept for the next click agree with the mask, and a
    box with a click is left to the network."""
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib.engines.base import SliceRequest
    from IMISSegmentLib.evaluation.datasets import discover_cases
    from IMISSegmentLib.evaluation.simulated_user import first_box
    from IMISSegmentLib.io.readers import read_image, read_label
    from IMISSegmentLib.models import default_bundle_dir, load_model
    from IMISSegmentLib.normalize import apply_window, intensity_window
    from IMISSegmentLib.prompts import make_box

    case = next(c for c in discover_cases(EXAMPLE_DATA) if c.name == "ct_abdomen")   # ships in Resources/Data
    volume = read_image(case.image)
    liver = read_label(case.label, volume) == next(v for v, n in case.names.items() if n == "liver")
    index, a, b = first_box(liver, 0)
    box = make_box(index, a, b, 0, liver.shape).as_rc
    raw = volume.array[index]
    request = SliceRequest(0, index, apply_window(raw, intensity_window(volume.array)), raw,
                           tuple(volume.spacing[1:]), box=box)
    engine = load_model(str(default_bundle_dir()), device="cpu")
    assert engine.box_fill.enabled                                         # the shipped bundle has it on
    results = {}
    for enabled in (False, True):
        engine.box_fill = BoxFillSettings(enabled=enabled)
        results[enabled] = engine.predict_slice(request)
    off, on = results[False].mask, results[True].mask
    dice = lambda m: 2 * (m & liver[index]).sum() / (m.sum() + liver[index].sum())  # noqa: E731
    if box_span(off, box) < 0.5:     # a network that answers with a few pixels: the rule fills the box
        assert box_span(on, box) >= 0.5 and not (off & ~on).any()
        assert dice(on) > dice(off) + 0.2
    else:                            # an answer that spans the box is left as it is
        assert np.array_equal(on, off) and dice(on) > 0.8
    state = results[True].state                     # whole-slice window here: the canvas maps onto the slice
    assert state.window is None
    kept = engine._geometry(raw.shape, request.spacing).to_slice(state.probabilities) > 0.5
    assert (kept == on).mean() > 0.99
    clicked = replace(request, clicks=[((box[0] + box[2]) // 2, (box[1] + box[3]) // 2, True)])
    answers = []
    for enabled in (False, True):
        engine.box_fill = BoxFillSettings(enabled=enabled)
        answers.append(engine.predict_slice(clicked).mask)
    assert np.array_equal(*answers)
