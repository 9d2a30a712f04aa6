"""Runs IMISSegment's Qt layer (the module widget and the Segment Editor effect) without the Slicer application.

No 3D Slicer application can run here, so this module supplies, for the names the module and the effect use, what
Slicer would: real where a real one can run, a small stand-in where it cannot.

Real:
* MRML: scene, volume, segmentation, Segment Editor and slice nodes, ``vtkSlicerSegmentEditorLogic`` (masking,
  overwrite, undo; also its ``XyToRas``, the same conversion the C++ effect base uses), ``vtkMRMLSliceLogic`` for the
  slice views' geometry: the ``slicer-core`` wheel.
* ``slicer.util``: slicer-core's own (``childWidgetVariables``, ``tryWithErrorDisplay``, ``errorDisplay``,
  ``confirmOkCancelDisplay``, ``createProgressDialog``, ``VTKObservationMixin``, ``arrayFromVolume``, ...), except
  ``messageBox`` (would block on a modal dialog: here it records the message and answers as told), ``pip_install``
  (records what would be installed) and ``selectModule``.
* Qt widgets, signals, timers, the event loop: PySide6 on the offscreen platform, behind PythonQt's conventions
  (``qt`` below: Qt properties read and written as attributes, ``connect("clicked()", slot)``, ``className()``).

Stand-ins (``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``SegmentEditorEffects``,
``qSlicerSegmentationsEditorEffectsPythonQt``, ``ctk.ctkCollapsibleButton``, ``slicer.qMRMLNodeComboBox``,
``qMRMLSliceWidget``, ``slicer.app``): small, and following the behaviour of Slicer's code where the module or the
effect depends on it. In particular ``parameterNodeWrapper``'s ``connectGui`` takes the same two branches as
Slicer's ``_connectGui`` (a widget: its children; anything else: ``.property("SlicerParameterName")`` of every
attribute value), and the scripted effect writes through ``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` with
``perSegment`` as Slicer's ``qSlicerSegmentEditorAbstractEffect`` does.

    harness = SlicerHarness()            # installs the names; harness.close() takes them away again
    widget = harness.module_widget()     # IMISSegmentWidget, setup() done
    effect = harness.effect()            # the IMIS effect, setupOptionsFrame() done; harness.activate_effect()
    harness.click(harness.red, xy); harness.drag(harness.red, a, b); harness.key(harness.red, "p")

Run as a script, it writes the extension's screenshot (``--screenshot PATH``) or runs one scenario with packages
hidden as in a stock Slicer (``--scenario NAME --hide slicerio,onnxruntime``), printing a JSON result.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import types
import unittest
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "IMISSegment"
EFFECT_SOURCE = MODULE_DIR / "SegmentEditorIMISLib" / "SegmentEditorEffect.py"
# what a stock 3D Slicer lacks of what IMIS uses (scipy, numpy, SimpleITK, vtk are bundled with Slicer)
NOT_IN_SLICER = ("slicerio", "onnxruntime", "torch", "tqdm", "matplotlib")


# -- packages hidden as in a stock Slicer ------------------------------------------------------------------------
class HiddenPackages:
    """Makes ``names`` not installed for this process, for real: each site-packages folder on ``sys.path`` is
    replaced by a folder of links to all its entries but those packages (and their .dist-info), so
    ``importlib.util.find_spec`` finds nothing and ``import`` fails as it would. :meth:`install` puts them back (what
    a pip install after the user's consent does)."""

    def __init__(self, names):
        self.names = tuple(names)
        self._swapped = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="imis-hidden-")
        for number, entry in enumerate(list(sys.path)):
            if not entry.endswith("site-packages") or not os.path.isdir(entry):
                continue
            view = Path(self._tmp.name) / f"site{number}"
            view.mkdir()
            for child in os.listdir(entry):
                stem = child.split("-")[0].split(".")[0].lower()
                if stem in self.names or stem.replace("_", "") in self.names:
                    continue
                os.symlink(os.path.join(entry, child), view / child)
            self._swapped[entry] = str(view)
        if any(name in sys.modules for name in self.names):
            raise RuntimeError(f"hide packages before anything imports them: {self.imported()}")
        self._apply(self._swapped)

    def _apply(self, mapping):
        sys.path[:] = [mapping.get(entry, entry) for entry in sys.path]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()

    def install(self):
        self._apply({view: entry for entry, view in self._swapped.items()})

    def imported(self):
        return sorted(m for m in sys.modules if m.split(".")[0] in self.names)


# -- qt: PySide6 with PythonQt's conventions -------------------------------------------------------------------------
from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

_ALIASES = {"name": "objectName"}
# properties whose getter is a C++ virtual: PySide looks for Python overrides of those by attribute: they stay methods
_VIRTUAL_GETTERS = {"sizeHint", "minimumSizeHint"}


def _meta_property(obj, name):
    if name in _VIRTUAL_GETTERS:
        return None
    meta = QtCore.QObject.metaObject(obj)
    index = meta.indexOfProperty(_ALIASES.get(name, name))
    return meta.property(index) if index >= 0 else None


class PythonQtStyle:
    """Mixed into a PySide6 class: Qt properties as attributes (``button.toolTip = "..."``, ``lineEdit.text``,
    ``widget.name`` for objectName), ``connect("signal(args)", slot)`` and ``className()``, as in Slicer's Python."""

    def __getattribute__(self, name):
        if name[:1] != "_":
            for cls in type(self).__mro__:     # Python-defined classes first (PySide would prefer its own connect)
                if cls.__module__.startswith(("PySide6", "shiboken6", "Shiboken")):
                    break
                if name in cls.__dict__:
                    return object.__getattribute__(self, name)
            prop = _meta_property(self, name)
            if prop is not None:
                return prop.read(self)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        prop = _meta_property(self, name)
        if prop is not None:
            if not prop.write(self, value):
                raise AttributeError(f"cannot set Qt property {name!r} of {type(self).__name__} to {value!r}")
            return
        super().__setattr__(name, value)

    def connect(self, signal, slot=None, *args):
        if isinstance(signal, str):
            getattr(self, signal.split("(")[0]).connect(slot)
            return True
        return QtCore.QObject.connect(self, signal, slot, *args)

    def disconnect(self, signal=None, slot=None, *args):
        if isinstance(signal, str):
            getattr(self, signal.split("(")[0]).disconnect(slot)
            return True
        return QtCore.QObject.disconnect(self, signal, slot, *args)

    def className(self):
        return QtCore.QObject.metaObject(self).className()


class _QtModule(types.ModuleType):
    """``import qt``: PySide6's QtWidgets / QtGui / QtCore names; QObject classes wrapped in PythonQtStyle."""

    def __getattr__(self, name):
        for module in (QtWidgets, QtGui, QtCore):
            value = getattr(module, name, None)
            if value is not None:
                break
        else:
            raise AttributeError(f"module 'qt' has no attribute {name!r}")
        if isinstance(value, type) and issubclass(value, QtCore.QObject):
            value = type(value)(name, (PythonQtStyle, value), {"__module__": "qt"})
        setattr(self, name, value)
        return value


qt = _QtModule("qt")


class ctkCollapsibleButton(PythonQtStyle, QtWidgets.QGroupBox):
    """ctk's collapsible section: a titled frame whose ``text`` is its title."""

    @property
    def text(self):
        return QtWidgets.QGroupBox.title(self)

    @text.setter
    def text(self, value):
        QtWidgets.QGroupBox.setTitle(self, value)


ctk = types.ModuleType("ctk")
ctk.ctkCollapsibleButton = ctkCollapsibleButton

# -- the application ---------------------------------------------------------------------------------------------
import vtk  # noqa: E402

import slicer  # noqa: E402  (slicer-core: real MRML)
import slicer.util  # noqa: E402


class SlicerApplication(PythonQtStyle, QtWidgets.QApplication):
    """``slicer.app``: what the module, the effect and slicer.util ask of it."""

    startupCompleted = QtCore.Signal()

    def __init__(self):
        super().__init__(["SlicerHarness"])
        QtCore.QCoreApplication.setApplicationName("Slicer")
        QtCore.QCoreApplication.setApplicationVersion("5.13.0-harness")
        self.harness = None

    def testingEnabled(self):
        return False   # dialogs go through slicer.util.messageBox, which the harness answers

    def layoutManager(self):
        return self.harness.layout_manager

    def pythonConsole(self):
        return None


_APP = None


def application() -> SlicerApplication:
    global _APP
    if _APP is None:
        if QtWidgets.QApplication.instance() is not None:
            raise RuntimeError("another QApplication exists; the harness needs its own")
        _APP = SlicerApplication()
    return _APP


class qMRMLWidget(PythonQtStyle, QtWidgets.QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(PythonQtStyle, QtWidgets.QComboBox):
    """A node selector: lists the scene's nodes of ``nodeTypes``; ``currentNodeChanged(vtkMRMLNode*)``."""

    currentNodeChanged = QtCore.Signal(object)
    instances = []     # the harness detaches them from their scenes when it closes

    def __init__(self, parent=None):
        super().__init__(parent)
        qMRMLNodeComboBox.instances.append(self)
        self.nodeTypes = []
        self.addEnabled = False
        self.noneEnabled = False
        self.removeEnabled = True
        self.renameEnabled = False
        self._scene = None
        self._observations = []
        self._current_id = None
        QtWidgets.QComboBox.currentIndexChanged.__get__(self).connect(self._index_changed)

    def detach(self):
        for tag in self._observations:
            self._scene.RemoveObserver(tag)
        self._observations = []

    def setMRMLScene(self, scene):
        self.detach()
        self._scene = scene
        self._observations = [scene.AddObserver(event, lambda *args: self._refresh())
                              for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        self._refresh()

    def nodes(self):
        if self._scene is None:
            return []
        found = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if any(node.IsA(kind) for kind in self.nodeTypes) and not node.GetHideFromEditors():
                found.append(node)
        return found

    def currentNode(self):
        if self._scene is None or self._current_id is None:
            return None
        return self._scene.GetNodeByID(self._current_id)

    def setCurrentNode(self, node):
        self._select(node.GetID() if node is not None else None)

    def _refresh(self):
        nodes = self.nodes()
        ids = [node.GetID() for node in nodes]
        if self._current_id not in ids:
            self._current_id = None if (self.noneEnabled or not ids) else ids[0]
            changed = True
        else:
            changed = False
        self.blockSignals(True)
        QtWidgets.QComboBox.clear(self)
        if self.noneEnabled:
            QtWidgets.QComboBox.addItem(self, "None", None)
        for node in nodes:
            QtWidgets.QComboBox.addItem(self, node.GetName(), node.GetID())
        QtWidgets.QComboBox.setCurrentIndex(self, QtWidgets.QComboBox.findData(self, self._current_id))
        self.blockSignals(False)
        if changed:
            self.currentNodeChanged.emit(self.currentNode())

    def _select(self, node_id):
        if node_id == self._current_id:
            return
        self._current_id = node_id
        self.blockSignals(True)
        QtWidgets.QComboBox.setCurrentIndex(self, QtWidgets.QComboBox.findData(self, node_id))
        self.blockSignals(False)
        self.currentNodeChanged.emit(self.currentNode())

    def _index_changed(self, index):
        self._select(QtWidgets.QComboBox.itemData(self, index))


# -- slicer.parameterNodeWrapper ------------------------------------------------------------------------------------
SlicerParameterNamePropertyName = "SlicerParameterName"


class _NodeComboBoxConnector:
    def __init__(self, widget):
        self.widget, self._slot = widget, None

    def write(self, value):
        self.widget.setCurrentNode(value)

    def read(self):
        return self.widget.currentNode()

    def onChanged(self, callback):
        if self._slot is not None:
            self.widget.currentNodeChanged.disconnect(self._slot)
            self._slot = None
        if callback is not None:
            self._slot = lambda node: callback()
            self.widget.currentNodeChanged.connect(self._slot)


class _LineEditConnector(_NodeComboBoxConnector):
    def write(self, value):
        QtWidgets.QLineEdit.setText(self.widget, str(value))

    def read(self):
        return QtWidgets.QLineEdit.text(self.widget)

    def onChanged(self, callback):
        if self._slot is not None:
            self.widget.textChanged.disconnect(self._slot)
            self._slot = None
        if callback is not None:
            self._slot = lambda text: callback()
            self.widget.textChanged.connect(self._slot)


def _gui_connector(widget):
    if isinstance(widget, qMRMLNodeComboBox):
        return _NodeComboBoxConnector(widget)
    if isinstance(widget, QtWidgets.QLineEdit):
        return _LineEditConnector(widget)
    raise RuntimeError(f"Unable to create GUI connector from widget of type {type(widget).__name__}")


def parameterNodeWrapper(classtype):
    """Typed access to a vtkMRMLScriptedModuleNode and GUI binding, after Slicer's ``@parameterNodeWrapper``:
    node-typed parameters as node references, str / int / float / bool as parameters (a default written on
    first read)."""
    parameters = dict(classtype.__annotations__)
    defaults = {name: getattr(classtype, name, None) for name in parameters}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._parameterGUIs = {}
        self._observerTags = {}
        self._nextTag = 0

    def make_property(name, kind):
        if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
            def read(self):
                return self.parameterNode.GetNodeReference(name)

            def write(self, value):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            def read(self):
                if not self.parameterNode.GetParameterNames() or name not in self.parameterNode.GetParameterNames():
                    self.parameterNode.SetParameter(name, str(defaults[name]))
                return kind(self.parameterNode.GetParameter(name))

            def write(self, value):
                self.parameterNode.SetParameter(name, str(value))
        return property(read, write)

    def checkName(self, name):
        if name not in parameters:
            raise ValueError(f"Unknown parameter name: '{name}'")

    def getValue(self, name):
        checkName(self, name)
        return getattr(self, name)

    def connectGui(self, gui):
        """Slicer's _connectGui: a widget is searched for children with the property; anything else (the ``self.ui``
        of childWidgetVariables) has every attribute value asked for it."""
        paramNameToWidget = {}
        if getattr(gui, "isWidgetType", lambda: False)():
            for widget in gui.findChildren(QtWidgets.QWidget):
                if widget.property(SlicerParameterNamePropertyName):
                    paramNameToWidget[widget.property(SlicerParameterNamePropertyName)] = widget
        else:
            for widget in gui.__dict__.values():
                if widget.property(SlicerParameterNamePropertyName):
                    paramNameToWidget[widget.property(SlicerParameterNamePropertyName)] = widget
        return connectParametersToGui(self, paramNameToWidget)

    def connectParametersToGui(self, mapping):
        for name in mapping:
            checkName(self, name)
        connectors = {name: _gui_connector(widget) for name, widget in mapping.items()}
        tag = self._nextTag
        self._nextTag += 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(getValue(self, name))
            connector.onChanged(lambda name=name, connector=connector: setattr(self, name, connector.read()))

        def update_gui(caller, event):
            for name, connector in connectors.items():
                if connector.read() != getValue(self, name):
                    connector.write(getValue(self, name))
        self._observerTags[tag] = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, update_gui)
        return tag

    def disconnectGui(self, tag):
        for connector in self._parameterGUIs.pop(tag, {}).values():
            connector.onChanged(None)
        if tag in self._observerTags:
            self.parameterNode.RemoveObserver(self._observerTags.pop(tag))

    namespace = {"__init__": __init__, "connectGui": connectGui, "connectParametersToGui": connectParametersToGui,
                 "disconnectGui": disconnectGui, "getValue": getValue, "_is_parameter_node_wrapper": True,
                 "__module__": classtype.__module__, "__doc__": classtype.__doc__}
    namespace.update({name: make_property(name, kind) for name, kind in parameters.items()})
    return type(classtype.__name__, (), namespace)


parameterNodeWrapperModule = types.ModuleType("slicer.parameterNodeWrapper")
parameterNodeWrapperModule.parameterNodeWrapper = parameterNodeWrapper
parameterNodeWrapperModule.SlicerParameterNamePropertyName = SlicerParameterNamePropertyName


# -- slicer.ScriptedLoadableModule ----------------------------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def runTest(self, msec=100, **kwargs):
        module = sys.modules[self.__module__]
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = False
        if not parent:
            self.parent = qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def setup(self):
        pass   # the developer section (Reload & Test) is shown in developer mode only

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messageDelay = 0

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)
        if _APP is not None and _APP.harness is not None:
            _APP.harness.displayed.append(message)


scriptedLoadableModule = types.ModuleType("slicer.ScriptedLoadableModule")
for _cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
             ScriptedLoadableModuleTest):
    setattr(scriptedLoadableModule, _cls.__name__, _cls)


# -- the Segment Editor: effect base classes and a slice view ---------------------------------------------------
class AbstractScriptedSegmentEditorEffect:
    """SegmentEditorEffects.AbstractScriptedSegmentEditorEffect: coordinate helpers over the C++ adaptor."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def register(self):
        pass

    def cleanup(self):
        pass

    def xyToRas(self, xy, viewWidget):
        ras = self.scriptedEffect.xyToRas(qt.QPoint(xy[0], xy[1]), viewWidget)
        return [ras.x(), ras.y(), ras.z()]


class qSlicerSegmentEditorAbstractEffect:
    ModificationModeSet, ModificationModeAdd, ModificationModeRemove, ModificationModeRemoveAll = 0, 1, 2, 3


class qSlicerSegmentEditorScriptedEffect(qSlicerSegmentEditorAbstractEffect):
    """The C++ adaptor a scripted effect calls as ``self.scriptedEffect``."""

    def __init__(self, parent=None, harness=None):
        self.harness = harness or (_APP.harness if _APP is not None else None)
        self.name, self.title, self.perSegment, self.requireSegments = "", "", True, True
        self.optionsFrame = qt.QFrame()
        self.optionsLayout = qt.QFormLayout(self.optionsFrame)
        self.undoStatesSaved = 0
        self._python = None

    def setPythonSource(self, path):
        module = self.harness.load_module(path, "SegmentEditorIMISEffect")
        self._python = module.SegmentEditorEffect(self)
        return True

    def self(self):
        return self._python

    # options panel
    def addOptionsWidget(self, widget):
        if isinstance(widget, QtWidgets.QLayout):
            self.optionsLayout.addRow(widget)
        else:
            self.optionsLayout.addRow(widget)

    def addLabeledOptionsWidget(self, label, widget):
        self.optionsLayout.addRow(label, widget)

    # MRML
    def parameterSetNode(self):
        return self.harness.editor_node

    def saveStateForUndo(self):
        self.undoStatesSaved += 1
        self.harness.editor_logic.SaveStateForUndo()

    def modifySegmentByLabelmap(self, segmentationNode, segmentID, modifierLabelmap, modificationMode,
                                modificationExtent=(0, -1, 0, -1, 0, -1), bypassMasking=False):
        logic = self.harness.editor_logic
        mode = (logic.ModificationModeSet, logic.ModificationModeAdd, logic.ModificationModeRemove,
                logic.ModificationModeRemoveAll)[int(modificationMode)]   # the C++ adaptor's static_cast
        logic.ModifySegmentByLabelmap(segmentationNode, segmentID, modifierLabelmap, mode, list(modificationExtent),
                                      self.perSegment, bypassMasking)

    def modifySelectedSegmentByLabelmap(self, modifierLabelmap, modificationMode, modificationExtent=None,
                                        bypassMasking=False):
        node = self.parameterSetNode()
        self.modifySegmentByLabelmap(node.GetSegmentationNode(), node.GetSelectedSegmentID(), modifierLabelmap,
                                     modificationMode, modificationExtent or (0, -1, 0, -1, 0, -1), bypassMasking)

    # views
    def xyToRas(self, xy, viewWidget):
        ras = [0.0, 0.0, 0.0]
        self.harness.editor_logic_class.XyToRas([float(xy.x()), float(xy.y())], ras, viewWidget.mrmlSliceNode())
        return QtGui.QVector3D(*ras)

    @staticmethod
    def renderer(viewWidget):
        return viewWidget.sliceView().renderer

    def addActor2D(self, viewWidget, actor):
        self.renderer(viewWidget).AddViewProp(actor)
        viewWidget.sliceView().scheduleRender()

    def removeActor2D(self, viewWidget, actor):
        self.renderer(viewWidget).RemoveViewProp(actor)
        viewWidget.sliceView().scheduleRender()

    def cursorOn(self, viewWidget):
        pass

    def cursorOff(self, viewWidget):
        pass


class _SliceView:
    def __init__(self):
        self.renderer = vtk.vtkRenderer()
        self.renders = 0

    def scheduleRender(self):
        self.renders += 1


class qMRMLSliceWidget(PythonQtStyle, QtWidgets.QWidget):
    """A slice view: a real vtkMRMLSliceNode (through vtkMRMLSliceLogic) sized as the widget, a renderer that effects
    add actors to, and an interactor that the harness sends mouse and key events through."""

    def __init__(self, name, scene, size=(320, 320)):
        super().__init__()
        QtWidgets.QWidget.setFixedSize(self, *size)
        if scene.GetDefaultNodeByClass("vtkMRMLSliceNode") is None:   # the orientation presets Slicer's app sets up
            slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        self._logic = slicer.vtkMRMLSliceLogic()
        self._logic.SetMRMLScene(scene)
        self._node = self._logic.AddSliceNode(name)
        self._node.SetOrientation({"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}[name])
        self._node.SetDimensions(size[0], size[1], 1)
        self._view = _SliceView()
        self.interactor = vtk.vtkGenericRenderWindowInteractor()

    def mrmlSliceNode(self):
        return self._node

    def sliceLogic(self):
        return self._logic

    def sliceView(self):
        return self._view

    def show_volume(self, volume_node, k=None):
        """Fit the view to ``volume_node`` and, for an axial view, move it to slice ``k`` (voxel index)."""
        self._logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        self._logic.FitSliceToAll()
        if k is not None:
            matrix = vtk.vtkMatrix4x4()
            volume_node.GetIJKToRASMatrix(matrix)
            ras = matrix.MultiplyPoint((0.0, 0.0, float(k), 1.0))
            self._logic.SetSliceOffset(ras[2])
        self._node.UpdateMatrices()

    def xy_of_ras(self, ras):
        """The view pixel (x, y; y up, as VTK reports mouse positions) where RAS point ``ras`` is shown."""
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(self._node.GetXYToRAS())
        matrix.Invert()
        xy = matrix.MultiplyPoint((*map(float, ras), 1.0))
        return int(round(xy[0])), int(round(xy[1]))


class LayoutManager:
    def __init__(self, views):
        self.views = views

    def sliceWidget(self, name):
        return self.views.get(name)


segmentEditorEffects = types.ModuleType("SegmentEditorEffects")
segmentEditorEffects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
segmentEditorEffectsAbstract = types.ModuleType("SegmentEditorEffects.AbstractScriptedSegmentEditorEffect")
segmentEditorEffectsAbstract.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
segmentEditorEffectsAbstract.__all__ = ["AbstractScriptedSegmentEditorEffect"]
segmentEditorEffects.__path__ = []
editorEffectsPythonQt = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
editorEffectsPythonQt.qSlicerSegmentEditorAbstractEffect = qSlicerSegmentEditorAbstractEffect
editorEffectsPythonQt.qSlicerSegmentEditorScriptedEffect = qSlicerSegmentEditorScriptedEffect


class _SegmentEditorWidgetStandIn:
    """``slicer.modules.segmenteditor.widgetRepresentation().self().editor``: records what the module asks."""

    def __init__(self, harness):
        self.harness, self.calls = harness, []

    def setSegmentationNode(self, node):
        self.calls.append(("setSegmentationNode", node))
        self.harness.editor_node.SetAndObserveSegmentationNode(node)

    def setSourceVolumeNode(self, node):
        self.calls.append(("setSourceVolumeNode", node))
        self.harness.editor_node.SetAndObserveSourceVolumeNode(node)

    def setActiveEffectByName(self, name):
        self.calls.append(("setActiveEffectByName", name))


# -- the harness ----------------------------------------------------------------------------------------------------
class SlicerHarness:
    """Installs the names above into ``sys.modules`` and the real ``slicer`` module, with a fresh scene, a red slice
    view and a Segment Editor parameter node; :meth:`close` restores everything."""

    def __init__(self, answers=None):
        self.app = application()
        self.app.harness = self
        self._undo = []
        self.messages = []              # every slicer.util.messageBox: dict(text, windowTitle, detailedText, ...)
        self.pip_installs = []          # what slicer.util.pip_install was asked to install
        self.selected_modules = []
        self.displayed = []             # delayDisplay texts of module self-tests
        self.answers = dict(answers or {})   # "okcancel" / "yesno" -> bool
        self.on_pip_install = None
        for folder in (str(MODULE_DIR), str(REPO)):   # Slicer puts a scripted module's folder on sys.path
            if folder not in sys.path:
                sys.path.insert(0, folder)
        self.scene = slicer.vtkMRMLScene()
        self.editor_logic_class = slicer.vtkSlicerSegmentEditorLogic
        self.main_window = qt.QMainWindow()
        self.main_window.objectName = "qSlicerMainWindow"
        self._install()
        self.red = qMRMLSliceWidget("Red", self.scene)
        self.layout_manager = LayoutManager({"Red": self.red})
        self.editor_node = slicer.vtkMRMLSegmentEditorNode()
        self.scene.AddNode(self.editor_node)
        self.editor_logic = slicer.vtkSlicerSegmentEditorLogic()
        self.editor_logic.SetMRMLScene(self.scene)
        self.editor_logic.SetSegmentEditorNode(self.editor_node)
        self.segment_editor_widget = _SegmentEditorWidgetStandIn(self)
        self.scripted_effect = None
        self.module_widgets = []

    # installing and removing the names
    def _set(self, obj, name, value):
        missing = object()
        self._undo.append((obj, name, getattr(obj, name, missing) if not isinstance(obj, dict)
                           else obj.get(name, missing), missing))
        if isinstance(obj, dict):
            obj[name] = value
        else:
            setattr(obj, name, value)

    def _install(self):
        for name, module in (("qt", qt), ("ctk", ctk), ("slicer.ScriptedLoadableModule", scriptedLoadableModule),
                             ("slicer.parameterNodeWrapper", parameterNodeWrapperModule),
                             ("SegmentEditorEffects", segmentEditorEffects),
                             ("SegmentEditorEffects.AbstractScriptedSegmentEditorEffect", segmentEditorEffectsAbstract),
                             ("qSlicerSegmentationsEditorEffectsPythonQt", editorEffectsPythonQt)):
            self._set(sys.modules, name, module)
        representation = types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=self.segment_editor_widget))
        editor_module = types.SimpleNamespace(widgetRepresentation=lambda: representation)
        modules = types.SimpleNamespace(segmenteditor=editor_module)
        for name, value in (("app", self.app), ("mrmlScene", self.scene), ("qMRMLNodeComboBox", qMRMLNodeComboBox),
                            ("qMRMLWidget", qMRMLWidget), ("qMRMLSliceWidget", qMRMLSliceWidget), ("modules", modules),
                            ("ScriptedLoadableModule", scriptedLoadableModule),
                            ("parameterNodeWrapper", parameterNodeWrapperModule)):
            self._set(slicer, name, value)
        self._set(slicer.util, "messageBox", self._message_box)
        self._set(slicer.util, "pip_install", self._pip_install)
        self._set(slicer.util, "selectModule", self.selected_modules.append)

    def close(self):
        if self.scripted_effect is not None and self.scripted_effect.self() is not None:
            effect = self.scripted_effect.self()
            if getattr(effect, "logic", None) is not None:
                effect.deactivate()
        for widget in self.module_widgets:
            widget.cleanup()
        while qMRMLNodeComboBox.instances:
            qMRMLNodeComboBox.instances.pop().detach()
        for obj, name, old, missing in reversed(self._undo):
            if isinstance(obj, dict):
                if old is missing:
                    obj.pop(name, None)
                else:
                    obj[name] = old
            elif old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        self._undo = []
        self.app.harness = None
        QtWidgets.QApplication.processEvents()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # slicer.util replacements
    def _message_box(self, text, parent=None, **kwargs):
        buttons = kwargs.get("standardButtons", QtWidgets.QMessageBox.Ok)
        record = {"text": text, "windowTitle": kwargs.get("windowTitle"), "detailedText": kwargs.get("detailedText"),
                  "icon": str(kwargs.get("icon"))}
        self.messages.append(record)
        if buttons == (QtWidgets.QMessageBox.Ok | QtWidgets.QMessageBox.Cancel):
            return QtWidgets.QMessageBox.Ok if self.answers.get("okcancel", True) else QtWidgets.QMessageBox.Cancel
        if buttons == (QtWidgets.QMessageBox.Yes | QtWidgets.QMessageBox.No):
            return QtWidgets.QMessageBox.Yes if self.answers.get("yesno", False) else QtWidgets.QMessageBox.No
        return QtWidgets.QMessageBox.Ok

    def _pip_install(self, requirements, **kwargs):
        self.pip_installs.append(requirements)
        if self.on_pip_install is not None:
            self.on_pip_install(requirements)

    def errors(self):
        return [m for m in self.messages if "Critical" in m["icon"]]

    # loading the module's files as Slicer does
    def load_module(self, path, name):
        spec = importlib.util.spec_from_file_location(name, str(path))
        module = importlib.util.module_from_spec(spec)
        self._set(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    def module_widget(self):
        """The IMIS Segment module panel: module class, then the widget's setup() as Slicer calls it."""
        module = self.load_module(MODULE_DIR / "IMISSegment.py", "IMISSegment")
        self.module_file = module
        self.module = module.IMISSegment(types.SimpleNamespace(path=str(MODULE_DIR / "IMISSegment.py")))
        panel = qMRMLWidget()
        panel.setLayout(qt.QVBoxLayout())
        panel.setMRMLScene(self.scene)
        widget = module.IMISSegmentWidget(panel)
        self.module_widgets.append(widget)
        widget.setup()
        return widget

    def effect(self):
        """The IMIS effect as the Segment Editor makes it: adaptor, Python source, options frame."""
        self.scripted_effect = qSlicerSegmentationsEditorEffectsPythonQt_effect = qSlicerSegmentEditorScriptedEffect(
            None, harness=self)
        qSlicerSegmentationsEditorEffectsPythonQt_effect.setPythonSource(str(EFFECT_SOURCE))
        effect = qSlicerSegmentationsEditorEffectsPythonQt_effect.self()
        effect.setupOptionsFrame()
        return effect

    # scene content (made here, not with IMISSegmentSlicer, so that nothing of the product is imported before the
    # effect or the module imports it)
    def add_volume(self, volume, name="CT", spacing=(1.0, 1.0, 1.0)):
        """A scalar volume node from an ``IMISSegmentLib.io.Volume`` (LPS geometry, made RAS as Slicer does) or from
        a (K, J, I) array with ``spacing`` (sk, sj, si) and identity directions."""
        import numpy as np
        from vtk.util import numpy_support
        if hasattr(volume, "array"):
            array, spacing = volume.array, volume.spacing
            origin = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(volume.origin, float)
            direction = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(volume.direction, float).reshape(3, 3)
        else:
            array, origin, direction = volume, np.zeros(3), np.eye(3)
        array = np.ascontiguousarray(array)
        image = vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
            array.ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(array.dtype)))
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        self.scene.AddNode(node)
        node.SetAndObserveImageData(image)
        node.SetSpacing(*[float(v) for v in reversed(spacing)])
        node.SetOrigin(*[float(v) for v in origin])
        node.SetIJKToRASDirections([list(map(float, row)) for row in direction])
        return node

    def add_segmentation(self, volume_node, segment_name="IMIS"):
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        if len(factory.GetConverterRules()) == 0:    # what Slicer registers at start-up
            for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                         slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
                factory.RegisterConverterRule(rule())
        segmentation = slicer.vtkMRMLSegmentationNode()
        self.scene.AddNode(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segment_id = segmentation.GetSegmentation().AddEmptySegment("", segment_name)
        self.editor_node.SetAndObserveSegmentationNode(segmentation)
        self.editor_node.SetAndObserveSourceVolumeNode(volume_node)
        self.editor_node.SetSelectedSegmentID(segment_id)
        self.editor_logic.SetSourceVolumeNode(volume_node)
        return segmentation, segment_id

    # mouse and keys, through a real vtkRenderWindowInteractor
    def send(self, view, event, xy=(0, 0), shift=False, control=False, keysym=None):
        view.interactor.SetEventInformation(int(xy[0]), int(xy[1]), int(control), int(shift), "\0", 0, keysym)
        return self.scripted_effect.self().processInteractionEvents(view.interactor, event, view)

    def click(self, view, xy, shift=False):
        return [self.send(view, vtk.vtkCommand.LeftButtonPressEvent, xy, shift),
                self.send(view, vtk.vtkCommand.LeftButtonReleaseEvent, xy, shift)]

    def drag(self, view, start, end, steps=4, during=None):
        """Press at ``start``, move in ``steps`` to ``end`` (``during(xy)`` after each move), release there."""
        handled = [self.send(view, vtk.vtkCommand.LeftButtonPressEvent, start)]
        for step in range(1, steps + 1):
            xy = tuple(int(round(a + (b - a) * step / steps)) for a, b in zip(start, end))
            handled.append(self.send(view, vtk.vtkCommand.MouseMoveEvent, xy))
            if during is not None:
                during(xy)
        handled.append(self.send(view, vtk.vtkCommand.LeftButtonReleaseEvent, end))
        return handled

    def key(self, view, keysym, xy=(10, 10), control=False):
        return self.send(view, vtk.vtkCommand.KeyPressEvent, xy, keysym=keysym, control=control)

    @staticmethod
    def xy_of_ijk(view, volume_node, ijk):
        """The pixel of ``view`` showing voxel (i, j, k) of ``volume_node``."""
        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)
        return view.xy_of_ras(matrix.MultiplyPoint((*map(float, ijk), 1.0))[:3])

    def wait_for_propagation(self, effect, timeout=120.0):
        """Run the Qt event loop (the effect's poll timer) until its propagation is written or ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            QtWidgets.QApplication.processEvents()
            if effect.logic is None or effect.logic.job is None or effect.logic.job.applied:
                QtWidgets.QApplication.processEvents()
                return True
            time.sleep(0.02)
        return False


# -- the screenshot ---------------------------------------------------------------------------------------------
def _slice_image(view, volume_node, mask_kji, window=(-160.0, 240.0)):
    """The view's pixels (RGB, rows top-down) as the slice view shows them: the volume sampled through the slice
    node's real XYToRAS (nearest voxel), ``mask_kji`` blended in the segment's colour with its outline."""
    import numpy as np
    from IMISSegmentSlicer.mrml import array_from_volume_node, ijk_to_ras_matrix
    node = view.mrmlSliceNode()
    width, height, _ = node.GetDimensions()
    xy_to_ras = np.array([[node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ras_to_ijk = np.linalg.inv(ijk_to_ras_matrix(volume_node))
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size), np.ones(xs.size)])
    ijk = np.floor(ras_to_ijk @ xy_to_ras @ points + 0.5).astype(int)[:3]
    array = array_from_volume_node(volume_node)
    inside = np.all((ijk >= 0) & (ijk < np.array(array.shape[::-1])[:, None]), axis=0)
    values = np.full(xs.size, window[0], np.float32)
    labels = np.zeros(xs.size, bool)
    i, j, k = ijk[:, inside]
    values[inside] = array[k, j, i]
    labels[inside] = mask_kji[k, j, i] > 0
    grey = np.clip((values - window[0]) / (window[1] - window[0]), 0, 1).reshape(height, width)
    labels = labels.reshape(height, width)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colour = np.array([0.20, 0.75, 0.35])
    rgb[labels] = 0.55 * rgb[labels] + 0.45 * colour
    edge = labels & ~(np.roll(labels, 1, 0) & np.roll(labels, -1, 0) & np.roll(labels, 1, 1) & np.roll(labels, -1, 1))
    rgb[edge] = colour
    return (np.flipud(rgb) * 255).astype(np.uint8)   # VTK's y goes up, an image's rows go down


def make_screenshot(path, harness=None, structure="spleen"):
    """The IMIS effect on the example CT shipped in Resources/Data: a box dragged around ``structure`` on the slice
    where it is largest, then Propagate; its options panel (rendered by Qt) beside the red slice with the segment as
    MRML holds it and the box drawn where it was dragged. Returns a summary (Dice against the example's label)."""
    import numpy as np
    from IMISSegmentLib.io import read_image, read_label, read_labelmap_names

    data = REPO / "Resources" / "Data" / "ct_abdomen"
    own = harness is None
    harness = harness or SlicerHarness()
    try:
        image = read_image(data / "image.nii.gz")
        label = read_label(data / "label.nii.gz", image)
        value = next(v for v, n in read_labelmap_names(data / "labels.json").items() if n == structure)
        truth = label == value
        k = int(truth.sum(axis=(1, 2)).argmax())
        volume = harness.add_volume(image, "CT abdomen")
        harness.add_segmentation(volume, structure)
        view = harness.red
        view.show_volume(volume, k)
        effect = harness.effect()
        effect.activate()
        js, iis = np.nonzero(truth[k])

        def xy(i, j):
            return harness.xy_of_ijk(view, volume, (i, j, k))

        corner_a, corner_b = xy(iis.min() - 2, js.min() - 2), xy(iis.max() + 2, js.max() + 2)
        harness.drag(view, corner_a, corner_b)
        effect.propagateButton.click()
        if not harness.wait_for_propagation(effect):
            raise RuntimeError("propagation did not finish")
        segment = effect.logic.segment_array()
        slice_rgb = np.ascontiguousarray(_slice_image(view, volume, segment))
        height, width = slice_rgb.shape[:2]

        # compose: options panel | slice view, as one Qt widget grabbed to PNG
        panel = harness.scripted_effect.optionsFrame
        panel.setFixedWidth(420)
        canvas = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(canvas)
        left = QtWidgets.QVBoxLayout()
        title = QtWidgets.QLabel(f"<b>Segment Editor: IMIS</b>, segment <i>{structure}</i>")
        title.setTextFormat(QtCore.Qt.RichText)
        steps = QtWidgets.QLabel("A box dragged on the red slice, then Propagate: the segment through the volume.")
        steps.setWordWrap(True)
        left.addWidget(title)
        left.addWidget(panel)
        left.addWidget(steps)
        left.addStretch(1)
        row.addLayout(left)
        qimage = QtGui.QImage(slice_rgb.data, width, height, 3 * width, QtGui.QImage.Format_RGB888).copy()
        painter = QtGui.QPainter(qimage)
        painter.setRenderHint(QtGui.QPainter.Antialiasing)
        pen = QtGui.QPen(QtGui.QColor(255, 217, 0))
        pen.setWidth(2)
        pen.setStyle(QtCore.Qt.DashLine)
        painter.setPen(pen)
        (x0, y0), (x1, y1) = corner_a, corner_b
        painter.drawRect(QtCore.QRect(QtCore.QPoint(min(x0, x1), height - 1 - max(y0, y1)),
                                      QtCore.QPoint(max(x0, x1), height - 1 - min(y0, y1))))
        painter.setPen(QtGui.QColor(255, 255, 255))
        painter.drawText(8, 18, f"Red: axial slice {k + 1} of {volume.GetImageData().GetDimensions()[2]}")
        painter.end()
        picture = QtWidgets.QLabel()
        picture.setPixmap(QtGui.QPixmap.fromImage(qimage).scaled(2 * width, 2 * height))
        row.addWidget(picture)
        canvas.adjustSize()
        canvas.show()
        QtWidgets.QApplication.processEvents()
        pixmap = canvas.grab()
        if not pixmap.save(str(path), "PNG"):
            raise RuntimeError(f"could not write {path}")
        canvas.hide()
        dice = float(2 * (segment.astype(bool) & truth).sum() / max(segment.sum() + truth.sum(), 1))
        return {"path": str(path), "slice": k, "segment_voxels": int(segment.sum()), "dice": dice,
                "slices_with_segment": int((segment.sum(axis=(1, 2)) > 0).sum()),
                "size": [pixmap.width(), pixmap.height()]}
    finally:
        if own:
            harness.close()


# -- scenarios run in a fresh process, with packages hidden -------------------------------------------------------
def _scenario_consent(hidden, accept):
    """A stock Slicer: the effect, selected first, asks before installing; declined, it says so; accepted, what it
    asked for is installed (the hidden packages come back) and a click segments. Then the module panel opens and
    the module's self-test runs (skipped while the packages are missing)."""
    result = {"imported_at_consent": None}

    def installed(requirements):
        result["imported_at_consent"] = hidden.imported()
        hidden.install()

    with SlicerHarness(answers={"okcancel": accept}) as harness:
        harness.on_pip_install = installed
        sys.path.insert(0, str(REPO / "Testing"))
        from conftest import synthetic_ct_volume
        volume = harness.add_volume(synthetic_ct_volume(), "synthetic", spacing=(3.0, 1.0, 1.0))
        harness.add_segmentation(volume, "sphere")
        harness.red.show_volume(volume, 6)
        try:
            effect = harness.effect()
            effect.activate()
            result["ready"] = getattr(effect, "_ready", None)
            if effect.logic is not None:
                harness.click(harness.red, harness.xy_of_ijk(harness.red, volume, (30, 32, 6)))
                result["segment_voxels"] = int(effect.logic.segment_array().sum())
        except Exception as error:   # noqa: BLE001 - reported to the test
            import traceback
            result["effect_error"] = f"{type(error).__name__}: {error}"
            result["effect_traceback"] = traceback.format_exc()
        try:
            widget = harness.module_widget()
            result["widget_volume_selector"] = widget.ui.volumeSelector.className()
        except Exception as error:   # noqa: BLE001 - reported to the test
            result["widget_error"] = f"{type(error).__name__}: {error}"
        if hasattr(harness, "module_file"):
            run = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(
                unittest.TestLoader().loadTestsFromTestCase(harness.module_file.IMISSegmentTest))
            result["selftest"] = {"run": run.testsRun, "skipped": [reason for _, reason in run.skipped],
                                  "failures": len(run.failures) + len(run.errors)}
        result["questions"] = [m["text"] for m in harness.messages if "Question" in m["icon"]]
        result["errors"] = [m["text"] for m in harness.errors()]
        result["error_details"] = [m["detailedText"] for m in harness.errors()]
        result["pip_installs"] = harness.pip_installs
    if result["imported_at_consent"] is None:
        result["imported_at_consent"] = hidden.imported()
    return result


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", help="write the extension's screenshot (PNG) here")
    parser.add_argument("--scenario", choices=["decline", "accept"])
    parser.add_argument("--hide", default=",".join(NOT_IN_SLICER))
    args = parser.parse_args(argv)
    if args.scenario:
        hidden = HiddenPackages([n for n in args.hide.split(",") if n])
        result = _scenario_consent(hidden, accept=args.scenario == "accept")
        print("HARNESS-RESULT " + json.dumps(result))
        return 0
    if args.screenshot:
        sys.path.insert(0, str(MODULE_DIR))
        print(json.dumps(make_screenshot(args.screenshot)))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
