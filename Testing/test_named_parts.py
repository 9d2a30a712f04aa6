"""IMISSegmentLib.engines.named_parts: which parts of a name's answer the clicks confirmed or rejected."""
import numpy as np

from IMISSegmentLib.engines.named_parts import NamedParts, confirmable
from IMISSegmentLib.text import Vocabulary


def _answer():
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True      # part A
    mask[10:16, 10:16] = True  # part B
    return mask


def test_clicks_confirm_and_reject_parts_and_are_counted_once():
    named = NamedParts.of(_answer())
    assert named.kept() is None and named.clicks_seen == 0
    clicks = [(3, 3, True)]
    named = named.after(clicks)
    assert named.kept().sum() == 16 and named.kept()[3, 3] and not named.kept()[12, 12]
    clicks += [(0, 19, True), (12, 12, True), (25, 3, True)]   # background, part B, outside the slice
    named = named.after(clicks)
    assert named.kept().sum() == 16 + 36 and named.clicks_seen == 4
    again = named.after(clicks)   # nothing new to count
    assert (again.confirmed, again.rejected, again.clicks_seen) == (named.confirmed, named.rejected, 4)
    clicks += [(4, 4, False)]   # a negative click in A rejects it ...
    named = named.after(clicks)
    assert not named.kept()[3, 3] and named.kept()[12, 12]
    clicks += [(2, 2, True)]    # ... for good: a later positive click does not bring it back
    named = named.after(clicks)
    assert not named.kept()[3, 3]
    clicks += [(11, 11, False)]
    assert named.after(clicks).kept() is None


def test_the_record_is_immutable_so_undo_can_restore_it():
    before = NamedParts.of(_answer()).after([(3, 3, True)])
    after = before.after([(3, 3, True), (4, 4, False)])
    assert before.confirmed == frozenset({1}) and after.confirmed == frozenset() and after.rejected == frozenset({1})


def test_a_name_finer_than_the_map_is_not_confirmed_but_an_instance_is():
    vocabulary = Vocabulary.default()
    assert confirmable(vocabulary.resolve("liver")) and confirmable(vocabulary.resolve("heart myocardium"))
    assert confirmable(vocabulary.resolve("left kidney"))          # a side is not a finer structure
    assert not confirmable(vocabulary.resolve("lung_upper_lobe_left"))   # the lung's map holds more than a lobe
    assert confirmable(vocabulary.resolve("rib_right_8"))          # one rib: the rib map's parts are the ribs


def test_another_name_typed_on_the_slice_does_not_inherit_the_confirmed_parts():
    """The record is kept for the name it was made for: "liver", a click confirming a part, then "spleen" typed on
    that slice goes to the click network without the liver's part forced into its answer."""
    from IMISSegmentLib.engines.base import SliceRequest
    from IMISSegmentLib.engines.onnx_engine import ClickNetEngineBase, ClickNetState, _mask_digest
    from IMISSegmentLib.engines.named_parts import name_key
    vocabulary = Vocabulary.default()
    liver, spleen = vocabulary.resolve("liver"), vocabulary.resolve("spleen")
    mask = _answer()
    state = ClickNetState(0, 0, mask.shape, None, _mask_digest(mask), None, NamedParts.of(mask, name_key(liver)))
    request = SliceRequest(0, 0, np.zeros(mask.shape, np.float32), np.zeros(mask.shape), (1.0, 1.0),
                           clicks=[(3, 3, True)], previous_mask=mask, previous_state=state)
    assert ClickNetEngineBase._named_parts(request, liver).kept()[3, 3]
    assert ClickNetEngineBase._named_parts(request, spleen) is None
