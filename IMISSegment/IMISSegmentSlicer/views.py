"""Slice views and the volume's voxel axes: which IJK axis a view looks along.

The effect sends a click, a box or a text prompt on the slice of the volume that the view shows: the IJK axis
whose direction is nearest the view's normal. Spacing plays no part in that choice. A matrix with the spacing
in it (``GetRASToIJKMatrix``) favours the finest axis: with 5 mm slices, 0.7 mm pixels and a 10 degree tilt,
the axial view's normal is 10 degrees from k but its IJK components are largest along j.

Nothing here needs Qt or ``slicer.app``: the functions take MRML nodes or plain matrices.
"""
from __future__ import annotations

import numpy as np

from IMISSegmentLib.errors import InputError


def view_normal_axis_ijk(ijk_to_ras_directions, slice_normal_ras) -> int:
    """The IJK axis (0: i, 1: j, 2: k) whose direction is most nearly parallel, either way, to a view's normal.

    ``ijk_to_ras_directions``: 3 x 3, columns the directions of the i, j, k axes in RAS (as
    ``volume_node.GetIJKToRASDirections`` fills it); columns that are not unit length are normalised, so the
    spacing of an IJK-to-RAS matrix is ignored. ``slice_normal_ras``: the view's normal in RAS (the third
    column of the slice node's SliceToRAS), of any length.
    """
    directions = np.asarray(ijk_to_ras_directions, dtype=float)
    normal = np.asarray(slice_normal_ras, dtype=float)
    if directions.shape != (3, 3) or not np.isfinite(directions).all():
        raise InputError("IJK-to-RAS directions must be a 3 x 3 matrix of finite numbers, "
                         f"got {ijk_to_ras_directions!r}")
    if normal.shape != (3,) or not np.isfinite(normal).all() or not np.abs(normal).max() > 0:
        raise InputError(f"the view normal must be three finite numbers, not all zero, got {slice_normal_ras!r}")
    lengths = np.linalg.norm(directions, axis=0)
    if not lengths.min() > 0:
        raise InputError(f"IJK-to-RAS directions have a zero column: {directions.tolist()}")
    cosines = np.abs((directions / lengths).T @ (normal / np.linalg.norm(normal)))
    return int(np.argmax(cosines))


def ijk_to_ras_directions(volume_node) -> np.ndarray:
    """3 x 3 numpy matrix, columns the unit directions of the node's i, j, k axes in RAS (no spacing)."""
    directions = [[0.0] * 3 for _ in range(3)]
    volume_node.GetIJKToRASDirections(directions)
    return np.array(directions)


def slice_normal_ras(slice_node) -> np.ndarray:
    """The normal of a slice view (``vtkMRMLSliceNode``) in RAS: the third column of its SliceToRAS."""
    slice_to_ras = slice_node.GetSliceToRAS()
    return np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])


def view_axis_ijk(volume_node, slice_node) -> int:
    """The IJK axis of ``volume_node`` that the slice view ``slice_node`` looks along (its slices are normal
    to it). The node's own directions; parent transforms are not applied."""
    return view_normal_axis_ijk(ijk_to_ras_directions(volume_node), slice_normal_ras(slice_node))
