"""Which IJK axis of a volume a slice view looks along (IMISSegmentSlicer.views), on real MRML volume and slice
nodes (slicer-core wheel): the axis nearest the view's normal, whatever the spacing, tilt, flip or axis order."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[test]')")
import slicer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "IMISSegment"))

from IMISSegmentLib.errors import InputError  # noqa: E402
from IMISSegmentSlicer.views import (ijk_to_ras_directions, slice_normal_ras, view_axis_ijk,  # noqa: E402
                                     view_normal_axis_ijk)

VIEWS = ("Axial", "Coronal", "Sagittal")          # the Red, Green and Yellow views' default orientations
# columns: the i, j, k axes in RAS
AXIAL_ACQUIRED = np.eye(3)                                       # k along S: axial slices
FLIPPED = np.diag([-1.0, -1.0, 1.0])                             # LPS-like: i to the left, j to the back
CORONAL_ACQUIRED = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])     # i R, j I (down), k A
SAGITTAL_ACQUIRED = np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])    # i A, j I, k R


def _tilt(degrees: float) -> np.ndarray:
    """A gantry tilt: rotation about R (x) by ``degrees``."""
    t = np.radians(degrees)
    return np.array([[1.0, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    return scene


def _volume_node(scene, directions, spacing=(0.7, 0.7, 5.0)):
    """A scalar volume node with ``directions`` (columns i, j, k in RAS) and ``spacing`` (i, j, k in mm): thick
    slices along k by default."""
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    node.SetIJKToRASDirections(np.asarray(directions, float).tolist())
    node.SetSpacing(*spacing)
    node.SetOrigin(-12.5, 30.0, 7.25)
    return node


def _slice_node(scene, orientation):
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert node.SetOrientation(orientation)
    return node


@pytest.mark.parametrize("tilt", [0, 5, 10, 30])
@pytest.mark.parametrize("directions, expected", [
    (AXIAL_ACQUIRED, {"Axial": 2, "Coronal": 1, "Sagittal": 0}),
    (FLIPPED, {"Axial": 2, "Coronal": 1, "Sagittal": 0}),
    (CORONAL_ACQUIRED, {"Axial": 1, "Coronal": 2, "Sagittal": 0}),
    (SAGITTAL_ACQUIRED, {"Axial": 1, "Coronal": 0, "Sagittal": 2}),
], ids=["axial", "flipped", "coronal-acquired", "sagittal-acquired"])
def test_each_view_looks_along_the_nearest_ijk_axis(scene, tilt, directions, expected):
    """5 mm slices, 0.7 mm pixels: the axial view of a 10 degree tilted axial volume is on its k slices (the
    effect used to send it as a j-slice click: RASToIJK's 1/spacing favoured the thin j axis)."""
    volume = _volume_node(scene, _tilt(tilt) @ directions)
    assert {view: view_axis_ijk(volume, _slice_node(scene, view)) for view in VIEWS} == expected


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 5.0), (5.0, 0.7, 0.7), (0.5, 3.0, 1.0), (1.0, 1.0, 1.0)])
def test_spacing_plays_no_part(scene, spacing):
    volume = _volume_node(scene, _tilt(30) @ CORONAL_ACQUIRED, spacing)
    assert [view_axis_ijk(volume, _slice_node(scene, view)) for view in VIEWS] == [1, 2, 0]


def test_a_view_rotated_to_the_volume_looks_along_k(scene):
    """Slicer's "rotate to volume plane" on an oblique, thick-sliced volume: the view's normal is the k axis."""
    directions = _tilt(30) @ np.array([[0.8, 0, 0.6], [0, 1, 0], [-0.6, 0, 0.8]]) @ FLIPPED
    volume = _volume_node(scene, directions)
    view = _slice_node(scene, "Axial")
    k, j = directions[:, 2], directions[:, 1]
    view.SetSliceToRASByNTP(*k, *j, 0.0, 0.0, 0.0, 0)
    np.testing.assert_allclose(slice_normal_ras(view), k, atol=1e-9)
    assert view_axis_ijk(volume, view) == 2
    # 40 degrees from k towards the thin j axis is still nearer k
    t = np.radians(40)
    view.SetSliceToRASByNTP(*(np.cos(t) * k + np.sin(t) * j), *directions[:, 0], 0.0, 0.0, 0.0, 0)
    assert view_axis_ijk(volume, view) == 2


def test_directions_come_from_the_node_without_spacing(scene):
    directions = _tilt(10) @ SAGITTAL_ACQUIRED
    volume = _volume_node(scene, directions, (0.3, 0.9, 4.0))
    np.testing.assert_allclose(ijk_to_ras_directions(volume), directions, atol=1e-12)
    np.testing.assert_allclose(slice_normal_ras(_slice_node(scene, "Sagittal")), [-1.0, 0.0, 0.0], atol=1e-12)


def test_the_pure_function_normalises_its_inputs():
    """Columns scaled by the spacing (an IJK-to-RAS matrix) and a normal of any length give the same axis."""
    directions = _tilt(10)
    scaled = directions * np.array([0.7, 0.7, 5.0])
    assert view_normal_axis_ijk(directions, (0, 0, 1)) == view_normal_axis_ijk(scaled, (0, 0, -7.5)) == 2
    assert view_normal_axis_ijk(scaled, (0, 3, 0)) == 1 and view_normal_axis_ijk(scaled, (-2, 0, 0)) == 0


@pytest.mark.parametrize("directions, normal, message", [
    (np.eye(3), (0, 0, 0), "view normal"),
    (np.eye(3), (0, np.nan, 1), "view normal"),
    (np.eye(3), (0, 1), "view normal"),
    (np.eye(2), (0, 0, 1), "3 x 3"),
    (np.diag([1.0, 1.0, 0.0]), (0, 0, 1), "zero column"),
    (np.diag([1.0, np.inf, 1.0]), (0, 0, 1), "3 x 3"),
])
def test_bad_input_is_an_input_error(directions, normal, message):
    with pytest.raises(InputError, match=message):
        view_normal_axis_ijk(directions, normal)
