"""``IMISSegmentMRMLLogic``: one InteractiveSession bound to a volume node and a segment.

* The session sees the volume node's voxels as (K, J, I) with spacing per array axis.
* Every change of the session's result is written into the segment through the Segment Editor logic
  (``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``, what ``modifySelectedSegmentByLabelmap``
  does in an effect), so the editable area, the overwrite mode and the intensity range of the Segment
  Editor apply, and each write is one Segment Editor undo step. Only the changed box is written, as two
  modifier labelmaps: voxels turned on (mode Add) and voxels turned off (mode Remove); voxels of the
  segment the session never set (painted with another effect) are left alone, and so are the voxels the
  segment held before IMIS was bound to it, even where IMIS also set them: undo and reset take back only
  what IMIS added. Voxels an addition took from other segments (the Segment Editor's overwrite mode) are
  given back to them when IMIS removes that addition again.
* Propagation runs on one persistent worker thread owned by the logic. The worker only calls the
  session (never MRML, never Qt); its result is written on the caller's thread by :meth:`poll`
  (called from a GUI timer) or :meth:`wait`. Cancel goes through the session's ``cancelled`` callback,
  so a cancelled propagation changes nothing.

The prompt methods take array indices (k, j, i) with the session's names and signatures, so the
evaluation protocol (``IMISSegmentLib.evaluation.protocol.run_3d``) can drive the logic as it drives a
session; the ``*_ijk`` variants take Slicer's (i, j, k) voxel indices (what ``xyToIjk`` gives).
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from IMISSegmentLib import CancelledError, InputError, InteractiveSession
from IMISSegmentLib.session import PropagationUpdate

from .mrml import (array_from_volume_node, ensure_segmentation_converters, export_other_segments, export_segment_array,
                   oriented_image, session_axis_from_ijk_normal, spacing_kji)


class BusyError(RuntimeError):
    """A propagation is running: wait for it or cancel it before changing the session."""


def _bounding_region(mask: np.ndarray, offset=(0, 0, 0)):
    """Tuple of slices bounding the True voxels of ``mask`` (shifted by ``offset``), or None."""
    where = np.argwhere(mask)
    if where.size == 0:
        return None
    lo, hi = where.min(0), where.max(0) + 1
    return tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(lo, hi, offset))


def _voxel(ijk, what: str) -> tuple:
    """(i, j, k) as the nearest whole voxel indices (what ``xyToIjk`` gives is fractional); InputError unless
    three finite numbers."""
    try:
        values = [float(v) for v in ijk]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"{what} must be three finite voxel indices (i, j, k), got {ijk!r}")
    return tuple(int(np.floor(v + 0.5)) for v in values)


def _check_segmentation(segmentation_node, segment_id) -> None:
    """InputError unless IMIS can write ``segment_id`` (when given) of ``segmentation_node``: the segment exists
    and the segmentation holds binary labelmaps (or nothing yet)."""
    slicer = __import__("slicer")
    segmentation = segmentation_node.GetSegmentation()
    if segment_id is not None and segmentation.GetSegment(segment_id) is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}'")
    source = (segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName")
              else segmentation.GetMasterRepresentationName())
    binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if source != binary and segmentation.GetNumberOfSegments() > 0:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is stored as '{source}', and IMIS edits "
                         f"binary labelmaps: convert it first (Segmentations module: Representations, or the "
                         f"Segment Editor offers it when an effect starts)")


class PropagationJob:
    """A propagation on the logic's worker thread. Read ``progress`` / ``done`` from any thread;
    ``cancel()`` asks the session to stop (the result then stays as it was)."""

    def __init__(self) -> None:
        self.future = None
        self._cancel = threading.Event()
        self._progress = (0, 0)
        self._lock = threading.Lock()
        self.applied = False
        self.update: Optional[PropagationUpdate] = None
        self.error: Optional[BaseException] = None

    # called on the worker thread
    def _report(self, done, total) -> None:
        with self._lock:
            self._progress = (int(done), int(total))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def progress(self) -> tuple:
        """(done, total) as last reported by the engine; (0, 0) before the first report."""
        with self._lock:
            return self._progress

    @property
    def fraction(self) -> float:
        done, total = self.progress
        return done / total if total else 0.0

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, CancelledError)


class IMISSegmentMRMLLogic:
    """Drives an InteractiveSession from MRML nodes and writes its result into a segment.

    >>> logic = IMISSegmentMRMLLogic(scene)                 # model: load_model() by default
    >>> segment_id = logic.setup(volume_node, segmentation_node, segment_name="liver")
    >>> logic.add_click_ijk((i, j, k), positive=True, normal_axis_ijk=2)   # the segment updates at once
    >>> job = logic.propagate_async(); ...; logic.poll()     # or logic.propagate() to block
    """

    def __init__(self, scene=None, model=None, device: str = "auto") -> None:
        if scene is None:
            from .mrml import has_slicer_app
            if has_slicer_app():
                import slicer
                scene = slicer.mrmlScene
            else:
                import slicer
                scene = slicer.vtkMRMLScene()
        self.scene = scene
        self._model = model
        self.device = device
        self._fusion = None   # None: the model's default
        self.session: Optional[InteractiveSession] = None
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id: Optional[str] = None
        self.editor_node = None
        self.editor_logic = None
        self._owns_editor_node = False
        self._written: Optional[np.ndarray] = None      # what this logic has written into the segment
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="IMISSegmentWorker")
        self._job: Optional[PropagationJob] = None
        self.worker_thread_ids: set = set()              # threads propagation ran on (for tests and logs)
        # Write hooks. Headless they go to this logic's own vtkSlicerSegmentEditorLogic; the Segment Editor
        # effect points them at its scriptedEffect (saveStateForUndo / modifySelectedSegmentByLabelmap)
        # so the writes join the Segment Editor widget's own undo history.
        self.save_state_for_undo = None      # callable() or None
        self.modify_segment = None           # callable(modifier_labelmap, "add" | "remove", extent) or None

    # -- set-up -----------------------------------------------------------------------------------
    @property
    def engine(self):
        return self._session().engine

    @property
    def model(self):
        if self._model is None:
            from IMISSegmentLib import load_model
            self._model = load_model(device=self.device)
        return self._model

    def setup(self, volume_node, segmentation_node=None, segment_id: Optional[str] = None,
              segment_name: Optional[str] = None, editor_node=None) -> str:
        """Bind the session to ``volume_node`` and a segment; returns the segment's ID.

        ``segmentation_node``: None creates one whose geometry is the volume's. ``segment_id``: an existing
        segment, else a new segment named ``segment_name`` (default "IMIS") is added. ``editor_node``: the
        Segment Editor's parameter node whose masking / overwrite settings apply (None: a private one,
        editing allowed everywhere, overwriting other segments as Slicer's default does).
        """
        self._require_idle()
        from .dependencies import unsupported_slicer_reason
        too_old = unsupported_slicer_reason()
        if too_old is not None:
            raise InputError(too_old)
        ensure_segmentation_converters()
        slicer = __import__("slicer")
        array = array_from_volume_node(volume_node)
        session = InteractiveSession(self.model, device=self.device, fusion=self._fusion)
        session.set_volume(array, spacing=spacing_kji(volume_node))
        if segmentation_node is not None:
            _check_segmentation(segmentation_node, segment_id)    # before anything in the scene changes
        elif segment_id is not None:
            raise InputError(f"segment '{segment_id}' was given without its segmentation node")
        if segmentation_node is None:
            segmentation_node = slicer.vtkMRMLSegmentationNode()
            segmentation_node.SetName((volume_node.GetName() or "Volume") + " IMIS segmentation")
            self.scene.AddNode(segmentation_node)
            segmentation_node.CreateDefaultDisplayNodes()
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        elif not segmentation_node.GetNodeReference(
                slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) \
                and segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if self._owns_editor_node and self.editor_node is not None and self.editor_node.GetScene() is not None:
            self.scene.RemoveNode(self.editor_node)       # the private one of a previous setup
            self.editor_node = None
        self._owns_editor_node = editor_node is None
        if editor_node is None:
            editor_node = slicer.vtkMRMLSegmentEditorNode()
            self.scene.AddNode(editor_node)
        editor_node.SetAndObserveSegmentationNode(segmentation_node)
        editor_node.SetAndObserveSourceVolumeNode(volume_node)
        editor_logic = slicer.vtkSlicerSegmentEditorLogic()
        editor_logic.SetMRMLScene(self.scene)
        editor_logic.SetSegmentEditorNode(editor_node)
        editor_logic.SetSourceVolumeNode(volume_node)
        if editor_logic.CanTriviallyConvertSourceRepresentationToBinaryLabelMap():
            editor_logic.TrivialSetSourceRepresentationToBinaryLabelmap()
        segmentation = segmentation_node.GetSegmentation()
        existing = segment_id is not None
        if not existing:
            segment_id = segmentation.AddEmptySegment("", segment_name or "IMIS")
        editor_node.SetSelectedSegmentID(segment_id)
        self.session, self.volume_node, self.segmentation_node = session, volume_node, segmentation_node
        self.segment_id, self.editor_node, self.editor_logic = segment_id, editor_node, editor_logic
        self._written = np.zeros(array.shape, np.uint8)
        # the segment's own voxels: undo and reset never remove them, whatever IMIS did on top of them
        self._kept = (export_segment_array(segmentation_node, segment_id, volume_node) > 0 if existing
                      else np.zeros(array.shape, bool))
        self._taken = {}
        return segment_id

    def _session(self) -> InteractiveSession:
        if self.session is None:
            raise InputError("no volume: call setup(volume_node, ...) first")
        return self.session

    def _require_idle(self) -> None:
        if self._executor is None:
            raise InputError("this IMIS logic was shut down; make a new one")
        if self.busy:
            raise BusyError("a propagation is running; wait for it to finish or cancel it first")

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.applied

    # -- session-shaped API (array indices k, j, i) -----------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._session().shape

    @property
    def result(self) -> np.ndarray:
        """The session's current mask (uint8, K x J x I); the segment holds it too, less what masking kept out."""
        return self._session().result

    @property
    def can_propagate(self) -> bool:
        return self._session().can_propagate

    @property
    def can_fuse(self) -> bool:
        return self._session().can_fuse

    @property
    def fusion(self) -> bool:
        """Multi-round fusion of each propagation with the previous round's result (a choice made here is kept
        across setups; until then the model's default)."""
        if self._fusion is None and self.session is not None:
            return self.session.fusion
        return bool(self._fusion)

    @fusion.setter
    def fusion(self, value: bool) -> None:
        self._require_idle()
        self._fusion = bool(value)
        if self.session is not None:
            self.session.fusion = self._fusion

    def add_click(self, point, positive: bool = True, axis: int = 0):
        self._require_idle()
        update = self._session().add_click(point, positive=positive, axis=axis)
        self._sync_or_undo(update.region)
        return update

    def add_box(self, slice_index, corner_a, corner_b, axis: int = 0):
        self._require_idle()
        update = self._session().add_box(slice_index, corner_a, corner_b, axis=axis)
        self._sync_or_undo(update.region)
        return update

    def add_text(self, text, slice_index, axis: int = 0):
        self._require_idle()
        update = self._session().add_text(text, slice_index, axis=axis)
        self._sync_or_undo(update.region)
        return update

    def propagate(self, progress=None, cancelled=None) -> PropagationUpdate:
        """Propagate on the worker thread and wait; ``progress`` and ``cancelled`` are called on this thread.
        Raises CancelledError (nothing changed) when ``cancelled()`` turned True."""
        job = self.propagate_async()
        last = None
        while not job.done:
            if cancelled is not None and cancelled():
                job.cancel()
            if progress is not None and job.progress != last and job.progress[1]:
                last = job.progress
                progress(*last)
            time.sleep(0.01)
        if progress is not None and job.progress != last and job.progress[1]:
            progress(*job.progress)
        return self.wait(job)

    def undo(self) -> bool:
        """Undo the session's last prompt or propagation and bring the segment along (one editor undo step)."""
        self._require_idle()
        if not self._session().undo():
            return False
        self._sync(None)
        return True

    def undo_round(self) -> bool:
        """Undo the last round (its prompts and its propagation) and bring the segment along."""
        self._require_idle()
        if not self._session().undo_round():
            return False
        self._sync(None)
        return True

    def reset(self) -> None:
        """Forget prompts and result; the voxels this logic wrote are removed from the segment."""
        self._require_idle()
        self._session().reset()
        self._sync(None)

    def accept(self) -> str:
        """Keep the segment as it is and start afresh (prompts, result and undo forgotten); returns its ID."""
        self._require_idle()
        self._session().reset()
        self._kept |= self._written > 0    # the segment's own now: a later undo or reset keeps it
        self._written[...] = 0
        self._taken = {}
        return self.segment_id

    def _sync_or_undo(self, region) -> None:
        """Write the session's last step into the segment; if that fails, undo the step in the session too, so
        the session and the segment still agree."""
        try:
            self._sync(region)
        except BaseException:
            self._session().undo()
            with contextlib.suppress(Exception):   # take back what a write that failed part-way did
                self._sync(None)
            raise

    # -- Slicer indices (i, j, k) -----------------------------------------------------------------
    def add_click_ijk(self, ijk, positive: bool = True, normal_axis_ijk: int = 2):
        """A click at voxel (i, j, k) in a view whose normal is IJK axis ``normal_axis_ijk`` (2 = axial-like)."""
        i, j, k = _voxel(ijk, "click")
        return self.add_click((k, j, i), positive=positive, axis=self._axis(normal_axis_ijk))

    def add_box_ijk(self, corner_a_ijk, corner_b_ijk, normal_axis_ijk: int = 2):
        """A box between two voxels (i, j, k) of the same slice normal to IJK axis ``normal_axis_ijk``."""
        axis = self._axis(normal_axis_ijk)
        a = list(reversed(_voxel(corner_a_ijk, "box corner")))          # -> (k, j, i)
        b = list(reversed(_voxel(corner_b_ijk, "box corner")))
        rest = [d for d in range(3) if d != axis]
        return self.add_box(a[axis], (a[rest[0]], a[rest[1]]), (b[rest[0]], b[rest[1]]), axis=axis)

    def add_text_ijk(self, text, slice_index_ijk: int, normal_axis_ijk: int = 2):
        try:
            index = float(slice_index_ijk)
        except (TypeError, ValueError):
            index = float("nan")
        if not np.isfinite(index):
            raise InputError(f"the text prompt's slice index must be a finite number, got {slice_index_ijk!r}")
        return self.add_text(text, int(np.floor(index + 0.5)), axis=self._axis(normal_axis_ijk))  # rounded

    @staticmethod
    def _axis(normal_axis_ijk) -> int:
        if isinstance(normal_axis_ijk, bool) or normal_axis_ijk not in (0, 1, 2):
            raise InputError(f"normal_axis_ijk must be 0 (i), 1 (j) or 2 (k), got {normal_axis_ijk!r}")
        return session_axis_from_ijk_normal(np.eye(3)[int(normal_axis_ijk)])

    # -- propagation on the worker thread ---------------------------------------------------------
    def propagate_async(self) -> PropagationJob:
        """Start propagating on the worker thread; returns at once. Call :meth:`poll` (GUI timer) or
        :meth:`wait` on this thread to write the result into the segment."""
        self._require_idle()
        session = self._session()
        session.propagation_request()     # InputError now (not from the worker) when nothing was prompted
        job = PropagationJob()

        def work():
            self.worker_thread_ids.add(threading.get_ident())
            return session.propagate(progress=job._report, cancelled=job._cancel.is_set)

        job.future = self._executor.submit(work)
        self._job = job
        return job

    @property
    def job(self) -> Optional[PropagationJob]:
        return self._job

    def poll(self) -> Optional[PropagationJob]:
        """Non-blocking, on the main thread: if the running propagation finished, write its result into
        the segment and return the job (``job.error`` holds a failure, CancelledError for a cancel);
        None while it runs or when there is none."""
        job = self._job
        if job is None or job.applied or not job.done:
            return None
        self._finish(job)
        return job

    def wait(self, job: Optional[PropagationJob] = None, timeout: Optional[float] = None) -> PropagationUpdate:
        """Block until the propagation finishes, write it and return its update; re-raises its error."""
        job = job or self._job
        if job is None:
            raise InputError("no propagation to wait for")
        if not job.applied:
            job.future.exception(timeout=timeout)   # waits; TimeoutError if too long
            self._finish(job)
        if job.error is not None:
            raise job.error
        return job.update

    def _finish(self, job: PropagationJob) -> None:
        error = job.future.exception()
        if error is None:
            job.update = job.future.result()
            try:
                self._sync_or_undo(job.update.region)
            except BaseException as write_error:  # keep the job consistent, report on the main thread
                job.error = write_error
        else:
            job.error = error
        job.applied = True

    def cancel(self) -> None:
        if self._job is not None and not self._job.applied:
            self._job.cancel()

    def shutdown(self) -> None:
        """Cancel any propagation and stop the worker thread (module cleanup / scene close)."""
        self.cancel()
        if self._executor is None:
            return
        self._executor.shutdown(wait=True)
        self._executor = None
        if self._job is not None and not self._job.applied and self._job.done:
            self._job.applied = True
        if self._owns_editor_node and self.editor_node is not None and self.editor_node.GetScene() is not None:
            self.scene.RemoveNode(self.editor_node)
            self.editor_node = None

    # -- writing into the segment -----------------------------------------------------------------
    def _sync(self, region) -> None:
        """Write the difference between the session's result and what was written, inside ``region``
        (None: anywhere), through the Segment Editor logic: one undo step, masking applied.

        Voxels the segment held before IMIS (``_kept``) are never removed; voxels an added part took from other
        segments (the overwrite mode) go back to them when IMIS removes that part again (undo, reset)."""
        result = self._session().result
        if region is None:
            region = _bounding_region(result != self._written)
        if region is None:
            return
        new = result[region] > 0
        old = self._written[region] > 0
        turned_on, turned_off = new & ~old, old & ~new & ~self._kept[region]
        if not turned_on.any() and not turned_off.any():
            self._written[region] = new
            return
        editor, segmentation_node = self.editor_logic, self.segmentation_node
        if segmentation_node.GetScene() is None:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' was removed from the scene; "
                             "select a segmentation and start again")
        if segmentation_node.GetSegmentation().GetSegment(self.segment_id) is None:
            raise InputError(f"segment '{self.segment_id}' was removed from '{segmentation_node.GetName()}'; "
                             "select a segment and start again")
        self.editor_node.SetSelectedSegmentID(self.segment_id)
        (self.save_state_for_undo or editor.SaveStateForUndo)()
        taken = self._held_by_others(region, turned_on)
        for segment_id, part in taken:   # recorded first: a write that fails part-way may have taken them
            self._taken.setdefault(segment_id, []).append(part)
        try:
            for values, mode in ((turned_on, "add"), (turned_off, "remove")):
                box = _bounding_region(values)
                if box is None:
                    continue
                modifier_region = tuple(slice(r.start + b.start, r.start + b.stop) for r, b in zip(region, box))
                modifier = oriented_image(self.volume_node, modifier_region, values[box].astype(np.uint8))
                if self.modify_segment is not None:
                    self.modify_segment(modifier, mode, modifier.GetExtent())
                else:
                    editor.ModifySegmentByLabelmap(
                        segmentation_node, self.segment_id, modifier,
                        editor.ModificationModeAdd if mode == "add" else editor.ModificationModeRemove,
                        modifier.GetExtent(), True, False)
            self._give_back(region, turned_off)
        except BaseException:
            # part of it may be written: what IMIS holds is what the segment now has there, less its own voxels
            with contextlib.suppress(Exception):
                held = export_segment_array(segmentation_node, self.segment_id, self.volume_node, region) > 0
                self._written[region] = held & ~self._kept[region]
            raise
        self._written[region] = new

    def _held_by_others(self, region, turned_on) -> list:
        """[(segment ID, (box, mask))]: the voxels about to be added that other segments hold, which the
        Segment Editor's overwrite mode may take from them (none are taken with "overwrite none")."""
        slicer = __import__("slicer")
        box = _bounding_region(turned_on)
        if box is None or self.editor_node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone:
            return []
        absolute = tuple(slice(r.start + b.start, r.start + b.stop) for r, b in zip(region, box))
        held = []
        for segment_id, mask in export_other_segments(self.segmentation_node, self.volume_node, absolute,
                                                      skip=self.segment_id):
            mask &= turned_on[box]
            tight = _bounding_region(mask)   # kept for undo: only the voxels taken, in their own box
            if tight is not None:
                held.append((segment_id, (tuple(slice(a.start + t.start, a.start + t.stop)
                                                 for a, t in zip(absolute, tight)), mask[tight].copy())))
        return held

    def _give_back(self, region, turned_off) -> None:
        """Return to other segments the voxels IMIS took from them and now removes (within ``region``); the
        overwrite mode is off meanwhile, so giving back takes nothing from anyone."""
        if not self._taken or not turned_off.any():
            return
        slicer = __import__("slicer")
        editor, segmentation = self.editor_logic, self.segmentation_node.GetSegmentation()
        overwrite = self.editor_node.GetOverwriteMode()
        self.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
        try:
            for segment_id, parts in list(self._taken.items()):
                if segmentation.GetSegment(segment_id) is None:   # deleted since: nothing to give back to
                    del self._taken[segment_id]
                    continue
                for box, mask in parts:
                    overlap = tuple(slice(max(b.start, r.start), min(b.stop, r.stop)) for b, r in zip(box, region))
                    if any(o.start >= o.stop for o in overlap):
                        continue
                    in_mask = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(overlap, box))
                    in_region = tuple(slice(o.start - r.start, o.stop - r.start) for o, r in zip(overlap, region))
                    back = mask[in_mask] & turned_off[in_region]
                    if back.any():
                        modifier = oriented_image(self.volume_node, overlap, back.astype(np.uint8))
                        editor.ModifySegmentByLabelmap(self.segmentation_node, segment_id, modifier,
                                                       editor.ModificationModeAdd, modifier.GetExtent(), True, True)
                        mask[in_mask] &= ~back
                self._taken[segment_id] = [(box, mask) for box, mask in parts if mask.any()]
        finally:
            self.editor_node.SetOverwriteMode(overwrite)

    def segment_array(self) -> np.ndarray:
        """The segment's voxels on the volume's grid (uint8 0/1, K x J x I), as MRML holds them."""
        return export_segment_array(self.segmentation_node, self.segment_id, self.volume_node)
