"""The headless batch script end to end, run as a separate process with the slicer-core wheel."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import EXAMPLE_CT

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[test]')")
slicerio = pytest.importorskip("slicerio")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "IMISSegment" / "Scripts" / "batch_evaluate.py"
CASE = EXAMPLE_CT   # the example CT that ships in Resources/Data; one of its structures, to keep the runs short
STRUCTURE = "spleen"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_batch_script_writes_segmentation_and_metrics(tmp_path):
    from IMISSegmentLib.io import read_image, read_label
    from IMISSegmentLib.io.volume import ijk_to_lps

    out = tmp_path / "out"
    done = _run("--data", CASE, "--out", out, "--rounds", "1", "--labels", STRUCTURE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = sorted((out / "segmentations").glob("*.seg.nrrd"))
    assert len(files) == 1
    segmentation = slicerio.read_segmentation(str(files[0]))
    names = json.loads((CASE / "labels.json").read_text())["labels"]
    value = int(next(v for v, n in names.items() if n == STRUCTURE))
    assert [s["name"] for s in segmentation["segments"]] == [STRUCTURE]
    image = read_image(CASE / "image.nii.gz")
    np.testing.assert_allclose(segmentation["ijkToLPS"], ijk_to_lps(image), rtol=0, atol=1e-6)
    voxels = np.asarray(segmentation["voxels"])
    assert voxels.shape == image.shape[::-1]                             # (I, J, K) in the file
    mask = voxels.T == segmentation["segments"][0]["labelValue"]
    reference = read_label(CASE / "label.nii.gz", image) == value
    dice = 2 * np.count_nonzero(mask & reference) / (mask.sum() + reference.sum())

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["structure"] == STRUCTURE and rows[0]["case"] == CASE.name
    assert float(rows[0]["final_dice_segment"]) == pytest.approx(dice, abs=1e-9)
    assert float(rows[0]["final_dice"]) == pytest.approx(dice, abs=1e-9)   # session result == MRML segment
    assert dice > 0.5
    report = json.loads((out / "metrics.json").read_text())
    assert report["errors"] == [] and len(report["records"][0]["steps"]) == 2


def test_batch_script_runs_the_fusion_ablation(tmp_path):
    """--mrf both: the default model (it can fuse rounds) runs with fusion on and as default-nomrf with it off;
    each row says which, and counts its drops and those whose clicked slice got worse."""
    out = tmp_path / "out"
    done = _run("--data", CASE, "--out", out, "--rounds", "2", "--mrf", "both", "--labels", STRUCTURE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["method"]: row for row in csv.DictReader(open(out / "metrics.csv"))}
    assert set(rows) == {"default", "default-nomrf"}
    assert (rows["default"]["fusion"], rows["default-nomrf"]["fusion"]) == ("True", "False")
    for row in rows.values():
        assert 0 <= int(row["drops_clicked_slice"]) <= int(row["drops"]) <= 2
    assert sorted(p.name for p in (out / "segmentations").glob("*.seg.nrrd")) == [
        f"{CASE.name}-default-nomrf.seg.nrrd", f"{CASE.name}-default.seg.nrrd"]
    done = _run("--data", CASE, "--out", tmp_path / "bad", "--mrf", "sometimes", cwd=tmp_path)
    assert done.returncode == 2 and "--mrf" in done.stderr


def test_batch_script_bad_arguments_exit_2(tmp_path):
    done = _run("--data", tmp_path / "missing", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and "error" in done.stderr
    done = _run("--out", tmp_path / "out", cwd=tmp_path)                  # --data missing
    assert done.returncode == 2
    done = _run("--data", CASE, "--out", tmp_path / "out", "--methods", "no-such-engine", cwd=tmp_path)
    assert done.returncode == 2 and "no-such-engine" in done.stderr


def _rows(out):
    return list(csv.DictReader(open(out / "metrics.csv")))


def test_batch_script_rejects_truncated_and_corrupt_nifti_cases(tmp_path, write_block_case):
    """MRML's reader zero-fills a truncated .nii.gz, reads a gzip stream without its end and NaN / inf voxels
    without a word: each such case is an error (exit 1), the good case is still evaluated."""
    import SimpleITK as sitk

    data = tmp_path / "data"
    for seed, name in enumerate(("cut", "good", "nan", "noend")):
        write_block_case(data / name, seed)
    image = data / "cut" / "image.nii.gz"
    image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])
    image = data / "noend" / "image.nii.gz"
    image.write_bytes(image.read_bytes()[:-8])                       # all the voxels, no gzip trailer
    image = data / "nan" / "image.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float32)
    array[1, 5, 5], array[2, 6, 6] = np.nan, np.inf
    nan_image = sitk.GetImageFromArray(array)
    nan_image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(nan_image, str(image))

    out = tmp_path / "out"
    done = _run("--data", data, "--out", out, "--methods", "growcut", "--rounds", "0", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = json.loads((out / "metrics.json").read_text())["errors"]
    assert len(errors) == 3
    assert errors[0].startswith("cut: ") and "truncated" in errors[0]
    assert errors[1].startswith("nan: ") and "not finite (1 NaN, 1 inf)" in errors[1]
    assert errors[2].startswith("noend: ") and "gzip stream ends" in errors[2]
    for error in errors:
        assert f"{error.split(': ', 1)[0]}: error: {error.split(': ', 1)[1]}" in done.stderr
    assert [(row["case"], row["structure"]) for row in _rows(out)] == [("good", "block")]


def test_batch_script_out_that_cannot_be_written_exit_2(tmp_path, write_block_case):
    """Checked before any work: one line, exit 2, nothing written."""
    write_block_case(tmp_path / "case", 0)
    afile = tmp_path / "afile"
    afile.write_text("")
    bad = [afile, afile / "under"] + ([Path("/proc/imis")] if Path("/proc/self").is_dir() else [])
    for out in bad:
        done = _run("--data", tmp_path / "case", "--out", out, "--methods", "growcut", "--rounds", "0", cwd=tmp_path)
        assert done.returncode == 2, (out, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"batch_evaluate: error: cannot write {out}"), done.stderr
        assert done.stdout == ""
    assert afile.read_text() == "" and not (tmp_path / "segmentations").exists()


def test_batch_script_labels_that_match_nothing_exit_1(tmp_path, write_block_case):
    """A --labels entry no case has is named as an error (exit 1), the others still run; a run that evaluates
    nothing says so and exits 1; an empty --labels is a bad argument."""
    write_block_case(tmp_path / "data" / "case", 0)
    out = tmp_path / "out"
    done = _run("--data", tmp_path / "data", "--out", out, "--methods", "growcut", "--rounds", "0",
                "--labels", "block,blok,7", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    message = "labels 7, blok: no case has a structure with that value or name"
    assert f"batch_evaluate: error: {message}" in done.stderr
    assert json.loads((out / "metrics.json").read_text())["errors"] == [message]
    assert [row["structure"] for row in _rows(out)] == ["block"]

    done = _run("--data", tmp_path / "data", "--out", tmp_path / "none", "--methods", "growcut", "--rounds", "0",
                "--labels", "blok", cwd=tmp_path)
    assert done.returncode == 1 and "labels blok: no case has a structure" in done.stderr
    assert _rows(tmp_path / "none") == []

    done = _run("--data", tmp_path / "data", "--out", tmp_path / "empty", "--labels", " , ", cwd=tmp_path)
    assert done.returncode == 2 and "--labels is empty" in done.stderr


def test_batch_script_that_evaluates_nothing_exit_1(tmp_path, write_block_case):
    import SimpleITK as sitk

    case = tmp_path / "data" / "case"
    write_block_case(case, 0)
    label = sitk.ReadImage(str(case / "label.nii.gz"))
    empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(label).shape, np.uint8))
    empty.CopyInformation(label)
    sitk.WriteImage(empty, str(case / "label.nii.gz"))
    done = _run("--data", tmp_path / "data", "--out", tmp_path / "out", "--methods", "growcut", "--rounds", "0",
                cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "batch_evaluate: error: nothing was evaluated" in done.stderr
    assert _rows(tmp_path / "out") == []
