"""The in-memory volume: a voxel array in (k, j, i) order and the geometry that places it in space."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk


@dataclass
class Volume:
    """A 3D image as :func:`SimpleITK.GetArrayFromImage` gives it, with its geometry kept alongside.

    ``array`` is (K, J, I). ``spacing`` is per array axis (sk, sj, si) in mm. ``origin`` (x, y, z, LPS mm)
    and ``direction`` (3 x 3 row-major, columns are the i, j, k axes) are as SimpleITK reports them, so a
    volume written back lands exactly where it was read from. Nothing is reoriented or resampled.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        """Spacing in SimpleITK's (i, j, k) order."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same geometry around another array of the same shape (a label map, a mask)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {tuple(array.shape)} does not match the volume's {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, self.source, dict(self.metadata))


def ijk_to_lps(volume: Volume) -> np.ndarray:
    """4 x 4 matrix taking a voxel index (i, j, k, 1) to LPS mm: direction columns scaled by spacing, then origin.

    This is the matrix slicerio stores as ``ijkToLPS``; note it indexes (i, j, k), i.e. ``array.T``.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(volume.direction, dtype=float).reshape(3, 3) * np.asarray(volume.spacing_xyz)
    matrix[:3, 3] = volume.origin
    return matrix


def to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """A SimpleITK image of ``array`` (default the volume's own) carrying the volume's exact geometry."""
    image = sitk.GetImageFromArray(volume.array if array is None else array)
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(tuple(volume.origin))
    image.SetDirection(tuple(volume.direction))
    return image
