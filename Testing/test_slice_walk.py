"""engines/slice_walk.py: the slice-by-slice propagation walker shared by LiteMedSAM and the click network."""
import numpy as np
import pytest

from IMISSegmentLib.engines.base import PropagationRequest
from IMISSegmentLib.engines.slice_walk import grow_box, mask_bbox, walk_slices
from IMISSegmentLib.errors import CancelledError, InputError


def _sphere(shape=(20, 30, 30), centre=(10, 15, 15), radius=6):
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def _truth_follower(truth, calls):
    """A segment_next that returns the true slice where it overlaps the previous mask (a perfect tracker)."""
    def segment_next(axis, index, previous):
        calls.append((axis, index))
        current = np.take(truth, index, axis=axis)
        return current if (current & previous).any() else np.zeros_like(current)
    return segment_next


def _request(prompted, shape):
    return PropagationRequest(clicks=[], boxes=[], texts=[], prompted=prompted, result=np.zeros(shape, np.uint8))


def test_walks_both_ways_and_stops_where_the_structure_ends():
    truth = _sphere()
    calls, ticks = [], []
    out = walk_slices(_request({(0, 10): truth[10]}, truth.shape), truth.shape, _truth_follower(truth, calls),
                      "test", progress=lambda done, total: ticks.append((done, total)))
    assert np.array_equal(out.astype(bool), truth)
    # slices 4..16 hold the sphere: the walks visit 5..16 and 9..4 and one empty slice beyond each end
    assert sorted(i for _, i in calls) == list(range(3, 10)) + list(range(11, 18))
    assert ticks[0] == (0, 19) and ticks[-1] == (19, 19)
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_prompted_slices_are_barriers_and_keep_the_users_mask():
    truth = _sphere()
    user = np.zeros_like(truth[12])
    user[14:17, 14:17] = True                       # the user's (smaller) mask on slice 12
    calls = []
    out = walk_slices(_request({(0, 8): truth[8], (0, 12): user}, truth.shape), truth.shape,
                      _truth_follower(truth, calls), "test")
    assert np.array_equal(out[12].astype(bool), user) and np.array_equal(out[8].astype(bool), truth[8])
    assert calls.count((0, 10)) == 2 and (0, 12) not in calls    # both walks meet between, none enters 12


def test_cancel_and_bad_requests():
    truth = _sphere()
    with pytest.raises(CancelledError, match="test propagation cancelled"):
        walk_slices(_request({(0, 10): truth[10]}, truth.shape), truth.shape, _truth_follower(truth, []), "test",
                    cancelled=lambda: True)
    with pytest.raises(InputError, match="outside the volume"):
        walk_slices(_request({(0, 40): truth[10]}, truth.shape), truth.shape, _truth_follower(truth, []), "test")
    with pytest.raises(InputError, match="expected"):
        walk_slices(_request({(1, 3): truth[10]}, truth.shape), truth.shape, _truth_follower(truth, []), "test")


def test_boxes_of_masks():
    mask = np.zeros((10, 12), bool)
    assert mask_bbox(mask) is None
    mask[2:5, 3:9] = True
    assert mask_bbox(mask) == (2, 3, 4, 8)
    assert grow_box((2, 3, 4, 8), 2, mask.shape) == (0, 1, 6, 10)
    assert grow_box((0, 0, 9, 11), 3, mask.shape) == (0, 0, 9, 11)
