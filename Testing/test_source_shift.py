"""training/data/source_shift.py: a slice shown as another scanner would show it (field of view, resolution,
contrast), its label following the field of view."""
import numpy as np
import pytest

pytest.importorskip("scipy")
from training.data.source_shift import SourceShift, _coarser, _field_of_view, shift_source  # noqa: E402


def _slice():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0.2, 0.02, (40, 60)), 0, 1).astype(np.float32)
    label = np.zeros((40, 60), np.uint8)
    label[10:20, 15:35] = 3
    image[label == 3] = 0.8
    return image, label


def test_settings_check_their_keys_probabilities_and_ranges():
    assert not SourceShift.from_config({}).active and not SourceShift.from_config(None).active
    shift = SourceShift.from_config({"fov": 0.5, "fov_range": [0.7, 1.5], "noise": 0.1})
    assert shift.active and shift.fov_range == (0.7, 1.5)
    for config, message in (({"fov": 1.5}, "fov is a probability"), ({"wobble": 1}, "unknown keys ['wobble']"),
                            ({"blur_range": [2, 1]}, "0 < low <= high"), ({"fov_range": [0, 1]}, "0 < low")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            SourceShift.from_config(config)


def test_a_wider_field_of_view_pads_with_background_and_the_label_moves_with_the_image():
    image, label = _slice()
    wide, wide_label = _field_of_view(image, label, 1.5, np.random.default_rng(1))
    assert wide.shape == (60, 90) and wide_label.shape == (60, 90)
    assert (wide_label == 3).sum() == (label == 3).sum()
    assert np.allclose(wide[wide_label == 3], 0.8)   # the structure's pixels, wherever the padding put them
    assert np.isclose(wide[0, 0], np.percentile(image, 1)) or np.isclose(wide[-1, -1], np.percentile(image, 1))


def test_a_narrower_field_of_view_crops_a_window_of_the_slice():
    image, label = _slice()
    narrow, narrow_label = _field_of_view(image, label, 0.5, np.random.default_rng(2))
    assert narrow.shape == (20, 30) and narrow_label.shape == (20, 30)
    assert np.array_equal(narrow == np.float32(0.8), narrow_label == 3)
    thin, thin_label = _field_of_view(image[:5], label[:5], 0.6, np.random.default_rng(3))   # 5 slices across
    assert thin.shape == (5, 36) and thin_label.shape == (5, 36)
    maps = np.stack([label, label * 0])   # (C, H, W) labels are cut by the same window
    _, cut = _field_of_view(image, maps, 0.5, np.random.default_rng(2))
    assert cut.shape == (2, 20, 30) and np.array_equal(cut[0], narrow_label)


def test_a_coarser_resolution_keeps_the_grid_and_loses_detail():
    image, label = _slice()
    coarse = _coarser(image, 3.0)
    assert coarse.shape == image.shape
    assert np.abs(np.diff(coarse, axis=1)).mean() < 0.5 * np.abs(np.diff(image, axis=1)).mean()
    assert abs(coarse[13:17, 20:30].mean() - 0.8) < 0.1   # the structure is still there, its edges blurred
    assert coarse[label == 3].mean() > coarse[label == 0].mean() + 0.3


def test_every_change_keeps_intensities_in_range_and_the_label_values():
    image, label = _slice()
    shift = SourceShift(fov=1.0, blur=1.0, contrast=1.0, noise=1.0)
    seen = set()
    for seed in range(20):
        out, out_label = shift_source(image, label, shift, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert out.shape == out_label.shape and set(np.unique(out_label)) <= {0, 3}
        seen.add(out.shape)
    assert len(seen) > 10   # the field of view varies from draw to draw
    same, same_label = shift_source(image, label, SourceShift(), np.random.default_rng(0))
    assert np.array_equal(same, image) and np.array_equal(same_label, label)
