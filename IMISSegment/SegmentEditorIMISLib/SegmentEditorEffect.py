"""The "IMIS" Segment Editor effect: thin GUI over IMISSegmentSlicer.IMISSegmentMRMLLogic.

Left click: positive point; Shift + click (or the "Negative" toggle): negative point; left drag: box, drawn as a
rectangle in the view while the mouse moves. Buttons: Propagate, Accept, Undo, Undo round, Reset; with the mouse over a
slice view the keys P, A, U and Shift + U do the same (handled in processInteractionEvents, so they act only while
this effect is active and the mouse is in a view, as the Draw effect's keys do; Z and Y stay the Segment Editor's
undo and redo). Propagation runs on the logic's worker thread with a progress dialog that can cancel it; results are
written on the GUI thread by a timer calling logic.poll().
"""
import logging
import os
import sys

import vtk

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

EFFECT_NAME = "IMIS"
DRAG_THRESHOLD_PX = 5
POLL_INTERVAL_MS = 100


def _add_library_paths():
    """IMISSegmentSlicer sits beside this package; IMISSegmentLib beside it (installed) or one level up (source)."""
    module_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (module_dir, os.path.dirname(module_dir)):
        if os.path.isdir(os.path.join(folder, "IMISSegmentLib")) or os.path.isdir(os.path.join(folder, "IMISSegmentSlicer")):
            if folder not in sys.path:
                sys.path.insert(0, folder)


def _moved(start, end) -> int:
    """How far the mouse went between two xy positions, in pixels (the larger of the two axes)."""
    return max(abs(end[0] - start[0]), abs(end[1] - start[1]))


def _minimum_slicer_version() -> str:
    _add_library_paths()
    from IMISSegmentSlicer.dependencies import MINIMUM_SLICER_VERSION
    return MINIMUM_SLICER_VERSION


class BoxOutline:
    """The rubber band of a box being dragged: a rectangle in a slice view's xy (pixel) coordinates, drawn by a 2D
    actor added to that view's renderer (as Slicer's Draw and Level Tracing effects draw their outlines)."""

    COLOR = (1.0, 0.85, 0.0)

    def __init__(self):
        self.points = vtk.vtkPoints()
        self.points.SetNumberOfPoints(4)
        for index in range(4):
            self.points.SetPoint(index, 0.0, 0.0, 0.0)
        lines = vtk.vtkCellArray()
        lines.InsertNextCell(5)
        for index in (0, 1, 2, 3, 0):
            lines.InsertCellPoint(index)
        self.polyData = vtk.vtkPolyData()
        self.polyData.SetPoints(self.points)
        self.polyData.SetLines(lines)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(*self.COLOR)
        self.actor.GetProperty().SetLineWidth(2)
        self.actor.VisibilityOff()

    def show(self, corner_a, corner_b):
        (x0, y0), (x1, y1) = corner_a[:2], corner_b[:2]
        for index, (x, y) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self.points.SetPoint(index, float(x), float(y), 0.0)
        self.points.Modified()
        self.actor.VisibilityOn()

    def hide(self):
        self.actor.VisibilityOff()

    @property
    def visible(self) -> bool:
        return bool(self.actor.GetVisibility())

    def corners(self):
        """The rectangle's four xy corners (for tests and screenshots)."""
        return [self.points.GetPoint(index)[:2] for index in range(4)]


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Interactive segmentation: prompts on a slice, the result carried through the volume."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME   # not translated: modules find effects by name
        scriptedEffect.title = "IMIS"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self._press = None            # (view widget, xy) of a left-button press
        self._outlines = {}           # view widget -> BoxOutline (the rubber band drawn while dragging)
        self._ready = False           # activate() found a Slicer and the packages IMIS needs
        self._timer = None
        self._progress = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self):
        import qt
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return ("<html>Interactive segmentation of the selected segment: prompts on one slice, carried through the "
                "volume.<p><ul style='margin: 0'>"
                "<li><b>Click</b>: include; <b>Shift + click</b> (or <i>Negative clicks</i>): exclude."
                "<li><b>Drag</b>: a box around the structure on this slice (a rectangle follows the mouse)."
                "<li><b>Text</b>: type a structure name and press Enter to segment it on the slice the red view "
                "shows (models that take text; the field's tooltip lists the names)."
                "<li><b>Propagate</b> (P): carry the slice masks through the volume."
                "<li><b>Undo</b> (U): the last prompt or propagation; <b>Undo round</b> (Shift + U): the last "
                "round, its clicks and its propagation."
                "<li><b>Accept</b> (A): keep the segment and start afresh; <b>Reset</b>: remove what IMIS "
                "segmented since the last Accept."
                "<li><b>Multi-round fusion</b>: each propagation after the first keeps the previous mask on "
                "slices you did not touch where the new one moved against your correction, so a correction "
                "does not spoil other slices.</ul>"
                "Keys act with the mouse over a slice view. Masking settings (editable area, overwrite other "
                "segments) apply. Needs 3D Slicer " + _minimum_slicer_version() + " or later; Python packages "
                "IMIS needs are installed when the effect is first selected, after asking.</html>")

    # -- options panel ------------------------------------------------------------------------------
    def setupOptionsFrame(self):
        import qt
        self.negativeCheckBox = qt.QCheckBox("Negative clicks")
        self.negativeCheckBox.toolTip = "Clicks exclude instead of include (Shift + click does this too)"
        self.scriptedEffect.addOptionsWidget(self.negativeCheckBox)

        self.textLineEdit = qt.QLineEdit()
        self.textLineEdit.placeholderText = "structure name, e.g. left kidney"
        self.textLineEdit.enabled = False
        self.textLineEdit.toolTip = "Type a structure name and press Enter: segments it on the current (red) slice, " \
            "alone or with the clicks / box there (models with text prompts)"
        self.textLineEdit.connect("returnPressed()", self.onText)
        self.scriptedEffect.addLabeledOptionsWidget("Text:", self.textLineEdit)

        row = qt.QHBoxLayout()
        self.propagateButton = self._button("Propagate", "Carry the prompted slices through the volume "
                                            "(P, mouse over a slice view)", self.onPropagate)
        self.acceptButton = self._button("Accept", "Keep the segment as it is and start afresh "
                                         "(A, mouse over a slice view)", self.onAccept)
        self.undoButton = self._button("Undo", "Undo the last prompt or propagation (U, mouse over a slice view)",
                                       self.onUndo)
        self.undoRoundButton = self._button("Undo round", "Undo the last round: its clicks and its propagation "
                                            "(Shift + U, mouse over a slice view)", self.onUndoRound)
        self.resetButton = self._button("Reset", "Remove everything this effect segmented since the last Accept",
                                        self.onReset)
        for button in (self.propagateButton, self.acceptButton, self.undoButton, self.undoRoundButton, self.resetButton):
            row.addWidget(button)
        self.scriptedEffect.addOptionsWidget(row)

        self.fusionCheckBox = qt.QCheckBox("Multi-round fusion")
        self.fusionCheckBox.checked = False
        self.fusionCheckBox.toolTip = ("Each propagation after the first keeps, on slices you did not touch, the "
                                       "previous mask where the new one moved against your correction (shrank after "
                                       "positive clicks, grew after negative ones), so a correction does not spoil "
                                       "other slices")
        self.fusionCheckBox.connect("toggled(bool)", self.onFusionToggled)
        self.scriptedEffect.addOptionsWidget(self.fusionCheckBox)

    def _button(self, text, tip, slot):
        import qt
        button = qt.QPushButton(text)
        button.objectName = self.__class__.__name__ + text.replace(" ", "")
        button.toolTip = tip
        button.connect("clicked()", slot)
        return button

    def _keys(self):
        """Key (VTK key symbol, as a slice view's interactor reports it) -> action, while this effect is active.
        Not Qt shortcuts: those would act window-wide, and Z / Y are the Segment Editor's own undo / redo."""
        return {"p": self.onPropagate, "a": self.onAccept, "u": self.onUndo, "U": self.onUndoRound}

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    # -- life cycle ---------------------------------------------------------------------------------
    def activate(self):
        _add_library_paths()
        # only the standard library and slicer on this path: nothing a stock Slicer lacks before the user agrees
        from IMISSegmentSlicer.dependencies import ensure_dependencies, unsupported_slicer_reason
        self._ready = False
        too_old = unsupported_slicer_reason()
        if too_old is not None:
            self._error("IMIS cannot run in this version of 3D Slicer.", too_old)
            return
        if not ensure_dependencies("IMIS Segment Editor effect"):
            self._error("IMIS needs a few Python packages that were not installed.",
                        "Select the IMIS effect again and accept the installation, or install them from the "
                        "Python console with slicer.util.pip_install('scipy slicerio onnxruntime').")
            return
        self._ready = True
        self._bind()

    def deactivate(self):
        self._press = None
        for viewWidget, outline in self._outlines.items():
            self.scriptedEffect.removeActor2D(viewWidget, outline.actor)
        self._outlines = {}
        self._stop_polling()
        if self.logic is not None:
            self.logic.shutdown()
            self.logic = None

    def _bind(self):
        """(Re)bind the logic to the current source volume, segmentation and selected segment."""
        if not self._ready:
            return False
        from IMISSegmentSlicer import IMISSegmentMRMLLogic
        parameters = self.scriptedEffect.parameterSetNode()
        volume, segmentation = parameters.GetSourceVolumeNode(), parameters.GetSegmentationNode()
        segment_id = parameters.GetSelectedSegmentID()
        if volume is None or segmentation is None or not segment_id:
            return False
        if self.logic is not None and (self.logic.volume_node, self.logic.segmentation_node, self.logic.segment_id) == \
                (volume, segmentation, segment_id):
            return True
        if self.logic is not None and self.logic.busy:
            return False
        if self.logic is None:
            self.logic = IMISSegmentMRMLLogic(slicer.mrmlScene)
        with slicer.util.tryWithErrorDisplay("IMIS could not start on this volume.", waitCursor=True):
            self.logic.setup(volume, segmentation, segment_id=segment_id, editor_node=parameters)
            # write through the effect so the Segment Editor's masking and undo history apply
            self.logic.save_state_for_undo = self.scriptedEffect.saveStateForUndo
            self.logic.modify_segment = self._modify_segment
            self.textLineEdit.enabled = "text" in self.logic.engine.capabilities
            vocabulary = getattr(self.logic.engine, "vocabulary", None)
            if vocabulary is not None:
                self.textLineEdit.toolTip = "Type a structure name and press Enter. This model finds: " + \
                    ", ".join(vocabulary.names(trained_only=True))
            self.fusionCheckBox.enabled = self.logic.can_fuse
            self.fusionCheckBox.checked = self.logic.fusion   # the model's default until the user chooses
            return True
        return False

    def _modify_segment(self, modifier, mode, extent):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        base = effects.qSlicerSegmentEditorAbstractEffect
        effect_mode = base.ModificationModeAdd if mode == "add" else base.ModificationModeRemove
        self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, effect_mode, extent)

    # -- mouse --------------------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if not self._ready or viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
                return False
            action = self._keys().get(callerInteractor.GetKeySym())
            if action is None:
                return False
            action()
            return True
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self._press = (viewWidget, callerInteractor.GetEventPosition())
            return True
        if eventId == vtk.vtkCommand.MouseMoveEvent and self._press is not None:
            pressed_view, start = self._press
            if pressed_view is not viewWidget:
                return False
            end = callerInteractor.GetEventPosition()
            outline = self._outline(viewWidget)
            if _moved(start, end) >= DRAG_THRESHOLD_PX:
                outline.show(start, end)
            else:
                outline.hide()
            viewWidget.sliceView().scheduleRender()
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self._press is not None:
            pressed_view, start = self._press
            self._press = None
            outline = self._outlines.get(pressed_view)
            if outline is not None and outline.visible:
                outline.hide()
                pressed_view.sliceView().scheduleRender()
            if pressed_view is not viewWidget:
                return True
            end = callerInteractor.GetEventPosition()
            negative = bool(callerInteractor.GetShiftKey()) or self.negativeCheckBox.checked
            self._prompt(viewWidget, start, end, negative)
            return True
        return False

    def _outline(self, viewWidget):
        """The view's rubber band, added to its renderer on first use."""
        outline = self._outlines.get(viewWidget)
        if outline is None:
            outline = self._outlines[viewWidget] = BoxOutline()
            self.scriptedEffect.addActor2D(viewWidget, outline.actor)
        return outline

    def _ijk_and_axis(self, viewWidget, xy):
        """Voxel (i, j, k) under the mouse and the IJK axis closest to the view normal."""
        from IMISSegmentSlicer import ras_to_ijk
        from IMISSegmentSlicer.views import view_axis_ijk
        volume = self.logic.volume_node
        return ras_to_ijk(volume, self.xyToRas(xy, viewWidget)), view_axis_ijk(volume, viewWidget.mrmlSliceNode())

    def _prompt(self, viewWidget, start, end, negative):
        if not self._bind() or self.logic.busy:
            return
        with slicer.util.tryWithErrorDisplay("IMIS could not use this prompt.", waitCursor=True):
            a, axis = self._ijk_and_axis(viewWidget, start)
            if _moved(start, end) >= DRAG_THRESHOLD_PX:
                b, _ = self._ijk_and_axis(viewWidget, end)
                self.logic.add_box_ijk(a, b, normal_axis_ijk=axis)
            else:
                self.logic.add_click_ijk(a, positive=not negative, normal_axis_ijk=axis)

    # -- buttons ------------------------------------------------------------------------------------
    def onText(self):
        text = self.textLineEdit.text.strip()
        if not text or not self._bind() or self.logic.busy:
            return
        view = slicer.app.layoutManager().sliceWidget("Red")
        if view is None:
            self._error("IMIS segments a typed name on the Red slice view, which this layout does not show.",
                        "Choose a layout with the Red view and try again.")
            return
        ijk, axis = self._ijk_and_axis(view, (view.width // 2, view.height // 2))   # the slice the view shows
        try:
            self.logic.add_text_ijk(text, ijk[axis], normal_axis_ijk=axis)
        except NotImplementedError as error:
            self._error("This engine does not take text prompts.", str(error))
        except ValueError as error:   # IMISSegmentLib's InputError: unknown name (with the closest ones) or untrained
            self._error(f"IMIS cannot segment '{text}' from its name.", str(error))

    def onPropagate(self):
        if not self._bind() or self.logic.busy:
            return
        if not self.logic.can_propagate:
            self._error("This engine cannot propagate.", "Segment slice by slice, or install a model that propagates.")
            return
        from IMISSegmentLib.errors import InputError
        try:
            self.logic.propagate_async()
        except InputError as error:   # nothing to propagate yet, ...
            self._error("Propagation could not start.", str(error))
            return
        except Exception as error:
            logging.exception("IMIS propagation could not start")
            self._error("Propagation could not start.", f"{type(error).__name__}: {error}\n\n"
                        "Report it with the Python console log (View > Error Log).")
            return
        self._progress = slicer.util.createProgressDialog(labelText="IMIS: propagating through the volume...",
                                                          maximum=100, windowTitle="IMIS")
        self._progress.connect("canceled()", self.logic.cancel)
        self._start_polling()

    def _start_polling(self):
        import qt
        if self._timer is None:
            self._timer = qt.QTimer()
            self._timer.setInterval(POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self._poll)
        qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
        self._timer.start()

    def _stop_polling(self):
        import qt
        if self._timer is not None and self._timer.isActive():
            self._timer.stop()
            qt.QApplication.restoreOverrideCursor()
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _poll(self):
        if self.logic is None or self.logic.job is None:
            self._stop_polling()
            return
        job = self.logic.job
        if self._progress is not None:
            self._progress.value = int(100 * job.fraction)
        finished = self.logic.poll()        # writes into the segment here, on the GUI thread
        if finished is None:
            return
        self._stop_polling()
        from IMISSegmentLib.errors import InputError
        if isinstance(finished.error, InputError):   # nothing to propagate, ...: a message, not a failure of IMIS
            self._error("Propagation could not run.", str(finished.error))
        elif finished.error is not None and not finished.cancelled:
            logging.exception("IMIS propagation failed", exc_info=finished.error)
            self._error("Propagation failed.", f"{type(finished.error).__name__}: {finished.error}\n\n"
                        "Add a prompt on another slice and try again; if it keeps failing, report it with the "
                        "Python console log (View > Error Log).")

    def onAccept(self):
        if self.logic is not None and not self.logic.busy:
            with slicer.util.tryWithErrorDisplay("IMIS could not accept the segment.", waitCursor=True):
                self.logic.accept()

    def onUndo(self):
        if self.logic is not None and not self.logic.busy:
            with slicer.util.tryWithErrorDisplay("IMIS could not undo.", waitCursor=True):
                self.logic.undo()

    def onUndoRound(self):
        if self.logic is not None and not self.logic.busy:
            with slicer.util.tryWithErrorDisplay("IMIS could not undo the round.", waitCursor=True):
                self.logic.undo_round()

    def onFusionToggled(self, checked):
        if self.logic is not None and not self.logic.busy and checked != self.logic.fusion:
            self.logic.fusion = checked

    def onReset(self):
        if self.logic is not None and not self.logic.busy:
            with slicer.util.tryWithErrorDisplay("IMIS could not reset.", waitCursor=True):
                self.logic.reset()

    def _error(self, message, what_to_do):
        slicer.util.errorDisplay(message, detailedText=what_to_do, windowTitle="IMIS")
