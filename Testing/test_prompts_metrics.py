"""Tests for prompt encoding (prompts.encode_prompt_maps), the metrics, the simulated user and intensity
normalisation. Expected values are worked out by hand from the definitions in DESIGN.md / the docstrings."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from IMISSegmentLib.evaluation.metrics import (area_under_curve, clicks_to_reach, dice,
                                               normalized_surface_dice)
from IMISSegmentLib.evaluation.simulated_user import (first_box, first_click, largest_slice, next_click,
                                                      tight_box)
from IMISSegmentLib.normalize import (CT_WINDOW, MR_PERCENTILES, apply_window, intensity_window,
                                      looks_like_ct, normalize_intensity)
from IMISSegmentLib.prompts import CLICK_RADIUS_PX, encode_prompt_maps


# ---------------------------------------------------------------- prompt maps

def _blob_stats(channel: np.ndarray):
    rows, cols = np.nonzero(channel)
    return rows.size, rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, rows.mean(), cols.mean()


@pytest.mark.parametrize("slice_shape,click", [((512, 512), (100, 300)), ((128, 96), (40, 30)), ((256, 256), (60, 70))])
def test_click_disk_has_radius_5_at_network_resolution(slice_shape, click):
    net = (256, 256)
    maps = encode_prompt_maps([(*click, True)], None, None, slice_shape, net)
    assert maps.shape == (4, 256, 256) and maps.dtype == np.float32
    area, height, width, r_mean, c_mean = _blob_stats(maps[0])
    # a disk of radius 5 px: diameter ~ 10-11 px and area ~ pi * 25, whatever the slice's own size
    assert 9 <= height <= 11 and 9 <= width <= 11
    assert math.pi * 4.5 ** 2 <= area <= math.pi * 5.5 ** 2
    # centred on the click's position scaled to the network grid (pixel centres)
    scale = (net[0] / slice_shape[0], net[1] / slice_shape[1])
    assert abs(r_mean - ((click[0] + 0.5) * scale[0] - 0.5)) <= 0.6
    assert abs(c_mean - ((click[1] + 0.5) * scale[1] - 0.5)) <= 0.6
    assert set(np.unique(maps[0])) == {0.0, 1.0}
    assert not maps[1:].any()
    assert CLICK_RADIUS_PX == 5


def test_click_disk_radius_follows_the_argument():
    maps = encode_prompt_maps([(50, 50, True)], None, None, (128, 128), (128, 128), radius=10)
    area, height, _, _, _ = _blob_stats(maps[0])
    assert 19 <= height <= 21 and math.pi * 9.5 ** 2 <= area <= math.pi * 10.5 ** 2


def test_click_at_slice_corner_is_clipped():
    maps = encode_prompt_maps([(0, 0, False)], None, None, (64, 64), (128, 128))
    assert maps[1, 0, 0] == 1.0
    assert 0 < np.count_nonzero(maps[1]) < math.pi * 25 / 2


@pytest.mark.parametrize("slice_shape,box,expected", [
    ((128, 128), (10, 20, 29, 59), (20, 40, 59, 119)),     # enlarged x2: pixels [10, 30) -> [20, 60)
    ((512, 256), (100, 40, 199, 79), (50, 40, 99, 79)),    # rows halved, cols kept
])
def test_box_map_covers_the_scaled_box(slice_shape, box, expected):
    maps = encode_prompt_maps([], box, None, slice_shape, (256, 256))
    r0, c0, r1, c1 = expected
    want = np.zeros((256, 256), np.float32)
    want[r0:r1 + 1, c0:c1 + 1] = 1
    np.testing.assert_array_equal(maps[2], want)
    assert not maps[[0, 1, 3]].any()


@pytest.mark.parametrize("slice_shape", [(128, 128), (512, 512), (64, 256)])
def test_previous_mask_is_resized_nearest_neighbour(slice_shape):
    net = (256, 256)
    prev = np.zeros(slice_shape, bool)
    h, w = slice_shape
    prev[h // 4: h // 2, w // 4: 3 * w // 4] = True           # quarter .. half rows, quarter .. 3/4 cols
    maps = encode_prompt_maps([], None, prev, slice_shape, net)
    want = np.zeros(net, np.float32)
    want[64:128, 64:192] = 1
    np.testing.assert_array_equal(maps[3], want)


def test_channel_order_is_positive_negative_box_previous():
    prev = np.zeros((64, 64), bool)
    prev[50:60, 50:60] = True
    maps = encode_prompt_maps([(10, 10, True), (10, 40, False), (30, 10, True)], (20, 30, 40, 50), prev,
                              (64, 64), (64, 64))
    assert maps.shape == (4, 64, 64)
    assert maps[0, 10, 10] == 1 and maps[0, 30, 10] == 1 and maps[0, 10, 40] == 0
    assert maps[1, 10, 40] == 1 and maps[1, 10, 10] == 0 and maps[1, 30, 10] == 0
    assert maps[2, 30, 40] == 1 and maps[2].sum() == 21 * 21
    np.testing.assert_array_equal(maps[3], prev.astype(np.float32))


# ---------------------------------------------------------------- metrics

def _square(shape=(40, 40), top=10, left=10, size=10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_dice_by_hand():
    a, b = _square(), _square(left=13)                # 100 voxels each, overlap 10 x 7
    assert dice(a, b) == pytest.approx(2 * 70 / 200)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    c = np.array([[1, 1, 0], [0, 1, 0]])
    d = np.array([[1, 0, 0], [0, 1, 1]])
    assert dice(c, d) == pytest.approx(2 * 2 / 6)


def test_nsd_identical_and_empty_masks():
    a = _square()
    assert normalized_surface_dice(a, a, (1.0, 1.0)) == 1.0
    empty = np.zeros_like(a)
    assert normalized_surface_dice(empty, empty, (1.0, 1.0)) == 1.0
    assert normalized_surface_dice(a, empty, (1.0, 1.0)) == 0.0
    assert normalized_surface_dice(empty, a, (1.0, 1.0)) == 0.0


def test_nsd_shift_beyond_tolerance_by_hand():
    # 10 x 10 squares shifted 3 px (tolerance 2 mm, 1 mm px): each 36-px surface has 22 px within 2 mm
    # of the other (top and bottom rows but their outer corner: 9 + 9; 4 px of the inner side column)
    a, b = _square(), _square(left=13)
    assert normalized_surface_dice(a, b, (1.0, 1.0), 2.0) == pytest.approx(44 / 72)
    assert normalized_surface_dice(a, b, (1.0, 1.0), 3.0) == 1.0


def test_nsd_shift_within_tolerance_is_one():
    a = _square()
    assert normalized_surface_dice(a, _square(left=11), (1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(a, _square(left=11, top=11), (1.0, 1.0), 2.0) == 1.0   # corners sqrt(2) apart
    assert normalized_surface_dice(a, _square(left=12, top=11), (1.0, 1.0), 2.0) < 1.0    # corners sqrt(5) apart


def test_nsd_uses_anisotropic_spacing():
    a, b = _square(), _square(top=11)      # one voxel down along axis 0
    assert normalized_surface_dice(a, b, (1.0, 1.0), 2.0) == 1.0
    # by hand with 3 mm rows: of each 36-px surface, the outer row is 3 mm away and 4 px of the inner row
    # lie 3 .. 4 mm from the nearest side column; 22 px remain within 2 mm
    assert normalized_surface_dice(a, b, (3.0, 1.0), 2.0) == pytest.approx(44 / 72)
    assert normalized_surface_dice(a, b, (1.0, 3.0), 2.0) == 1.0   # spacing along the other axis: no matter
    # 3D: a one-slice shift counts 5 mm on 5 mm slices, 1 mm on 1 mm ones
    a3 = np.zeros((12, 20, 20), bool)
    a3[3:8, 5:15, 5:15] = True
    b3 = np.roll(a3, 1, axis=0)
    assert normalized_surface_dice(a3, b3, (1.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_dice(a3, b3, (5.0, 1.0, 1.0)) < 1.0


def test_nsd_near_the_array_border():
    a = np.zeros((10, 10), bool)
    a[:4, :4] = True                       # touches the border: the border counts as outside
    assert normalized_surface_dice(a, a, (1.0, 1.0)) == 1.0
    b = np.zeros_like(a)
    b[:4, 6:] = True
    assert normalized_surface_dice(a, b, (1.0, 1.0), 1.0) == 0.0


def test_area_under_curve():
    assert area_under_curve([1, 1, 1, 1, 1]) == pytest.approx(4.0)
    assert area_under_curve([0, 1]) == pytest.approx(0.5)
    assert area_under_curve([0.0, 0.5, 1.0, 1.0, 1.0]) == pytest.approx(0.25 + 0.75 + 1.0 + 1.0)
    assert math.isnan(area_under_curve([0.7]))
    assert math.isnan(area_under_curve([]))


def test_clicks_to_reach():
    curve = [0.5, 0.86, 0.95]
    assert clicks_to_reach(curve, 0.85) == 2
    assert clicks_to_reach(curve, 0.90) == 3
    assert clicks_to_reach(curve, 0.50) == 1
    assert clicks_to_reach(curve, 0.99) == 20               # never reached: the cap
    assert clicks_to_reach([0.1] * 24 + [0.99], 0.9) == 20  # reached only after the cap
    assert clicks_to_reach([0.1] * 19 + [0.9], 0.9) == 20   # reached at the cap itself
    assert clicks_to_reach([0.1, 0.1, 0.1, 0.95], 0.9, cap=3) == 3
    assert clicks_to_reach([0.1, 0.95], 0.9, cap=3) == 2
    assert clicks_to_reach([], 0.9) == 20


# ---------------------------------------------------------------- simulated user

def _disk(shape, centre, radius):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2


def test_largest_slice_and_tight_box():
    mask = np.zeros((6, 30, 30), bool)
    mask[1, 5:10, 5:10] = True             # 25
    mask[4, 3:12, 14:20] = True            # 54 <- largest axial slice
    mask[2, 20:27, 0:7] = True             # 49
    assert largest_slice(mask, 0) == 4
    assert largest_slice(mask, 2) == np.argmax([np.count_nonzero(mask[:, :, i]) for i in range(30)])
    assert tight_box(mask[4]) == ((3, 14), (11, 19))
    index, a, b = first_box(mask, 0)
    assert (index, a, b) == (4, (3, 14), (11, 19))
    with pytest.raises(ValueError):
        largest_slice(np.zeros((3, 4, 4), bool))


def test_first_click_is_the_distance_maximum_inside_the_structure():
    mask = np.zeros((5, 40, 50), bool)
    mask[2] = _disk((40, 50), (20, 25), 9)
    mask[1] = _disk((40, 50), (20, 25), 4)
    assert first_click(mask, (3.0, 1.0, 1.0), 0) == (2, 20, 25)
    # an L shape: the click lies inside, where the (spacing-aware) distance to the border is largest
    shape = np.zeros((3, 40, 40), bool)
    shape[1, 5:35, 5:13] = True
    shape[1, 27:35, 5:35] = True
    for spacing in ((1.0, 1.0, 1.0), (1.0, 0.5, 2.0)):
        k, j, i = first_click(shape, spacing, 0)
        assert k == 1 and shape[k, j, i]
        distance = ndimage.distance_transform_edt(np.pad(shape[1], 1), sampling=spacing[1:])[1:-1, 1:-1]
        assert distance[j, i] == pytest.approx(distance.max())


def test_first_click_on_another_axis():
    mask = np.zeros((20, 8, 30), bool)
    mask[4:15, 5, 10:21] = True            # the j = 5 slice holds an 11 x 11 square (k, i)
    mask[0:2, 2, 0:3] = True
    k, j, i = first_click(mask, (1.0, 1.0, 1.0), axis=1)
    assert (k, j, i) == (9, 5, 15)


def test_next_click_picks_the_largest_error_component_and_its_sign():
    reference = np.zeros((40, 40), bool)
    reference[5:25, 5:25] = True
    prediction = reference.copy()
    prediction[10:20, 10:20] = False       # 100 px missed (a hole)
    prediction[30:33, 30:33] = True        # 9 px extra
    click = next_click(prediction, reference)
    assert click.positive is True
    assert click.point in {(14, 14), (14, 15), (15, 14), (15, 15)}   # the centre of the 10 x 10 hole
    assert reference[click.point] and not prediction[click.point]
    # now the false positive is larger: a negative click in it
    prediction = reference.copy()
    prediction[3:4, 5:25] = True           # 20 px extra, a thin strip
    prediction[30:38, 30:38] = True        # 64 px extra
    prediction[10:12, 10:12] = False       # 4 px missed
    click = next_click(prediction, reference)
    assert click.positive is False
    assert 30 <= click.point[0] < 38 and 30 <= click.point[1] < 38
    assert prediction[click.point] and not reference[click.point]
    d = ndimage.distance_transform_edt(np.pad(prediction & ~reference, 1))[1:-1, 1:-1]
    assert d[click.point] == d.max()


def test_next_click_none_when_perfect():
    reference = _disk((30, 30), (15, 15), 6)
    assert next_click(reference.copy(), reference) is None
    assert next_click(np.zeros((4, 5, 5), bool), np.zeros((4, 5, 5), bool)) is None


def test_next_click_only_extra_or_only_missed():
    reference = np.zeros((20, 20), bool)
    prediction = np.zeros((20, 20), bool)
    prediction[2:6, 2:6] = True
    click = next_click(prediction, reference)
    assert click.positive is False and prediction[click.point]
    click = next_click(reference, prediction)
    assert click.positive is True and prediction[click.point]


def test_next_click_uses_3d_components():
    # missed: a 3 x 3 column through 10 slices (90 voxels, only 9 per slice);
    # extra: a 6 x 6 patch on one slice (36 voxels, the larger on any one slice)
    reference = np.zeros((12, 30, 30), bool)
    reference[1:11, 5:8, 5:8] = True
    prediction = np.zeros_like(reference)
    prediction[6, 20:26, 20:26] = True
    click = next_click(prediction, reference, (1.0, 1.0, 1.0))
    assert click.positive is True
    assert len(click.point) == 3
    assert reference[click.point]
    assert click.point[1:] == (6, 6)
    # on the single slice alone (2D) the patch wins
    click2d = next_click(prediction[6], reference[6], (1.0, 1.0))
    assert click2d.positive is False and prediction[6][click2d.point]


def test_next_click_distance_uses_spacing():
    # a missed 9 (rows) x 5 (cols) block: in 1 mm px the distance maximum is the middle column; with
    # 3 mm columns it is the middle row instead, away from the isotropic maxima
    reference = np.zeros((20, 20), bool)
    reference[5:14, 5:10] = True
    padded = np.pad(reference, 1)
    iso = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    aniso = ndimage.distance_transform_edt(padded, sampling=(1.0, 3.0))[1:-1, 1:-1]
    click = next_click(np.zeros_like(reference), reference, (1.0, 1.0))
    assert click.positive and iso[click.point] == iso.max()
    click = next_click(np.zeros_like(reference), reference, (1.0, 3.0))
    assert click.positive and aniso[click.point] == aniso.max()
    assert click.point[0] == 9 and iso[click.point] < iso.max()


# ---------------------------------------------------------------- normalisation

def test_ct_is_detected_and_windowed():
    rng = np.random.default_rng(1)
    ct = rng.normal(40, 10, (4, 32, 32)).astype(np.int16)
    ct[:, :4] = -1024                       # air / padding
    ct[:, -3:, :3] = 1200                   # bone
    ct[0, 10, 10], ct[0, 10, 11], ct[0, 10, 12] = -200, 50, 300
    assert looks_like_ct(ct)
    low, high, kind = intensity_window(ct)
    assert (low, high, kind) == (CT_WINDOW[0], CT_WINDOW[1], "ct")
    out = normalize_intensity(ct)
    assert out.dtype == np.float32 and out.shape == ct.shape
    expected = np.clip((ct.astype(np.float64) - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 10, 10] == 0.0 and out[0, 10, 12] == 1.0
    assert out[0, 10, 11] == pytest.approx((50 - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]))
    assert out[0, 0, 0] == 0.0 and out[0, -1, 0] == 1.0


@pytest.mark.parametrize("name,array", [
    ("mr", np.random.default_rng(2).gamma(2.0, 150.0, (6, 40, 40))),             # 0 .. ~2000, no negatives
    ("windowed ct uint8", np.random.default_rng(3).integers(0, 256, (6, 40, 40)).astype(np.uint8)),
    ("lung crop", np.random.default_rng(4).uniform(-1000, 100, (6, 40, 40))),     # air but nothing above 200
    ("negative mr", np.random.default_rng(5).normal(0, 100, (6, 40, 40))),
])
def test_non_ct_is_scaled_by_percentiles(name, array):
    assert not looks_like_ct(array)
    low, high, kind = intensity_window(array)
    assert kind == "percentile"
    want_low, want_high = np.percentile(array.astype(np.float64), MR_PERCENTILES)
    assert low == pytest.approx(want_low) and high == pytest.approx(want_high)
    out = normalize_intensity(array)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    median = np.median(array)
    probe = np.array([median])
    assert apply_window(probe, (low, high))[0] == pytest.approx((median - want_low) / (want_high - want_low), abs=1e-5)
    # clipped: about 0.5 % of voxels at each end saturate, not more
    assert np.count_nonzero(out == 1.0) <= 0.01 * array.size + 1
    assert np.count_nonzero(out == 0.0) <= 0.01 * array.size + 1


def test_sparse_and_constant_volumes_do_not_divide_by_zero():
    sparse = np.zeros((4, 20, 20), np.float32)
    sparse[1, 2, 3] = 5.0                   # both percentiles are 0: fall back to the full range
    low, high, kind = intensity_window(sparse)
    assert (low, high, kind) == (0.0, 5.0, "percentile")
    out = normalize_intensity(sparse)
    assert out[1, 2, 3] == 1.0 and np.count_nonzero(out) == 1
    constant = np.full((3, 5, 5), 7.0)
    low, high, _ = intensity_window(constant)
    assert high > low
    out = normalize_intensity(constant)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_apply_window_on_a_slice():
    window = (-100.0, 100.0, "ct")
    out = apply_window(np.array([[-300, -100, 0], [50, 100, 900]], np.int16), window)
    np.testing.assert_allclose(out, [[0, 0, 0.5], [0.75, 1, 1]])
    assert out.dtype == np.float32
