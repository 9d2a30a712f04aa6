"""The square region of interest (ROI) the propagation network works in (numpy only; shared with training).

A ROI is a box of whole pixels on one slice, square in millimetres (so anisotropic pixels are not
squashed), centred on the structure and larger than it by ``scale`` plus ``margin_mm``. It may reach past
the slice: what lies outside reads as 0. :meth:`Roi.crop` resamples the slice's ROI to the network's
``size`` x ``size`` grid (antialiased linear, :func:`IMISSegmentLib.networks.geometry.resize_linear`);
:meth:`Roi.paste` resamples network-grid logits back onto the slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.slice_walk import mask_bbox
from ..networks.geometry import resize_linear

ROI_SCALE = 1.6        # ROI side / structure extent
ROI_MARGIN_MM = 12.0   # added to the side
ROI_MIN_PX = 24        # smallest ROI side in pixels
ROI_MAX_SLICE = 2.0    # largest ROI side / the slice's larger side (mm): a tiny spacing cannot make it huge


@dataclass(frozen=True)
class Roi:
    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.row0, self.col0, self.row0 + self.rows, self.col0 + self.cols

    def _overlap(self, shape):
        r0, c0, r1, c1 = self.bounds
        sr0, sc0 = max(r0, 0), max(c0, 0)
        sr1, sc1 = min(r1, shape[0]), min(c1, shape[1])
        return sr0, sc0, sr1, sc1

    def crop(self, image: np.ndarray, size: int) -> np.ndarray:
        """The ROI of a 2D array, zero outside the slice, resampled to (size, size) float32."""
        out = np.zeros((self.rows, self.cols), np.float32)
        sr0, sc0, sr1, sc1 = self._overlap(image.shape)
        if sr1 > sr0 and sc1 > sc0:
            out[sr0 - self.row0:sr1 - self.row0, sc0 - self.col0:sc1 - self.col0] = image[sr0:sr1, sc0:sc1]
        return resize_linear(out, (size, size))

    def paste(self, grid: np.ndarray, shape, fill: float = -20.0) -> np.ndarray:
        """Network-grid values (size, size) resampled onto a slice of ``shape``; ``fill`` outside the ROI."""
        out = np.full(tuple(shape), fill, np.float32)
        sr0, sc0, sr1, sc1 = self._overlap(shape)
        if sr1 > sr0 and sc1 > sc0:
            full = resize_linear(grid, (self.rows, self.cols))
            out[sr0:sr1, sc0:sc1] = full[sr0 - self.row0:sr1 - self.row0, sc0 - self.col0:sc1 - self.col0]
        return out

    def touches_edge(self, mask: np.ndarray, border: float = 0.06) -> bool:
        """True when ``mask`` (slice grid) comes within ``border`` x side of the ROI's edge, or leaves it."""
        box = mask_bbox(mask)
        if box is None:
            return False
        r0, c0, r1, c1 = self.bounds
        br, bc = border * self.rows, border * self.cols
        return box[0] < r0 + br or box[1] < c0 + bc or box[2] + 1 > r1 - br or box[3] + 1 > c1 - bc


def roi_around(mask: np.ndarray, spacing=(1.0, 1.0), scale: float = ROI_SCALE, margin_mm: float = ROI_MARGIN_MM,
               min_px: int = ROI_MIN_PX, shift=(0.0, 0.0)) -> Roi:
    """The ROI around a non-empty 2D mask; ``shift`` moves its centre by that fraction of its side (training)."""
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("roi_around needs a non-empty mask")
    sr, sc = float(spacing[0]), float(spacing[1])
    extent_mm = max((box[2] - box[0] + 1) * sr, (box[3] - box[1] + 1) * sc)
    side_mm = max(extent_mm * scale + margin_mm, min_px * min(sr, sc))
    side_mm = min(side_mm, max(ROI_MAX_SLICE * max(mask.shape[0] * sr, mask.shape[1] * sc), min_px * max(sr, sc)))
    rows, cols = max(min_px, int(round(side_mm / sr))), max(min_px, int(round(side_mm / sc)))
    centre_r = 0.5 * (box[0] + box[2] + 1) + shift[0] * rows
    centre_c = 0.5 * (box[1] + box[3] + 1) + shift[1] * cols
    return Roi(int(round(centre_r - rows / 2)), int(round(centre_c - cols / 2)), rows, cols)
