"""`imis-segment demo` on the example CT that ships in Resources/Data."""
import json

import numpy as np
import slicerio

from IMISSegmentLib.demo import example_case_dir
from IMISSegmentLib.evaluation.metrics import dice
from IMISSegmentLib.io import read_image, read_label
from helpers import run_cli


def test_demo_writes_segmentation_overlay_and_reports_dice(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--engine", "growcut", "--structure", "liver", "--clicks", "2",
                              "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "Dice" in out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert len(summary["dice_2d"]) == 2 and len(summary["dice_3d"]) == 2
    assert (tmp_path / "demo-liver.png").stat().st_size > 10_000
    # the reported final Dice is the Dice of the written segmentation against the shipped label
    segmentation = slicerio.read_segmentation(str(tmp_path / "demo-liver.seg.nrrd"))
    assert [s["name"] for s in segmentation["segments"]] == ["liver"]
    mask = np.asarray(segmentation["voxels"]).transpose(2, 1, 0) > 0
    volume = read_image(example_case_dir() / "image.nii.gz")
    truth = read_label(example_case_dir() / "label.nii.gz", volume) == 5
    assert abs(dice(mask, truth) - summary["dice_3d"][-1]) < 1e-9


def test_demo_runs_the_shipped_model_by_default(tmp_path, capsys):
    """The README's main command: the shipped network on the shipped CT (the spleen, never trained on)."""
    code, out, err = run_cli(["demo", "--clicks", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["engine"].startswith("imis-clicknet") and summary["structure"] == "spleen"
    assert (tmp_path / "demo-spleen.seg.nrrd").is_file() and len(summary["dice_3d"]) == 2
    assert summary["dice_2d"][0] > 0.5, "a box on the spleen's largest slice must find the spleen"


def test_demo_unknown_structure_lists_the_known_ones(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--structure", "kidney", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "kidney_left" in err and err.startswith("imis-segment: error:")
    assert not any(tmp_path.iterdir())


def test_demo_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    out = tmp_path / "demo-out"
    out.write_text("keep")
    # an unknown structure would be reported once the example CT is read: the output is checked before that
    code, _, err = run_cli(["demo", "--structure", "kidney", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"imis-segment: error: cannot write {out}: it is an existing file")
    assert out.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["demo-out"]


def test_demo_clicks_must_be_a_whole_number_of_at_least_1(tmp_path, capsys):
    for value in ("0", "inf", "nan"):
        code, _, err = run_cli(["demo", "--clicks", value, "--out", str(tmp_path)], capsys)
        assert code == 2 and f"argument --clicks: expected a whole number >= 1, got '{value}'" in err
    assert not any(tmp_path.iterdir())
