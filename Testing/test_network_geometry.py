"""Slice <-> network-resolution geometry (numpy only: runs without torch or onnxruntime)."""
import numpy as np
import pytest
from scipy import ndimage

from IMISSegmentLib.networks.geometry import SliceGeometry, resize_linear, resized_shape
from IMISSegmentLib.prompts import encode_prompt_maps


def _shapes_mask(shape):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    h, w = shape
    ellipse = ((rows - 0.45 * h) / (0.25 * h)) ** 2 + ((cols - 0.5 * w) / (0.3 * w)) ** 2 <= 1
    square = (rows > 0.75 * h) & (rows < 0.92 * h) & (cols > 0.1 * w) & (cols < 0.3 * w)
    return ellipse | square


@pytest.mark.parametrize("shape", [(101, 122), (512, 512), (122, 101), (40, 300)])
def test_mask_round_trip_through_the_network_resolution(shape):
    mask = _shapes_mask(shape)
    geometry = SliceGeometry(shape)
    canvas = geometry.mask_to_network(mask)
    assert canvas.shape == (256, 256)
    inner = geometry.inner_shape
    assert max(inner) == 256 and not canvas[inner[0]:].any() and not canvas[:, inner[1]:].any()
    back = geometry.mask_to_slice(canvas)
    assert back.shape == shape
    wrong = back != mask
    # only boundary pixels may flip (sub-pixel rounding when shrinking), and very few
    boundary = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    assert not (wrong & ~boundary).any()
    assert wrong.sum() <= 0.1 * boundary.sum()
    if max(shape) <= 256:   # enlarging: the round trip is exact
        assert not wrong.any()


def test_physical_aspect_from_spacing():
    assert resized_shape(25, 256, 256) == (25, 256)
    assert resized_shape(25, 256, 256, spacing=(6.5, 0.78)) == (208, 256)
    geometry = SliceGeometry((25, 256), 256, (6.5, 0.78))
    assert geometry.to_network(np.ones((25, 256))).sum() == pytest.approx(208 * 256, rel=1e-5)


def test_resize_keeps_constants_and_means():
    flat = np.full((77, 133), 0.3, np.float32)
    assert np.allclose(resize_linear(flat, (256, 19)), 0.3, atol=1e-6)
    rng = np.random.default_rng(0)
    image = rng.random((512, 512)).astype(np.float32)
    assert resize_linear(image, (256, 256)).mean() == pytest.approx(image.mean(), abs=2e-3)


def test_click_disks_land_where_the_click_is_on_the_canvas():
    shape = (101, 122)
    geometry = SliceGeometry(shape)
    maps = geometry.pad(encode_prompt_maps([(50, 61, True), (10, 100, False)], (20, 30, 80, 90), None, shape,
                                           geometry.inner_shape))
    assert maps.shape == (4, 256, 256)
    image = np.zeros(shape, np.float32)
    image[50, 61] = 1.0
    peak = np.unravel_index(np.argmax(geometry.to_network(image)), (256, 256))
    centre = np.argwhere(maps[0] > 0).mean(axis=0)
    assert np.allclose(centre, peak, atol=1.5)
    assert maps[1].any() and maps[2].sum() > 0 and not maps[3].any()
