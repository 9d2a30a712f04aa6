"""Slicer-side logic against real MRML (slicer-core wheel): volume node -> session -> segment, masking,
undo, the worker thread. No Qt, no Slicer application."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[test]')")
import slicer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "IMISSegment"))

from conftest import SYNTH_CENTRE, SYNTH_SPACING, synthetic_ct_volume, synthetic_sphere_mask  # noqa: E402
from IMISSegmentLib import CancelledError, InteractiveSession  # noqa: E402
from IMISSegmentLib.engines.base import Engine, SliceResult  # noqa: E402
from IMISSegmentLib.io.volume import Volume, ijk_to_lps  # noqa: E402
from IMISSegmentSlicer import (IMISSegmentMRMLLogic, ijk_to_ras_matrix, ras_to_ijk,  # noqa: E402
                               session_axis_from_ijk_normal, volume_from_node, volume_node_from_volume)
from IMISSegmentSlicer.logic import BusyError  # noqa: E402
from IMISSegmentSlicer.mrml import oriented_image  # noqa: E402

# an oblique, orthonormal direction (columns: i, j, k axes in LPS) and an origin away from 0
DIRECTION = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
ORIGIN = (12.5, -40.25, 7.0)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def reference_volume():
    return Volume(synthetic_ct_volume(), SYNTH_SPACING, ORIGIN, tuple(DIRECTION.ravel()))


@pytest.fixture
def volume_node(scene, reference_volume):
    return volume_node_from_volume(reference_volume, scene, "synthetic")


@pytest.fixture
def logic(scene, volume_node, growcut_engine):
    logic = IMISSegmentMRMLLogic(scene, model=growcut_engine)
    logic.setup(volume_node, segment_name="sphere")
    yield logic
    logic.shutdown()


def _add_other_segment(logic, region, name="other"):
    """A second segment filling ``region`` (k, j, i slices), written straight into the segmentation."""
    segmentation = logic.segmentation_node.GetSegmentation()
    other = segmentation.AddEmptySegment("", name)
    values = np.ones(tuple(s.stop - s.start for s in region), np.uint8)
    image = oriented_image(logic.volume_node, region, values)
    editor = logic.editor_logic   # as a user painting it: an Add through the Segment Editor logic
    editor.ModifySegmentByLabelmap(logic.segmentation_node, other, image, editor.ModificationModeAdd,
                                   image.GetExtent(), True, True)
    from IMISSegmentSlicer import export_segment_array
    expected = np.zeros(logic.shape, np.uint8)
    expected[region] = 1
    assert np.array_equal(export_segment_array(logic.segmentation_node, other, logic.volume_node), expected)
    return other, expected


def test_volume_node_geometry_round_trip(volume_node, reference_volume):
    """LPS Volume -> RAS node -> LPS Volume keeps voxels, spacing, origin and the oblique direction."""
    back = volume_from_node(volume_node)
    assert np.array_equal(back.array, reference_volume.array)
    assert back.spacing == pytest.approx(reference_volume.spacing, abs=1e-12)
    np.testing.assert_allclose(ijk_to_lps(back), ijk_to_lps(reference_volume), atol=1e-12)
    ras = ijk_to_ras_matrix(volume_node)
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ ijk_to_lps(reference_volume), ras, atol=1e-12)
    # RAS -> IJK lands on the voxel, and a view normal picks the session axis
    ijk = (5, 7, 3)
    point = ras @ np.array([*ijk, 1.0])
    assert ras_to_ijk(volume_node, point[:3]) == ijk
    assert session_axis_from_ijk_normal((0.1, 0.0, -0.9)) == 0
    assert session_axis_from_ijk_normal((0.0, 1.0, 0.2)) == 1
    assert session_axis_from_ijk_normal((1.0, 0.0, 0.0)) == 2


def test_session_result_lands_in_segment_with_volume_geometry(logic, volume_node):
    k, j, i = SYNTH_CENTRE
    update = logic.add_click_ijk((i, j, k), positive=True, normal_axis_ijk=2)   # axial view: session axis 0
    assert update.axis == 0 and update.index == k and update.changed_voxels > 0
    assert np.array_equal(logic.segment_array(), logic.result)
    logic.propagate()
    result = logic.result
    assert np.count_nonzero(result[:k]) and np.count_nonzero(result[k + 1:])      # carried off the slice
    assert np.array_equal(logic.segment_array(), result)
    # the segment's own labelmap sits on the volume's grid: same IJK-to-RAS, no resampling involved
    labelmap = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        logic.segmentation_node, logic.segment_id, labelmap)
    import vtk
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                               ijk_to_ras_matrix(volume_node), atol=1e-9)
    # and a session run alone on the same array agrees voxel for voxel
    alone = InteractiveSession(logic.engine)
    alone.set_volume(synthetic_ct_volume(), spacing=SYNTH_SPACING)
    alone.add_click(SYNTH_CENTRE, positive=True, axis=0)
    alone.propagate()
    assert np.array_equal(alone.result, logic.segment_array())
    dice = 2 * np.count_nonzero(result & synthetic_sphere_mask()) / (result.sum() + synthetic_sphere_mask().sum())
    assert dice > 0.8
    assert logic.segmentation_node.GetSegmentation().GetSegment(logic.segment_id).GetName() == "sphere"


def test_box_in_ijk_matches_session_box(logic):
    k = SYNTH_CENTRE[0]
    update = logic.add_box_ijk((18, 20, k), (44, 46, k), normal_axis_ijk=2)
    assert update.axis == 0 and update.index == k
    box = logic.session.prompts[-1]
    assert (box.axis, box.slice_index) == (0, k)
    assert np.array_equal(logic.segment_array(), logic.result)


def test_overwrite_off_leaves_other_segment_untouched(logic):
    other, expected = _add_other_segment(logic, (slice(4, 9), slice(25, 40), slice(25, 40)))
    logic.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.propagate()
    from IMISSegmentSlicer import export_segment_array
    assert np.array_equal(export_segment_array(logic.segmentation_node, other, logic.volume_node), expected)
    assert np.array_equal(logic.segment_array(), logic.result)          # overlap allowed: both hold it
    assert np.count_nonzero(logic.result & expected) > 0


def test_overwrite_on_removes_overlap_from_other_segment(logic):
    other, expected = _add_other_segment(logic, (slice(4, 9), slice(25, 40), slice(25, 40)))
    logic.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.propagate()
    from IMISSegmentSlicer import export_segment_array
    now = export_segment_array(logic.segmentation_node, other, logic.volume_node)
    ours = logic.result > 0
    assert np.count_nonzero(ours & (expected > 0)) > 0
    assert not np.any(now[ours]) and np.array_equal(now[~ours], expected[~ours])
    assert np.array_equal(logic.segment_array(), logic.result)


@pytest.mark.parametrize("overwrite", ["all", "none"])
def test_undo_and_reset_give_other_segments_back_what_imis_took(logic, overwrite):
    """With "overwrite all segments" (Slicer's default) IMIS's additions take voxels from other segments;
    undoing them, or a reset, gives those voxels back; with "overwrite none" nothing is taken at all."""
    from IMISSegmentSlicer import export_segment_array
    other, expected = _add_other_segment(logic, (slice(4, 9), slice(25, 40), slice(25, 40)))
    mode = {"all": slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments,
            "none": slicer.vtkMRMLSegmentEditorNode.OverwriteNone}[overwrite]
    logic.editor_node.SetOverwriteMode(mode)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.propagate()
    now = export_segment_array(logic.segmentation_node, other, logic.volume_node)
    assert bool(np.count_nonzero(now) < np.count_nonzero(expected)) == (overwrite == "all")
    assert logic.undo()     # the propagation: what it took comes back, what the click took stays taken
    now = export_segment_array(logic.segmentation_node, other, logic.volume_node)
    assert np.array_equal(now[logic.result == 0], expected[logic.result == 0])
    logic.add_click((SYNTH_CENTRE[0] + 1, SYNTH_CENTRE[1], SYNTH_CENTRE[2]), positive=True, axis=0)
    logic.propagate()
    logic.reset()
    assert np.array_equal(export_segment_array(logic.segmentation_node, other, logic.volume_node), expected)
    assert not logic.segment_array().any() and logic.editor_node.GetOverwriteMode() == mode


def test_the_segments_own_voxels_survive_undo_reset_and_accept(scene, volume_node, growcut_engine):
    """IMIS bound to a segment the user had painted: undo and reset take back only what IMIS added, never the
    painted voxels (even where IMIS turned them on too), nor what was accepted before."""
    logic = IMISSegmentMRMLLogic(scene, model=growcut_engine)
    painted_id = logic.setup(volume_node, segment_name="liver")
    region = (slice(5, 8), slice(28, 36), slice(26, 34))              # overlaps the sphere IMIS will find
    image = oriented_image(volume_node, region, np.ones((3, 8, 8), np.uint8))
    logic.editor_logic.ModifySegmentByLabelmap(logic.segmentation_node, painted_id, image,
                                               logic.editor_logic.ModificationModeAdd, image.GetExtent(), True, True)
    logic.setup(volume_node, logic.segmentation_node, segment_id=painted_id)
    painted = logic.segment_array().astype(bool)
    assert painted.sum() == 192
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    assert (logic.segment_array().astype(bool) & logic.result.astype(bool) & painted).any()
    logic.undo()
    assert np.array_equal(logic.segment_array().astype(bool), painted)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.propagate()
    logic.reset()
    assert np.array_equal(logic.segment_array().astype(bool), painted)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    accepted = logic.segment_array().astype(bool)
    logic.accept()
    logic.add_click((SYNTH_CENTRE[0] + 1, SYNTH_CENTRE[1], SYNTH_CENTRE[2]), positive=True, axis=0)
    logic.undo()
    assert np.array_equal(logic.segment_array().astype(bool), accepted)
    logic.shutdown()


def test_setup_refuses_what_it_cannot_edit_and_keeps_the_working_binding(logic, scene, volume_node):
    """An unknown segment, a segment without its segmentation, or a segmentation stored as closed surfaces:
    a clear error, the scene unchanged, and the logic still bound as before."""
    import vtk
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    surfaces = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(surfaces)
    surfaces.SetSourceRepresentationToClosedSurface()
    sphere = vtk.vtkSphereSource()
    sphere.Update()
    segment = slicer.vtkSegment()
    segment.AddRepresentation("Closed surface", sphere.GetOutput())
    surfaces.GetSegmentation().AddSegment(segment, "model")
    nodes = scene.GetNumberOfNodes()
    bad = {"unknown segment": ((volume_node, logic.segmentation_node, "NoSuchSegment"), "has no segment"),
           "segment without segmentation": ((volume_node, None, "NoSuchSegment"), "without its segmentation"),
           "closed surfaces": ((volume_node, surfaces, None), "stored as 'Closed surface'")}
    for args, message in bad.values():
        with pytest.raises(ValueError, match=message):
            logic.setup(*args)
        assert scene.GetNumberOfNodes() == nodes
    logic.add_click((SYNTH_CENTRE[0], SYNTH_CENTRE[1], SYNTH_CENTRE[2] + 8), positive=False, axis=0)
    assert np.array_equal(logic.segment_array(), logic.result)


def test_a_refused_write_or_an_empty_propagation_leaves_the_session_as_it_was(logic):
    with pytest.raises(ValueError, match="nothing to propagate"):
        logic.propagate_async()       # at once, not later from the worker thread
    assert not logic.busy
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.segmentation_node.GetSegmentation().RemoveSegment(logic.segment_id)
    before = logic.result.copy()
    with pytest.raises(ValueError, match="was removed"):
        logic.add_click((SYNTH_CENTRE[0], SYNTH_CENTRE[1], SYNTH_CENTRE[2] + 8), positive=False, axis=0)
    assert len(logic.session.prompts) == 1 and np.array_equal(logic.result, before)


def test_slicer_indices_are_checked_and_rounded_and_a_closed_logic_says_so(logic):
    k, j, i = SYNTH_CENTRE
    bad = {"two values": ((i, j), 2), "nan": ((i, float("nan"), k), 2), "words": (("a", j, k), 2),
           "axis 3": ((i, j, k), 3), "axis True": ((i, j, k), True)}
    for ijk, axis in bad.values():
        with pytest.raises(ValueError, match="three finite voxel indices|normal_axis_ijk"):
            logic.add_click_ijk(ijk, normal_axis_ijk=axis)
    assert not logic.session.prompts
    logic.add_click_ijk((i + 0.6, j - 0.4, k + 0.2), normal_axis_ijk=2.0)   # xyToIjk gives fractions
    assert logic.session.prompts[0].point == (k, j, i + 1)
    logic.shutdown()
    for call in (lambda: logic.add_click(SYNTH_CENTRE), logic.propagate_async,
                 lambda: logic.setup(logic.volume_node)):
        with pytest.raises(ValueError, match="shut down"):
            call()
    logic.shutdown()                      # twice is harmless


def test_a_segmentation_removed_from_the_scene_is_not_written_into(logic, scene):
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    scene.RemoveNode(logic.segmentation_node)
    with pytest.raises(ValueError, match="removed from the scene"):
        logic.add_click((SYNTH_CENTRE[0], SYNTH_CENTRE[1], SYNTH_CENTRE[2] + 8), positive=False, axis=0)
    assert len(logic.session.prompts) == 1


def test_a_write_that_fails_part_way_leaves_the_segment_and_the_session_agreeing(logic):
    """A box over the sphere's other half replaces the first box's answer: its write adds (the new half) and
    removes (the old half); the Remove fails once (an MRML error): the session step is undone and the Add taken
    back, so the segment is the session's result again, and the next steps work."""
    editor = logic.editor_logic
    failures = []

    def modify(modifier, mode, extent):   # the effect's hook, failing the first Remove
        if mode == "remove" and not failures:
            failures.append(mode)
            raise RuntimeError("MRML could not modify the segment")
        editor.ModifySegmentByLabelmap(logic.segmentation_node, logic.segment_id, modifier,
                                       editor.ModificationModeAdd if mode == "add" else editor.ModificationModeRemove,
                                       extent, True, False)

    k, j, i = SYNTH_CENTRE
    logic.add_box(k, (j - 12, i - 12), (j + 12, i))
    before = logic.result.copy()
    logic.modify_segment = modify
    with pytest.raises(RuntimeError, match="could not modify"):
        logic.add_box(k, (j - 12, i), (j + 12, i + 12))
    assert failures and len(logic.session.prompts) == 1
    np.testing.assert_array_equal(logic.result, before)
    np.testing.assert_array_equal(logic.segment_array(), logic.result)
    logic.propagate()
    assert logic.undo() and logic.undo()
    assert not logic.segment_array().any()


def test_a_segment_reaching_past_the_volume_exports_on_the_volume_grid(logic, scene, reference_volume):
    """The segment spans i 30..49; a volume node on the same grid but only i < 40 reads its part of it."""
    from IMISSegmentSlicer import export_segment_array
    region = (slice(5, 8), slice(28, 36), slice(30, 50))
    image = oriented_image(logic.volume_node, region, np.ones((3, 8, 20), np.uint8))
    logic.editor_logic.ModifySegmentByLabelmap(logic.segmentation_node, logic.segment_id, image,
                                               logic.editor_logic.ModificationModeAdd, image.GetExtent(), True, True)
    cropped = Volume(reference_volume.array[:, :, :40].copy(), reference_volume.spacing, reference_volume.origin,
                     reference_volume.direction)
    part = export_segment_array(logic.segmentation_node, logic.segment_id, volume_node_from_volume(cropped, scene))
    assert part.shape == cropped.shape and part.sum() == 3 * 8 * 10 and part[5:8, 28:36, 30:40].all()


def test_editable_area_restricts_the_write(logic):
    region = (slice(0, 12), slice(0, 64), slice(0, 30))              # left half of the volume
    other, expected = _add_other_segment(logic, region, "editable")
    logic.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    logic.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    logic.editor_node.SetMaskSegmentID(other)
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    segment = logic.segment_array()
    result = logic.result
    assert np.count_nonzero(result[..., 30:]) > 0                        # the session segments both halves
    assert not segment[..., 30:].any()                                   # the segment only where editable
    assert np.array_equal(segment[..., :30], result[..., :30])


def test_undo_through_segment_editor_history_and_session(logic):
    first = logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    after_click = logic.segment_array().copy()
    logic.propagate()
    assert logic.segment_array().sum() > after_click.sum()
    # the Segment Editor's own undo (Ctrl+Z in Slicer) restores the segment as it was before the write
    assert logic.editor_logic.CanUndo()
    logic.editor_logic.Undo()
    assert np.array_equal(logic.segment_array(), after_click)
    logic.editor_logic.Redo()
    assert np.array_equal(logic.segment_array(), logic.result)
    # the logic's undo takes the session back and the segment with it
    assert logic.undo()
    assert np.array_equal(logic.result, after_click)
    assert np.array_equal(logic.segment_array(), after_click)
    assert logic.undo() and not logic.result.any() and not logic.segment_array().any()
    assert not logic.undo()
    assert first.changed_voxels > 0


def test_undo_round_takes_segment_back_to_the_previous_round(logic):
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.propagate()
    round_one = logic.segment_array().copy()
    logic.add_click((SYNTH_CENTRE[0] + 2, SYNTH_CENTRE[1], SYNTH_CENTRE[2] + 8), positive=False, axis=0)
    logic.propagate()
    assert not np.array_equal(logic.segment_array(), round_one)
    assert logic.undo_round()
    assert np.array_equal(logic.result, round_one) and np.array_equal(logic.segment_array(), round_one)
    assert len(logic.session.prompts) == 1
    # the fusion switch: the model's default (Grow from Seeds cannot fuse: off) until chosen, then it reaches
    # the session and outlives a new setup
    assert not logic.can_fuse and logic.fusion is False
    logic.fusion = True
    assert logic.session.fusion is True
    logic.setup(logic.volume_node, segment_name="again")
    assert logic.session.fusion is True and logic.fusion is True


def test_reset_and_accept(logic):
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    logic.reset()
    assert not logic.segment_array().any()
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    kept = logic.segment_array().copy()
    assert logic.accept() == logic.segment_id
    assert not logic.result.any() and np.array_equal(logic.segment_array(), kept)   # segment kept as is


def test_propagation_runs_on_one_worker_thread_and_applies_on_poll(logic):
    logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    before = logic.segment_array().copy()
    job = logic.propagate_async()
    assert logic.busy
    with pytest.raises(BusyError):
        logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
    job.future.exception(timeout=30)
    assert np.array_equal(logic.segment_array(), before)        # nothing written from the worker
    assert logic.poll() is job and job.error is None and not logic.busy
    assert np.array_equal(logic.segment_array(), logic.result) and logic.result.sum() > before.sum()
    logic.add_click((SYNTH_CENTRE[0], 32, 40), positive=True, axis=0)
    logic.propagate()
    assert len(logic.worker_thread_ids) == 1 and threading.get_ident() not in logic.worker_thread_ids


class _SlowEngine(Engine):
    """Fills a square on the prompted slice; 'propagates' slowly, checking cancel between slices."""

    name = "slow"
    capabilities = frozenset({"click", "propagate"})

    def __init__(self):
        super().__init__()
        self.started = threading.Event()

    def predict_slice(self, request):
        mask = np.zeros(request.raw.shape, bool)
        r, c, _ = request.clicks[-1]
        mask[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4] = True
        return SliceResult(mask)

    def propagate(self, request, progress=None, cancelled=None):
        result = request.result.copy()
        template = next(iter(request.prompted.values()))
        self.started.set()
        total = result.shape[0]
        for k in range(total):
            for _ in range(50):
                if cancelled is not None and cancelled():
                    raise CancelledError("propagation cancelled")
                threading.Event().wait(0.002)
            result[k][template] = 1
            if progress is not None:
                progress(k + 1, total)
        return result


def test_cancel_leaves_previous_segment_intact(scene, volume_node):
    engine = _SlowEngine()
    logic = IMISSegmentMRMLLogic(scene, model=engine)
    try:
        logic.setup(volume_node, segment_name="slow")
        logic.add_click(SYNTH_CENTRE, positive=True, axis=0)
        before_segment, before_result = logic.segment_array().copy(), logic.result.copy()
        job = logic.propagate_async()
        assert engine.started.wait(10)
        job.cancel()
        with pytest.raises(CancelledError):
            logic.wait(job, timeout=30)
        assert job.cancelled and not logic.busy
        assert np.array_equal(logic.result, before_result)
        assert np.array_equal(logic.segment_array(), before_segment)
        # and afterwards a full propagation works, reporting progress on the calling thread
        seen = []
        logic.propagate(progress=lambda done, total: seen.append((threading.get_ident(), done, total)))
        assert seen and seen[-1][1:] == (logic.shape[0], logic.shape[0])
        assert all(thread == threading.get_ident() for thread, _, _ in seen)
        assert np.array_equal(logic.segment_array(), logic.result) and logic.result.sum() > before_result.sum()
        # a blocking propagate cancelled through its callback raises and changes nothing
        logic.add_click((SYNTH_CENTRE[0], 20, 20), positive=True, axis=0)
        snapshot = logic.segment_array().copy()
        with pytest.raises(CancelledError):
            logic.propagate(cancelled=lambda: True)
        assert np.array_equal(logic.segment_array(), snapshot)
    finally:
        logic.shutdown()
