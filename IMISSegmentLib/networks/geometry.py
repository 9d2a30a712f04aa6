"""Slice <-> network-resolution geometry (numpy only), shared by the engines and training.

A slice of (H, W) is resized so its longest side is ``size`` (aspect kept, as SAM / LiteMedSAM round;
the physical aspect when the pixel spacing is given),
placed at the top-left of a ``size`` x ``size`` canvas and padded with zeros (bottom / right). Resizing is
separable linear interpolation with half-pixel centres (``align_corners=False``); when shrinking, the
triangle filter is widened by the shrink factor so it averages like an antialiased resize (no aliasing
of thin structures on 512 x 512 slices). Each resize is two products with sparse (banded) weight
matrices, about a millisecond on a 512 x 512 slice.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import sparse

NETWORK_SIZE = 256


def resized_shape(height: int, width: int, size: int = NETWORK_SIZE, spacing=None) -> tuple[int, int]:
    """(new_h, new_w) after scaling the longest side to ``size`` (aspect kept, rounded; at least 1 px).

    With ``spacing`` (mm per row, per col) the physical aspect is kept instead of the pixel aspect, so a
    sagittal slice of a 5 mm-thick-slice CT is not squashed.
    """
    extent_h, extent_w = float(height), float(width)
    if spacing is not None:
        extent_h, extent_w = height * float(spacing[0]), width * float(spacing[1])
    scale = size / max(extent_h, extent_w)
    return max(1, min(size, int(extent_h * scale + 0.5))), max(1, min(size, int(extent_w * scale + 0.5)))


@lru_cache(maxsize=64)
def _weights(src: int, dst: int):
    """(dst, src) sparse (CSR) linear-interpolation matrix, half-pixel centres, antialiased when shrinking."""
    scale = dst / src
    support = max(1.0, 1.0 / scale)          # filter half-width in source pixels
    centres = (np.arange(dst, dtype=np.float64) + 0.5) / scale - 0.5
    taps = np.arange(src, dtype=np.float64)
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    # rows are normalised, so near the border the taps that remain get all the weight (edge clamp)
    weights /= weights.sum(axis=1, keepdims=True)
    return sparse.csr_matrix(weights.astype(np.float32))


def resize_linear(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2D array to ``shape`` (float32) by separable (antialiased) linear interpolation."""
    array = np.asarray(array, dtype=np.float32)
    rows, cols = int(shape[0]), int(shape[1])
    if array.shape == (rows, cols):
        return array.copy()
    out = array
    if array.shape[0] != rows:
        out = _weights(array.shape[0], rows) @ out
    if array.shape[1] != cols:
        out = (_weights(array.shape[1], cols) @ np.ascontiguousarray(out.T)).T
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class SliceGeometry:
    """How one slice of ``slice_shape`` sits on the ``size`` x ``size`` network canvas.

    ``spacing`` (mm per row, per col), when given, makes the canvas keep the slice's physical aspect.
    """

    slice_shape: tuple[int, int]
    size: int = NETWORK_SIZE
    spacing: tuple | None = None

    @property
    def inner_shape(self) -> tuple[int, int]:
        """(new_h, new_w): the resized slice's extent on the canvas (top-left corner)."""
        return resized_shape(self.slice_shape[0], self.slice_shape[1], self.size, self.spacing)

    def to_network(self, image: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(size, size) float32: ``image`` (slice grid) resized and padded with ``fill``."""
        image = np.asarray(image)
        if image.shape != tuple(self.slice_shape):
            raise ValueError(f"image shape {image.shape} does not match the slice shape {self.slice_shape}")
        inner = self.inner_shape
        out = np.full((self.size, self.size), fill, np.float32)
        out[:inner[0], :inner[1]] = resize_linear(image, inner)
        return out

    def pad(self, maps: np.ndarray) -> np.ndarray:
        """(..., size, size): maps already at :attr:`inner_shape` padded with zeros."""
        inner = self.inner_shape
        if maps.shape[-2:] != inner:
            raise ValueError(f"maps of shape {maps.shape} are not at the inner shape {inner}")
        out = np.zeros(maps.shape[:-2] + (self.size, self.size), np.float32)
        out[..., :inner[0], :inner[1]] = maps
        return out

    def to_slice(self, canvas: np.ndarray) -> np.ndarray:
        """(H, W) float32: a (size, size) network map cropped to the slice's extent and resized back."""
        canvas = np.asarray(canvas, dtype=np.float32)
        if canvas.shape != (self.size, self.size):
            raise ValueError(f"network map of shape {canvas.shape}, expected {(self.size, self.size)}")
        inner = self.inner_shape
        return resize_linear(canvas[:inner[0], :inner[1]], self.slice_shape)

    def mask_to_network(self, mask: np.ndarray) -> np.ndarray:
        """(size, size) float32 in 0..1: a binary slice mask resized linearly (soft edges) and padded."""
        return np.clip(self.to_network(np.asarray(mask, dtype=np.float32)), 0.0, 1.0)

    def mask_to_slice(self, canvas: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """(H, W) bool: a network-resolution probability / mask map brought back and thresholded."""
        return self.to_slice(canvas) > threshold
