"""A positive click adds to a slice's mask and does not take most of it away
(IMISSegmentLib/engines/shrink_check.py): the rule, its settings, and the engine applying it to a real answer."""
from dataclasses import replace

import numpy as np
import pytest

from helpers import EXAMPLE_DATA
from IMISSegmentLib.engines.shrink_check import ShrinkCheckSettings, shrink_checked
from IMISSegmentLib.errors import InputError

ON = ShrinkCheckSettings(enabled=True, min_share=0.5)


def square(r0, r1, c0, c1, shape=(40, 40)):
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_a_positive_click_answered_with_under_min_share_of_the_mask_gets_the_mask_back():
    previous = square(5, 25, 5, 25)                 # 400 px
    blob = square(24, 30, 24, 30)                   # 36 px around a click just outside the mask
    joined = shrink_checked(blob, previous, [(10, 10, False), (27, 27, True)], "click", ON)
    assert np.array_equal(joined, previous | blob)
    # what is left as it was (the same object): a negative latest click, an answer of min_share or more, no or
    # an empty previous mask, a box drawn after the click (or a caller that does not say), the check off (the
    # default)
    assert shrink_checked(blob, previous, [(27, 27, True), (10, 10, False)], "click", ON) is blob
    enough = square(5, 25, 5, 15)                   # exactly half of the previous mask
    assert shrink_checked(enough, previous, [(27, 27, True)], "click", ON) is enough
    assert shrink_checked(blob, None, [(27, 27, True)], "click", ON) is blob
    assert shrink_checked(blob, np.zeros_like(previous), [(27, 27, True)], "click", ON) is blob
    assert shrink_checked(blob, previous, [], "click", ON) is blob
    assert shrink_checked(blob, previous, [(27, 27, True)], "box", ON) is blob
    assert shrink_checked(blob, previous, [(27, 27, True)], "", ON) is blob
    assert shrink_checked(blob, previous, [(27, 27, True)], "click", ShrinkCheckSettings()) is blob
    assert shrink_checked(blob, previous, [(27, 27, True)], "click", replace(ON, min_share=0.05)) is blob


@pytest.mark.parametrize("values, message", [({"min_shares": 0.5}, "unknown shrink_check"),
                                             ({"min_share": 0.0}, "min_share"),
                                             ({"min_share": 1.5}, "min_share"),
                                             ({"min_share": "half"}, "min_share"),
                                             ({"min_share": True}, "min_share"),
                                             ({"enabled": "false"}, "enabled must be true or false"),
                                             (True, "must be an object"),
                                             ([0.5], "must be an object")])
def test_shrink_check_settings_reject_bad_values(values, message):
    with pytest.raises(InputError, match=message):
        ShrinkCheckSettings.from_dict(values)


def test_the_engine_gives_the_mask_back_when_a_positive_click_takes_most_of_it():
    """A liver slice of the example CT whose mask spreads far past the liver, and a positive click inside the liver:
    the shipped network answers with the liver, far under half of that mask. With the check on, the answer joins
    the mask (nothing of it is lost; the fed-back probabilities are dropped, so the next prompt sees this mask);
    a negative click, a click on a slice whose only mask is its neighbour's, or a box, is answered as without it."""
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib.engines.base import SliceRequest
    from IMISSegmentLib.evaluation.datasets import discover_cases
    from IMISSegmentLib.io.readers import read_image, read_label
    from IMISSegmentLib.models import default_bundle_dir, load_model
    from IMISSegmentLib.normalize import apply_window, intensity_window

    case = next(c for c in discover_cases(EXAMPLE_DATA) if c.name == "ct_abdomen")   # ships in Resources/Data
    volume = read_image(case.image)
    liver = read_label(case.label, volume) == next(v for v, n in case.names.items() if n == "liver")
    index = int(np.argmax(liver.sum(axis=(1, 2))))
    truth = liver[index]
    rows, cols = np.nonzero(truth)
    click = (int(np.median(rows)), int(np.median(cols)))
    assert truth[click]
    spread = np.zeros_like(truth)
    spread[2:-2, 2:-2] = True                        # the mask covers nearly the whole slice
    raw = volume.array[index]
    request = SliceRequest(0, index, apply_window(raw, intensity_window(volume.array)), raw,
                           tuple(volume.spacing[1:]), clicks=[(click[0], click[1], True)], previous_mask=spread,
                           new_prompt="click")
    engine = load_model(str(default_bundle_dir()), device="cpu")
    answers = {}
    for enabled in (False, True):
        engine.shrink_check = replace(ON, enabled=enabled)
        answers[enabled] = engine.predict_slice(request)
    off, on = answers[False].mask, answers[True].mask
    assert 0 < off.sum() < 0.5 * spread.sum()       # the network took most of the mask away
    assert np.array_equal(on, off | spread) and answers[True].state.probabilities is None
    assert answers[False].state.probabilities is not None
    # the neighbour's mask fed as the prior (growth check "prior"): the slice itself had no mask to give back
    engine.growth_check = replace(engine.growth_check, neighbour="prior")
    box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
    for other in (replace(request, clicks=[(click[0], click[1], False)]),
                  replace(request, previous_mask=None, neighbour_mask=spread),
                  replace(request, box=box, new_prompt="box")):
        results = []
        for enabled in (False, True):
            engine.shrink_check = replace(ON, enabled=enabled)
            results.append(engine.predict_slice(other).mask)
        assert 0 < results[0].sum() < 0.5 * spread.sum()   # each one takes most of the spread mask away ...
        assert np.array_equal(*results)                    # ... and is left so


def test_the_session_says_which_prompt_a_request_answers(monkeypatch):
    """SliceRequest.new_prompt: "click", "box" or "text" from the session's add_click / add_box / add_text, so a
    box drawn after a positive click on the slice is not taken for that click."""
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib import InteractiveSession
    from IMISSegmentLib.io.readers import read_image
    from IMISSegmentLib.models import default_bundle_dir, load_model

    volume = read_image(EXAMPLE_DATA / "ct_abdomen" / "image.nii.gz")
    engine = load_model(str(default_bundle_dir()), device="cpu")
    seen = []
    real = engine.predict_slice
    monkeypatch.setattr(engine, "predict_slice", lambda request: seen.append(request.new_prompt) or real(request))
    session = InteractiveSession(engine)
    session.set_volume(volume.array, spacing=volume.spacing)
    k = volume.array.shape[0] // 2
    session.add_click((k, 50, 60), positive=True)
    session.add_box(k, (40, 45), (60, 75))
    session.add_text("liver", k)
    assert seen == ["click", "box", "text"]
