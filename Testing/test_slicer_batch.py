"""The headless batch script end to end, run as a separate process with the slicer-core wheel."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import SHARED_DATA

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[test]')")
slicerio = pytest.importorskip("slicerio")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "IMISSegment" / "Scripts" / "batch_evaluate.py"
CASE = SHARED_DATA / "ct_lesion_a"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(not CASE.is_dir(), reason=f"shared data not found at {CASE}")
def test_batch_script_writes_segmentation_and_metrics(tmp_path):
    from IMISSegmentLib.io import read_image, read_label
    from IMISSegmentLib.io.volume import ijk_to_lps

    out = tmp_path / "out"
    done = _run("--data", CASE, "--out", out, "--rounds", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = sorted((out / "segmentations").glob("*.seg.nrrd"))
    assert len(files) == 1
    segmentation = slicerio.read_segmentation(str(files[0]))
    names = json.loads((CASE / "labels.json").read_text())["labels"]
    assert [s["name"] for s in segmentation["segments"]] == [names["1"]]
    image = read_image(CASE / "image.nii.gz")
    np.testing.assert_allclose(segmentation["ijkToLPS"], ijk_to_lps(image), rtol=0, atol=1e-6)
    voxels = np.asarray(segmentation["voxels"])
    assert voxels.shape == image.shape[::-1]                             # (I, J, K) in the file
    mask = voxels.T == segmentation["segments"][0]["labelValue"]
    reference = read_label(CASE / "label.nii.gz", image) == 1
    dice = 2 * np.count_nonzero(mask & reference) / (mask.sum() + reference.sum())

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["structure"] == names["1"] and rows[0]["case"] == "ct_lesion_a"
    assert float(rows[0]["final_dice_segment"]) == pytest.approx(dice, abs=1e-9)
    assert float(rows[0]["final_dice"]) == pytest.approx(dice, abs=1e-9)   # session result == MRML segment
    assert dice > 0.5
    report = json.loads((out / "metrics.json").read_text())
    assert report["errors"] == [] and len(report["records"][0]["steps"]) == 2


@pytest.mark.skipif(not CASE.is_dir(), reason=f"shared data not found at {CASE}")
def test_batch_script_runs_the_fusion_ablation(tmp_path):
    """--mrf both: the default model (it can fuse rounds) runs with fusion on and as default-nomrf with it off;
    each row says which, and counts its drops and those whose clicked slice got worse."""
    out = tmp_path / "out"
    done = _run("--data", CASE, "--out", out, "--rounds", "2", "--mrf", "both", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["method"]: row for row in csv.DictReader(open(out / "metrics.csv"))}
    assert set(rows) == {"default", "default-nomrf"}
    assert (rows["default"]["fusion"], rows["default-nomrf"]["fusion"]) == ("True", "False")
    for row in rows.values():
        assert 0 <= int(row["drops_clicked_slice"]) <= int(row["drops"]) <= 2
    assert sorted(p.name for p in (out / "segmentations").glob("*.seg.nrrd")) == [
        "ct_lesion_a-default-nomrf.seg.nrrd", "ct_lesion_a-default.seg.nrrd"]
    done = _run("--data", CASE, "--out", tmp_path / "bad", "--mrf", "sometimes", cwd=tmp_path)
    assert done.returncode == 2 and "--mrf" in done.stderr


def test_batch_script_bad_arguments_exit_2(tmp_path):
    done = _run("--data", tmp_path / "missing", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and "error" in done.stderr
    done = _run("--out", tmp_path / "out", cwd=tmp_path)                  # --data missing
    assert done.returncode == 2
    done = _run("--data", CASE, "--out", tmp_path / "out", "--methods", "no-such-engine", cwd=tmp_path)
    assert done.returncode == 2 and "no-such-engine" in done.stderr
