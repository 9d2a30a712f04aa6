"""IMIS Segment: the scripted module (module, widget, logic, test). The work is done by
IMISSegmentSlicer.IMISSegmentMRMLLogic; interactive prompting happens in the Segment Editor's "IMIS" effect."""
import os
import sys

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _add_library_paths():
    """IMISSegmentSlicer sits beside this file; IMISSegmentLib beside it (installed) or one level up (source)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "IMISSegmentLib")) and folder not in sys.path:
            sys.path.insert(0, folder)


_add_library_paths()

from IMISSegmentSlicer.dependencies import MINIMUM_SLICER_VERSION  # noqa: E402  (stdlib only: safe in any Slicer)


class IMISSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMIS Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["IMISSegment developers"]
        self.parent.helpText = (
            "Interactive segmentation of CT and MR volumes: click, drag a box or type a structure name on one slice, "
            "then propagate through the volume. Use the <b>IMIS</b> effect in the Segment Editor (the button below "
            "opens it on the selected volume).<p>Needs 3D Slicer " + MINIMUM_SLICER_VERSION + " or later. Python "
            "packages it needs (slicerio, onnxruntime) are installed the first time the effect is selected, after "
            "asking.</p>")
        self.parent.acknowledgementText = "IMISSegment, Apache-2.0. Method after IMIS-Net (CVPR 2025) and LIM-Net."


def _parameter_node_class():
    """The module's parameters, declared with @parameterNodeWrapper (only inside Slicer)."""
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class IMISSegmentParameterNode:
        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        segmentName: str = "IMIS"

    return IMISSegmentParameterNode


class IMISSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None

    def setup(self):
        import ctk
        import qt
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = IMISSegmentLogic()
        # Built here rather than loaded from a .ui file; then as Slicer's template: named child widgets collected
        # into self.ui, and the parameter node bound to the widgets whose "SlicerParameterName" property is set.
        uiWidget = ctk.ctkCollapsibleButton()
        uiWidget.text = "Segment"
        self.layout.addWidget(uiWidget)
        form = qt.QFormLayout(uiWidget)
        volumeSelector = slicer.qMRMLNodeComboBox(uiWidget)
        volumeSelector.objectName = "volumeSelector"
        volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        volumeSelector.toolTip = "The volume to segment"
        volumeSelector.setProperty("SlicerParameterName", "inputVolume")
        segmentationSelector = slicer.qMRMLNodeComboBox(uiWidget)
        segmentationSelector.objectName = "segmentationSelector"
        segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        segmentationSelector.addEnabled = True
        segmentationSelector.noneEnabled = True
        segmentationSelector.toolTip = "The segmentation to add to (none: a new one)"
        segmentationSelector.setProperty("SlicerParameterName", "segmentation")
        for selector in (volumeSelector, segmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        form.addRow("Volume:", volumeSelector)
        form.addRow("Segmentation:", segmentationSelector)
        openButton = qt.QPushButton("Segment in the Segment Editor (IMIS effect)", uiWidget)
        openButton.objectName = "openButton"
        openButton.toolTip = "Opens the Segment Editor on this volume with the IMIS effect selected"
        form.addRow(openButton)
        self.layout.addStretch(1)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.openButton.connect("clicked()", self.onOpenEditor)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *args: self.initializeParameterNode())
        self.initializeParameterNode()

    def initializeParameterNode(self):
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        self._parameterNode = self.logic.getParameterNode()
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._guiTag = self._parameterNode.connectGui(self.ui)

    def cleanup(self):
        self.removeObservers()
        if self.logic is not None:
            self.logic.shutdown()

    def onOpenEditor(self):
        with slicer.util.tryWithErrorDisplay("Could not open the Segment Editor.", waitCursor=True):
            volume = self._parameterNode.inputVolume
            if volume is None:
                raise ValueError("Select a volume first (File > Add Data).")
            segmentation = self._parameterNode.segmentation
            if segmentation is None:
                segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
                segmentation.CreateDefaultDisplayNodes()
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
                self._parameterNode.segmentation = segmentation
            if segmentation.GetSegmentation().GetNumberOfSegments() == 0:
                segmentation.GetSegmentation().AddEmptySegment("", self._parameterNode.segmentName)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(segmentation)
            editor.setSourceVolumeNode(volume)
            editor.setActiveEffectByName("IMIS")


class IMISSegmentLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic class for this module; the work is delegated to IMISSegmentMRMLLogic (``self.mrml``),
    which tests and scripts can use without the GUI or the Slicer application."""

    def __init__(self, model=None):
        ScriptedLoadableModuleLogic.__init__(self)
        from IMISSegmentSlicer import IMISSegmentMRMLLogic
        self.mrml = IMISSegmentMRMLLogic(slicer.mrmlScene, model=model)

    def getParameterNode(self):
        return _parameter_node_class()(super().getParameterNode())

    def __getattr__(self, name):     # setup, add_click_ijk, propagate, undo, ... of the MRML logic
        if name == "mrml":
            raise AttributeError(name)
        return getattr(self.mrml, name)

    def shutdown(self):
        self.mrml.shutdown()


class IMISSegmentTest(ScriptedLoadableModuleTest):
    """Run by Slicer's "Reload and Test" and by the extension build's ctest (``slicer_add_python_unittest``).

    The Slicer a build tree or a fresh install runs has neither the Python packages IMIS installs on first use
    (slicerio, onnxruntime) nor, before 5.10, the Segment Editor logic: the test is then skipped, saying why."""

    def setUp(self):
        from IMISSegmentSlicer.dependencies import missing_requirements, unsupported_slicer_reason
        reason = unsupported_slicer_reason()
        missing = missing_requirements()
        if reason is None and missing:
            reason = ("needs the Python packages " + ", ".join(missing) + ", which IMIS installs when its effect is "
                      "first selected (or: slicer.util.pip_install('" + " ".join(missing) + "'))")
        if reason is not None:
            self.skipTest(reason)
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        import unittest
        try:
            self.setUp()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"IMIS self-test skipped: {skipped}")
            return
        self.test_round_trip()

    def test_round_trip(self):
        """Volume node (oblique) -> session -> segment, voxel for voxel, then undo."""
        import numpy as np
        from IMISSegmentLib.io.volume import Volume
        from IMISSegmentSlicer import volume_node_from_volume

        self.delayDisplay("IMIS round trip")
        k, j, i = np.indices((12, 64, 64))
        array = np.where((k - 6) ** 2 * 9 + (j - 32) ** 2 + (i - 30) ** 2 <= 196, 440.0, 40.0).astype(np.float32)
        array[:, :3] = -1000.0
        direction = (0.0, -1.0, 0.0, 0.8, 0.0, 0.6, -0.6, 0.0, 0.8)
        volume = volume_node_from_volume(Volume(array, (3.0, 1.0, 1.0), (12.5, -40.25, 7.0), direction),
                                         slicer.mrmlScene, "IMISTest")
        logic = IMISSegmentLogic()
        try:
            logic.setup(volume, segment_name="sphere")
            logic.add_click((6, 32, 30), positive=True, axis=0)
            logic.propagate()
            self.assertTrue(np.array_equal(logic.segment_array(), logic.result))
            self.assertGreater(int(logic.result.sum()), 0)
            self.assertTrue(logic.undo())
            self.assertTrue(np.array_equal(logic.segment_array(), logic.result))
        finally:
            logic.shutdown()
        self.delayDisplay("IMIS round trip passed")
