"""Hidden module that registers the "IMIS" Segment Editor effect once Slicer has started."""
import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

EFFECT_NAME = "IMIS"


class SegmentEditorIMIS(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorIMIS"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["IMISSegment developers"]
        self.parent.hidden = True
        self.parent.helpText = ("Registers the IMIS Segment Editor effect: interactive segmentation from clicks, "
                                "a box or a structure name on one slice, carried through the volume.")
        self.parent.acknowledgementText = "IMISSegment, Apache-2.0."
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects
        effect = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        source = os.path.join(os.path.dirname(__file__), "SegmentEditorIMISLib", "SegmentEditorEffect.py")
        effect.setPythonSource(source.replace("\\", "/"))
        effect.self().register()
