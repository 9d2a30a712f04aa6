"""The Slicer module's Qt layer run, not read: the module widget's setup() and parameter node, the IMIS effect's
options panel, activate(), mouse and keys through processInteractionEvents, and its buttons, against real MRML
(slicer-core) and real Qt widgets (PySide6, offscreen), with the Slicer names that cannot run here supplied by
Testing/slicer_qt_harness.py. Packages a stock Slicer lacks are hidden for real in a child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[test]')")
pytest.importorskip("PySide6", reason="needs PySide6 (pip install -e '.[test]')")

from conftest import SYNTH_CENTRE, SYNTH_SPACING, synthetic_ct_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "Testing" / "slicer_qt_harness.py"


@pytest.fixture
def harness():
    import slicer_qt_harness
    with slicer_qt_harness.SlicerHarness() as harness:
        yield harness


@pytest.fixture
def sphere(harness):
    """The synthetic CT (a bright sphere), a segmentation with one segment, the red view on the sphere's centre."""
    volume = harness.add_volume(synthetic_ct_volume(), "synthetic", spacing=SYNTH_SPACING)
    segmentation, segment_id = harness.add_segmentation(volume, "sphere")
    harness.red.show_volume(volume, SYNTH_CENTRE[0])
    return volume, segmentation, segment_id


def _xy(harness, volume, kji):
    k, j, i = kji
    return harness.xy_of_ijk(harness.red, volume, (i, j, k))


# -- point 1: the module panel ----------------------------------------------------------------------------------
def test_module_widget_setup_binds_its_parameter_node(harness, sphere):
    """setup() and initializeParameterNode() run; the parameter node and the selectors follow each other."""
    volume, segmentation, _ = sphere
    widget = harness.module_widget()
    node = widget._parameterNode
    assert node.inputVolume is volume
    assert widget.ui.volumeSelector.currentNode() is volume
    assert widget.ui.segmentationSelector.currentNode() is None
    widget.ui.segmentationSelector.setCurrentNode(segmentation)          # GUI -> parameter node
    assert node.segmentation is segmentation
    node.segmentation = None                                             # parameter node -> GUI
    assert widget.ui.segmentationSelector.currentNode() is None
    # the button opens the Segment Editor with a new segmentation and the IMIS effect
    widget.ui.openButton.click()
    assert harness.selected_modules == ["SegmentEditor"]
    created = node.segmentation
    assert created is not None and created.GetSegmentation().GetNumberOfSegments() == 1
    assert ("setActiveEffectByName", "IMIS") in harness.segment_editor_widget.calls
    assert harness.errors() == []
    # closing the scene rebinds (EndCloseEvent) without raising
    harness.scene.Clear(0)
    assert widget._parameterNode.inputVolume is None
    assert "Needs 3D Slicer 5.10 or later" in harness.module.parent.helpText
    assert "(soon)" not in harness.module.parent.helpText


# -- point 2: before and after consent, packages hidden for real ------------------------------------------------
def _run_scenario(name):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(HARNESS), "--scenario", name], capture_output=True, text=True,
                          timeout=600, cwd=str(REPO), env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("HARNESS-RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1].split(" ", 1)[1])


def test_stock_slicer_declined_installation_asks_first_and_says_what_to_do():
    """slicerio, onnxruntime, torch, tqdm, matplotlib not installed: the module panel opens, its self-test skips
    naming the packages, the effect asks before installing and, declined, says what to do; none of them imported."""
    result = _run_scenario("decline")
    assert "widget_error" not in result and result["widget_volume_selector"] == "qMRMLNodeComboBox"
    assert result["selftest"]["failures"] == 0 and len(result["selftest"]["skipped"]) == 1
    assert "slicerio" in result["selftest"]["skipped"][0] and "onnxruntime" in result["selftest"]["skipped"][0]
    assert "effect_error" not in result, result.get("effect_traceback")
    assert len(result["questions"]) == 1
    assert "slicerio" in result["questions"][0] and "onnxruntime" in result["questions"][0]
    assert result["errors"] == ["IMIS needs a few Python packages that were not installed."]
    assert result["pip_installs"] == [] and result["ready"] is False
    assert result["imported_at_consent"] == []


def test_stock_slicer_accepted_installation_installs_then_segments():
    result = _run_scenario("accept")
    assert "effect_error" not in result, result.get("effect_traceback")
    assert result["pip_installs"] == [["slicerio>=1.1", "onnxruntime>=1.17"]]
    assert result["imported_at_consent"] == []          # nothing of them was imported before the user agreed
    assert result["ready"] is True and result["errors"] == []
    assert result["segment_voxels"] > 0


# -- the effect --------------------------------------------------------------------------------------------------
def test_effect_click_shift_click_drag_keys_and_buttons(harness, sphere):
    volume, segmentation, segment_id = sphere
    effect = harness.effect()
    scripted = harness.scripted_effect
    assert scripted.name == "IMIS" and scripted.optionsLayout.rowCount() >= 4
    help_text = effect.helpText()
    for words in ("Text", "Undo round", "Multi-round fusion", "5.10"):
        assert words in help_text
    # no window-wide shortcuts: the buttons have none (keys go through the views, below)
    for button in (effect.propagateButton, effect.acceptButton, effect.undoButton, effect.undoRoundButton):
        assert button.shortcut.isEmpty()

    effect.activate()
    assert harness.messages == [] and effect.logic is not None
    logic = effect.logic
    assert logic.segment_id == segment_id and logic.segmentation_node is segmentation
    k, j, i = SYNTH_CENTRE

    # click: a positive point on the voxel under the mouse, in the axial slice
    assert harness.click(harness.red, _xy(harness, volume, (k, j, i))) == [True, True]
    (click,) = logic.session.prompts
    assert click.positive and click.axis == 0 and click.point == (k, j, i)
    after_click = logic.segment_array()
    assert after_click[k].sum() > 0 and np.array_equal(after_click, logic.result)
    assert scripted.undoStatesSaved >= 1

    # shift-click: a negative point
    harness.click(harness.red, _xy(harness, volume, (k, j + 6, i + 6)), shift=True)
    negative = logic.session.prompts[-1]
    assert not negative.positive and negative.point == (k, j + 6, i + 6)

    # drag: the rubber band follows the mouse, then a box prompt between press and release
    outlines = []
    start, end = _xy(harness, volume, (k, j - 12, i - 12)), _xy(harness, volume, (k, j + 12, i + 12))
    renders = harness.red.sliceView().renders

    def seen(xy):
        outline = effect._outlines[harness.red]
        outlines.append((outline.visible, outline.corners()))
    assert all(harness.drag(harness.red, start, end, steps=4, during=seen))
    assert [visible for visible, _ in outlines] == [True] * 4
    visible, corners = outlines[-1]
    assert corners == [(start[0], start[1]), (end[0], start[1]), (end[0], end[1]), (start[0], end[1])]
    assert not effect._outlines[harness.red].visible           # gone on release
    assert harness.red.sliceView().renders >= renders + 5
    assert harness.red.sliceView().renderer.HasViewProp(effect._outlines[harness.red].actor)
    box = logic.session.prompts[-1]
    assert type(box).__name__ == "Box" and box.slice_index == k
    assert box.lo == (j - 12, i - 12) and box.hi == (j + 12, i + 12)
    on_slice = logic.segment_array()[k].sum()

    # Propagate (button): worker thread, progress dialog, the poll timer writes the result
    effect.propagateButton.click()
    assert effect._progress is not None
    assert harness.wait_for_propagation(effect)
    propagated = logic.segment_array()
    assert (propagated.sum(axis=(1, 2)) > 0).sum() > 1 and np.array_equal(propagated, logic.result)
    assert harness.errors() == []

    # Undo (button): the propagation is taken back
    effect.undoButton.click()
    assert logic.segment_array()[k].sum() == on_slice
    assert np.array_equal(logic.segment_array(), logic.result)

    # keys, with the mouse over the view: P propagates; Ctrl+P and Z are not the effect's
    assert harness.key(harness.red, "z") is False and harness.key(harness.red, "p", control=True) is False
    assert harness.key(harness.red, "p") is True
    assert harness.wait_for_propagation(effect)
    assert (logic.segment_array().sum(axis=(1, 2)) > 0).sum() > 1
    assert harness.key(harness.red, "U") is True               # undo round: its prompts and propagation
    assert logic.session.prompts == () and logic.segment_array().sum() == 0

    # Accept (button): the segment stays, the session starts afresh
    harness.click(harness.red, _xy(harness, volume, (k, j, i)))
    kept = logic.segment_array().copy()
    effect.acceptButton.click()
    assert logic.session.prompts == () and np.array_equal(logic.segment_array(), kept) and kept.sum() > 0

    # deactivate: the rubber band leaves the view
    actor = effect._outlines[harness.red].actor
    effect.deactivate()
    assert not harness.red.sliceView().renderer.HasViewProp(actor) and effect.logic is None
    assert harness.errors() == []


def test_effect_on_a_slicer_older_than_5_10_says_so(harness, sphere, monkeypatch):
    import slicer
    monkeypatch.delattr(slicer, "vtkSlicerSegmentEditorLogic")
    effect = harness.effect()
    effect.activate()
    assert effect.logic is None and not effect._ready
    (error,) = harness.errors()
    assert error["text"] == "IMIS cannot run in this version of 3D Slicer."
    assert "5.10 or later" in error["detailedText"] and "5.13.0-harness" in error["detailedText"]
    assert not any("Question" in m["icon"] for m in harness.messages)     # nothing offered for installation
    assert harness.click(harness.red, (100, 100)) == [False, False]       # the view keeps its own behaviour


def test_module_self_test_runs_as_the_build_tree_runs_it(harness):
    """slicer_add_python_unittest(SCRIPT IMISSegment.py) loads the module file as a unittest module."""
    harness.module_widget()
    run = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(
        unittest.TestLoader().loadTestsFromModule(harness.module_file))
    assert run.testsRun == 1 and run.wasSuccessful() and not run.skipped, run.errors + run.failures
    assert "IMIS round trip passed" in harness.displayed


def test_screenshot_is_made_from_real_output(harness, tmp_path):
    """The extension's screenshot, made as Resources/Screenshots/imis-effect.png was: the effect on the example CT."""
    from PySide6 import QtGui
    import slicer_qt_harness
    summary = slicer_qt_harness.make_screenshot(tmp_path / "shot.png", harness=harness)
    assert summary["dice"] > 0.5 and summary["slices_with_segment"] > 3
    image = QtGui.QImage(str(tmp_path / "shot.png"))
    assert image.width() > 900 and image.height() > 500
