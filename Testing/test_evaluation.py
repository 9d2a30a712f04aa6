"""Tests for ``imis-segment evaluate`` / ``merge`` (IMISSegmentLib.cli.main) on small synthetic case folders
in the layouts of ../shared/data and MSD / nnU-Net, and the real example CT that ships in Resources/Data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from IMISSegmentLib.cli import main
from helpers import EXAMPLE_CT, run_cli

SPACING_KJI = (2.5, 0.75, 0.75)
ORIGIN = (-30.0, 12.5, 7.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)   # a 90 degree rotation about z
EVAL_ARGS = ["--methods", "growcut", "--clicks", "4", "--rounds", "2"]


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING_KJI)))
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def _synthetic_case(seed: int, shape=(8, 40, 44)):
    """int16 CT-like image with a noisy bright ellipsoid (label 1) and a dimmer block (label 2) whose label
    reaches past its visible edge, so no method gets them perfect and Dice values differ."""
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 40, shape).astype(np.int16)
    image[:, :2] = -1000
    k, j, i = np.indices(shape)
    cj, ci = 14 + seed, 14 + 2 * seed
    ball = ((k - 4) / 2.6) ** 2 + ((j - cj) / 7.0) ** 2 + ((i - ci) / 8.0) ** 2 <= 1.0
    block = (k >= 2) & (k <= 5) & (j >= 26) & (j <= 34) & (i >= 28) & (i <= 38)
    image[ball] += 160
    image[block & (i <= 35)] += 120
    label = np.zeros(shape, np.uint8)
    label[ball] = 1
    label[block] = 2
    return image, label


def _build_case_folders(root: Path) -> Path:
    for seed, name in ((0, "case_a"), (2, "case_b")):
        image, label = _synthetic_case(seed)
        _write(image, root / name / "image.nii.gz")
        _write(label, root / name / "label.nii.gz")
        (root / name / "labels.json").write_text(json.dumps({"labels": {"1": "ball", "2": "block"}}))
    return root


def _build_msd(root: Path) -> Path:
    for seed, name in ((1, "blob_001"), (3, "blob_002")):
        image, label = _synthetic_case(seed)
        _write(image, root / "imagesTr" / f"{name}_0000.nii.gz")
        _write(label, root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "Blobs", "labels": {"0": "background", "1": "ball",
                                                                               "2": "block"}}))
    return root


def _comparable(record: dict) -> dict:
    """A record without its timings (which differ from run to run)."""
    out = {k: v for k, v in record.items() if k not in ("seconds_per_step", "steps")}
    out["steps"] = [{k: v for k, v in s.items() if k != "seconds"} for s in record["steps"]]
    return out


def _key(record):
    return record["case"], record["label"], record["method"], record["prompt"], record["protocol"]


@pytest.fixture(scope="module")
def case_root(tmp_path_factory) -> Path:
    return _build_case_folders(tmp_path_factory.mktemp("cases"))


@pytest.fixture(scope="module")
def full_run(case_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "full"
    assert main(["-q", "evaluate", str(case_root), *EVAL_ARGS, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def _check_masks_against_labels(out: Path, results: dict, label_files: dict) -> None:
    """Each written mask, read back with SimpleITK, gives the Dice the report states for it."""
    for record in results["records"]:
        mask_image = sitk.ReadImage(str(out / record["mask_file"]))
        label_image = sitk.ReadImage(str(label_files[record["case"]]))
        assert mask_image.GetDirection() == label_image.GetDirection()
        assert mask_image.GetOrigin() == label_image.GetOrigin()
        assert mask_image.GetSpacing() == label_image.GetSpacing()
        mask = sitk.GetArrayFromImage(mask_image) > 0
        truth = sitk.GetArrayFromImage(label_image) == record["label"]
        if record["protocol"] == "3d":
            expected = _dice(mask, truth)
        else:  # the 2D protocol works on the slice of its view where the structure is largest, and only there
            axis = {"axial": 0, "coronal": 1, "sagittal": 2}[record.get("view", "axial")]
            others = tuple(a for a in range(3) if a != axis)
            index = int(np.argmax(truth.sum(axis=others)))
            assert not np.delete(mask, index, axis=axis).any()
            expected = _dice(np.take(mask, index, axis=axis), np.take(truth, index, axis=axis))
        assert record["final_dice"] == pytest.approx(expected, abs=1e-9), record["mask_file"]
        assert record["steps"][-1]["dice"] == record["final_dice"]


# ---------------------------------------------------------------- a full run

def test_evaluate_writes_the_report(full_run, case_root):
    out, results = full_run
    for name in ("results.json", "per_structure.csv", "steps.csv", "summary.md", "dice_vs_clicks.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "dice_vs_clicks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["cases"] == ["case_a", "case_b"]
    assert results["errors"] == []
    records = results["records"]
    # 2 cases x 2 structures x (2D, 3D) x (box, click), all by GrowCut
    assert sorted({(r["case"], r["structure"], r["label"]) for r in records}) == [
        ("case_a", "ball", 1), ("case_a", "block", 2), ("case_b", "ball", 1), ("case_b", "block", 2)]
    assert len(records) == 16
    assert len({_key(r) for r in records}) == 16
    assert {r["method"] for r in records} == {"growcut"}
    for record in records:
        # --clicks 4: the first prompt and 3 corrections on the 2D slice; --rounds 2: first prompt + 2 rounds
        assert len(record["steps"]) == (4 if record["protocol"] == "2d" else 3)
        assert [s["step"] for s in record["steps"]] == list(range(len(record["steps"])))
        assert record["steps"][0]["action"] == ("box" if record["prompt"] == "box" else "click+")
        assert 0.0 <= record["final_dice"] <= 1.0 and 0.0 <= record["final_nsd"] <= 1.0
    # GrowCut segments these high-contrast blobs well from the simulated user's prompts
    assert np.mean([r["final_dice"] for r in records]) > 0.8
    with open(out / "steps.csv") as handle:
        steps = list(csv.DictReader(handle))
    assert len(steps) == sum(len(r["steps"]) for r in records) == 8 * 4 + 8 * 3
    with open(out / "per_structure.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    for row, record in zip(rows, records):
        assert float(row["final_dice"]) == pytest.approx(record["final_dice"])
    summary = (out / "summary.md").read_text()
    assert "2D protocol" in summary and "3D protocol" in summary and "growcut" in summary


def test_reported_dice_matches_the_written_masks(full_run, case_root):
    out, results = full_run
    labels = {name: case_root / name / "label.nii.gz" for name in results["cases"]}
    _check_masks_against_labels(out, results, labels)


def test_msd_layout_with_nnunet_names(tmp_path, capsys):
    root = _build_msd(tmp_path / "Task01_Blobs")
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", str(root), "--protocol", "3d", "--prompts", "box", *EVAL_ARGS,
                         "--out", str(out)], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["cases"] == ["blob_001", "blob_002"]
    assert {(r["case"], r["structure"]) for r in results["records"]} == {
        ("blob_001", "ball"), ("blob_001", "block"), ("blob_002", "ball"), ("blob_002", "block")}
    labels = {name: root / "labelsTr" / f"{name}.nii.gz" for name in results["cases"]}
    _check_masks_against_labels(out, results, labels)


def test_prompts_in_coronal_and_sagittal_views_are_reported_as_protocols_of_their_own(case_root, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", str(case_root / "case_a"), "--views", "axial,coronal,sagittal",
                            "--protocol", "2d,3d", "--prompts", "click", *EVAL_ARGS, "--out", str(out)], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["views"] == ["axial", "coronal", "sagittal"]
    records = results["records"]
    assert sorted({(r["view"], r["protocol"]) for r in records}) == [
        (v, p) for v in ("axial", "coronal", "sagittal") for p in ("2d", "3d")]
    assert len(records) == 2 * 3 * 2
    _check_masks_against_labels(out, results, {"case_a": case_root / "case_a" / "label.nii.gz"})
    summary = (out / "summary.md").read_text()
    for title in ("## 2D protocol", "## 2D CORONAL protocol", "## 2D SAGITTAL protocol", "## 3D CORONAL protocol"):
        assert title in summary
    with open(out / "steps.csv") as handle:
        assert {row["view"] for row in csv.DictReader(handle)} == {"axial", "coronal", "sagittal"}
    # a coronal run merges with the axial one of the same structures: the view is part of a result's identity
    axial = tmp_path / "axial"
    assert run_cli(["-q", "evaluate", str(case_root / "case_a"), "--protocol", "2d", "--prompts", "click",
                    *EVAL_ARGS, "--no-masks", "--out", str(axial)], capsys)[0] == 0
    coronal = tmp_path / "coronal"
    assert run_cli(["-q", "evaluate", str(case_root / "case_a"), "--views", "coronal", "--protocol", "2d",
                    "--prompts", "click", *EVAL_ARGS, "--no-masks", "--out", str(coronal)], capsys)[0] == 0
    merged = tmp_path / "merged"
    code, _, err = run_cli(["-q", "merge", str(axial), str(coronal), "--out", str(merged)], capsys)
    assert code == 0, err
    merged_results = json.loads((merged / "results.json").read_text())
    assert len(merged_results["records"]) == 4 and merged_results["config"]["views"] == ["axial", "coronal"]


def test_the_3d_protocol_prompts_and_corrects_in_its_view(growcut_engine):
    """run_3d with a view: the first click on the structure's largest slice normal to that axis, every correction
    click in the same view."""
    from IMISSegmentLib.evaluation.protocol import run_3d
    from IMISSegmentLib.session import InteractiveSession

    class Recording(InteractiveSession):
        def add_click(self, point, positive=True, axis=0):
            self.clicks.append((tuple(int(v) for v in point), axis))
            return super().add_click(point, positive=positive, axis=axis)

    image, label = _synthetic_case(0)
    reference = label == 1
    for axis in (1, 2):
        session = Recording(growcut_engine)
        session.clicks = []
        session.set_volume(image, SPACING_KJI)
        run_3d(session, reference, SPACING_KJI, "click", rounds=2, axis=axis)
        others = tuple(a for a in range(3) if a != axis)
        largest = int(np.argmax(reference.sum(axis=others)))
        assert session.clicks[0][0][axis] == largest
        assert {a for _, a in session.clicks} == {axis} and len(session.clicks) >= 2


def test_labels_option_restricts_structures(case_root, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", str(case_root / "case_b"), "--labels", "block", "--protocol", "2d",
                         "--prompts", "click", *EVAL_ARGS, "--no-masks", "--out", str(out)], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["cases"] == ["case_b"]
    assert [(r["structure"], r["mask_file"]) for r in results["records"]] == [("block", None)]
    assert not (out / "masks").exists()


def test_labels_that_match_nothing_and_empty_label_maps_are_not_a_silent_success(case_root, tmp_path, capsys):
    """A --labels name no case has is an error (exit 1, named in the summary); a case whose label map is empty is
    listed as skipped; a run that evaluated nothing exits 1 saying so."""
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", str(case_root / "case_b"), "--labels", "block,nonsense", "--protocol",
                            "2d", "--prompts", "click", *EVAL_ARGS, "--no-masks", "--out", str(out)], capsys)
    results = json.loads((out / "results.json").read_text())
    assert code == 1 and "failed" in err
    assert [r["structure"] for r in results["records"]] == ["block"]
    assert results["errors"] == ["labels nonsense: no case has a structure with that value or name"]
    assert "nonsense" in (out / "summary.md").read_text()
    # a shard sees only its own cases: a label it lacks is listed as skipped, not a failure
    code, _, err = run_cli(["-q", "evaluate", str(case_root), "--labels", "block,nonsense", "--shard", "1/2",
                            "--protocol", "2d", "--prompts", "click", *EVAL_ARGS, "--no-masks", "--out",
                            str(tmp_path / "shard")], capsys)
    results = json.loads((tmp_path / "shard" / "results.json").read_text())
    assert code == 0, err
    assert results["skipped"] == ["labels nonsense: no case of this shard has a structure with that value or name"]
    empty = tmp_path / "empty" / "case_e"
    image, label = _synthetic_case(4)
    _write(image, empty / "image.nii.gz")
    _write(np.zeros_like(label), empty / "label.nii.gz")
    code, _, err = run_cli(["-q", "evaluate", str(empty), "--protocol", "2d", "--prompts", "click", *EVAL_ARGS,
                            "--no-masks", "--out", str(tmp_path / "out_empty")], capsys)
    results = json.loads((tmp_path / "out_empty" / "results.json").read_text())
    assert code == 1 and "nothing was evaluated" in err
    assert results["skipped"] == ["case_e: no structure to evaluate (its label map is empty)"]


# ---------------------------------------------------------------- shards

def test_shards_are_disjoint_and_merge_to_the_full_run(full_run, case_root, tmp_path, capsys):
    _, full = full_run
    shard_dirs = []
    for shard in ("1/2", "2/2"):
        out = tmp_path / f"shard{shard[0]}"
        code, _, err = run_cli(["-q", "evaluate", str(case_root), *EVAL_ARGS, "--shard", shard, "--out", str(out)],
                            capsys)
        assert code == 0, err
        shard_dirs.append(out)
    parts = [json.loads((d / "results.json").read_text()) for d in shard_dirs]
    cases = [set(p["cases"]) for p in parts]
    assert cases[0] and cases[1] and not cases[0] & cases[1]
    assert cases[0] | cases[1] == set(full["cases"])
    for part in parts:
        assert {r["case"] for r in part["records"]} == set(part["cases"])

    merged_dir = tmp_path / "merged"
    code, _, err = run_cli(["-q", "merge", *map(str, shard_dirs), "--out", str(merged_dir)], capsys)
    assert code == 0, err
    merged = json.loads((merged_dir / "results.json").read_text())
    assert merged["cases"] == full["cases"]
    assert sorted(map(_comparable, merged["records"]), key=_key) == sorted(map(_comparable, full["records"]), key=_key)
    for name in ("per_structure.csv", "steps.csv", "summary.md", "dice_vs_clicks.png"):
        assert (merged_dir / name).is_file()
    full_summary = {(r["protocol"], r["prompt"]): r["final_dice"] for r in full["summary"]}
    merged_summary = {(r["protocol"], r["prompt"]): r["final_dice"] for r in merged["summary"]}
    assert merged_summary == pytest.approx(full_summary)

    # the same shard twice overlaps: rejected, nothing written
    code, out_text, err = run_cli(["-q", "merge", str(shard_dirs[0]), str(shard_dirs[0]), "--out",
                                str(tmp_path / "overlap")], capsys)
    assert code == 2
    assert err.startswith("imis-segment: error:") and err.count("\n") == 1
    assert sorted(cases[0])[0] in err
    assert not (tmp_path / "overlap").exists()


def test_runs_of_other_methods_on_the_same_cases_merge_into_one_table(full_run, case_root, tmp_path, capsys):
    """A peer evaluated in its own environment (here: the shipped network in a second run) merges with the
    first run on the same cases; the same method twice, or other protocol settings, are refused."""
    pytest.importorskip("onnxruntime")
    full_dir, full = full_run
    other = tmp_path / "clicknet"
    code, _, err = run_cli(["-q", "evaluate", str(case_root), "--methods", "clicknet", *EVAL_ARGS[2:], "--out",
                            str(other)], capsys)
    assert code == 0, err
    merged_dir = tmp_path / "both"
    code, _, err = run_cli(["-q", "merge", str(full_dir), str(other), "--out", str(merged_dir)], capsys)
    assert code == 0, err
    merged = json.loads((merged_dir / "results.json").read_text())
    assert merged["cases"] == full["cases"] and merged["config"]["methods"] == ["growcut", "clicknet"]
    assert {r["method"] for r in merged["summary"]} == {"growcut", "clicknet"}
    assert len(merged["records"]) == 2 * len(full["records"])
    assert "clicknet" in (merged_dir / "summary.md").read_text()
    # the network re-run (after a change) replaces its earlier results in the merged run, with --replace only
    rerun = tmp_path / "rerun"
    code, _, err = run_cli(["-q", "evaluate", str(case_root), "--methods", "clicknet", *EVAL_ARGS[2:], "--out",
                            str(rerun)], capsys)
    assert code == 0, err
    results = json.loads((rerun / "results.json").read_text())
    results["records"] = [dict(r, final_dice=-1.0) for r in results["records"]]   # marks the re-run's records
    (rerun / "results.json").write_text(json.dumps(results))
    code, _, err = run_cli(["-q", "merge", str(merged_dir), str(rerun), "--out", str(tmp_path / "dup")], capsys)
    assert code == 2 and "more than one part" in err and not (tmp_path / "dup").exists()
    code, _, err = run_cli(["-q", "merge", "--replace", str(merged_dir), str(rerun), "--out",
                            str(tmp_path / "replaced")], capsys)
    assert code == 0, err
    replaced = json.loads((tmp_path / "replaced" / "results.json").read_text())["records"]
    assert len(replaced) == len(merged["records"])
    assert all((r["final_dice"] == -1.0) == (r["method"] == "clicknet") for r in replaced)
    longer = tmp_path / "rounds3"
    assert run_cli(["-q", "evaluate", str(case_root), "--methods", "clicknet", "--clicks", "4", "--rounds", "3",
                    "--protocol", "3d", "--out", str(longer)], capsys)[0] == 0
    code, _, err = run_cli(["-q", "merge", str(full_dir), str(longer), "--out", str(tmp_path / "mixed")], capsys)
    assert code == 2 and "rounds_3d" in err and not (tmp_path / "mixed").exists()


def test_merge_of_a_folder_without_results_is_rejected(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["-q", "merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and err.startswith("imis-segment: error:") and "results.json" in err
    assert not (tmp_path / "m").exists()


def test_a_shifted_run_sees_every_case_as_another_scanner_would(case_root, tmp_path, capsys):
    """--shift changes each case (and its label map) for every method alike, says so, and does not merge with an
    unshifted run of the same structures."""
    runs = {}
    for shift in (None, "fov:1.5", "resolution:2"):
        out = tmp_path / (shift or "none").replace(":", "_")
        extra = ["--shift", shift] if shift else []
        code, _, err = run_cli(["-q", "evaluate", str(case_root / "case_a"), "--protocol", "2d", "--prompts", "box",
                                *EVAL_ARGS, *extra, "--out", str(out)], capsys)
        assert code == 0, err
        runs[shift] = out, json.loads((out / "results.json").read_text())
    assert runs[None][1]["config"]["shift"] is None and runs["fov:1.5"][1]["config"]["shift"] == "fov:1.5"
    assert "every case shifted `fov:1.5`" in (runs["fov:1.5"][0] / "summary.md").read_text()
    for shift, shape in (("fov:1.5", (8, 60, 66)), ("resolution:2", (8, 20, 22))):
        out, results = runs[shift]
        for record in results["records"]:   # the masks are on the shifted grid, as the method saw it
            mask = sitk.ReadImage(str(out / record["mask_file"]))
            assert sitk.GetArrayFromImage(mask).shape == shape
        if shift == "resolution:2":
            assert np.allclose(mask.GetSpacing(), (1.5, 1.5, 2.5))
        assert [r["structure"] for r in results["records"]] == ["ball", "block"]
        assert all(r["final_dice"] > 0.3 for r in results["records"])
    code, _, err = run_cli(["-q", "merge", str(runs[None][0]), str(runs["fov:1.5"][0]), "--out",
                            str(tmp_path / "merged")], capsys)
    assert code == 2 and "shift None vs 'fov:1.5'" in err
    # a structure the shift crops away is said, not silently dropped
    out = tmp_path / "narrow"
    code, _, err = run_cli(["-q", "evaluate", str(case_root / "case_a"), "--protocol", "2d", "--prompts", "box",
                            *EVAL_ARGS, "--shift", "fov:0.25", "--no-masks", "--out", str(out)], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert [r["structure"] for r in results["records"]] == ["ball"]
    assert "case_a: block not in the fov:0.25 view" in results["skipped"]


def test_shifts_change_the_field_of_view_resolution_and_contrast_as_they_say():
    from IMISSegmentLib.errors import InputError
    from IMISSegmentLib.evaluation.shifts import apply_shift, parse_shift
    from IMISSegmentLib.io.volume import Volume
    image, label = _synthetic_case(0)
    volume = Volume(image, SPACING_KJI, ORIGIN, DIRECTION)
    assert parse_shift(None) is None and parse_shift("none") is None
    for text, message in (("fov", "fov needs a number"), ("gamma:0", "between 0.2 and 5"), ("zoom:2", "unknown")):
        with pytest.raises(InputError, match=message):
            parse_shift(text)
    wide, wide_label = apply_shift(parse_shift("fov:1.5"), volume, label)
    assert wide.shape == (8, 60, 66) and wide.spacing == SPACING_KJI and wide.direction == DIRECTION
    assert (wide_label == 1).sum() == (label == 1).sum() and wide.array[0, 0, 0] == image.min()
    assert np.array_equal(wide.array[:, 10:50, 11:55], image)   # the scan sits in the middle, unchanged
    def centre_lps(vol, lab):   # the ball's centre in space: masks written on a shifted grid land where it is
        from IMISSegmentLib.io.volume import ijk_to_lps
        k, j, i = np.argwhere(lab == 1).mean(0)
        return (ijk_to_lps(vol) @ [i, j, k, 1.0])[:3]
    assert np.allclose(centre_lps(wide, wide_label), centre_lps(volume, label))
    narrow, narrow_label = apply_shift(parse_shift("fov:0.5"), volume, label)
    from IMISSegmentLib.io.volume import ijk_to_lps
    assert np.allclose(ijk_to_lps(narrow) @ [0, 0, 2, 1.0], ijk_to_lps(volume) @ [11, 10, 2, 1.0])   # window's corner
    assert np.array_equal(narrow.array, image[:, 10:30, 11:33]) and np.array_equal(narrow_label, label[:, 10:30, 11:33])
    coarse, coarse_label = apply_shift(parse_shift("resolution:2"), volume, label)
    assert coarse.shape == (8, 20, 22) and coarse.spacing == (2.5, 1.5, 1.5)
    area = lambda lab, vol: (lab == 1).sum() * vol.spacing[1] * vol.spacing[2]   # noqa: E731
    assert abs(area(coarse_label, coarse) - area(label, volume)) < 0.15 * area(label, volume)
    from IMISSegmentLib.normalize import apply_window, intensity_window
    for array, kind in ((image.astype(np.float32) + 1200.0, "percentile"), (image, "ct")):   # MR-like; HU CT
        shown = Volume(array, SPACING_KJI, ORIGIN, DIRECTION)
        bright, _ = apply_shift(parse_shift("gamma:0.5"), shown, label)
        window = intensity_window(array)
        assert window[2] == kind
        # the volume keeps its units (HU CT stays CT), and a session's window of it is the window's w ** 0.5
        assert intensity_window(bright.array)[2] == window[2]
        assert np.allclose(apply_window(bright.array, window), apply_window(array, window) ** 0.5, atol=1e-5)
        order = np.argsort(array, axis=None)   # monotone: the contrast changes, the order of intensities does not
        assert np.all(np.diff(bright.array.ravel()[order]) >= -1e-3)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("problem", ["missing folder", "empty folder", "unknown method", "shard 3/2", "shard 0/2",
                                     "shard text", "clicks 0", "rounds 0", "unknown protocol", "unknown prompt",
                                     "tolerance nan", "tolerance inf", "tolerance -1", "clicks 2.5", "out a file",
                                     "unknown view", "view twice", "unknown shift", "shift out of range"])
def test_bad_evaluate_input_is_one_line_and_writes_nothing(case_root, tmp_path, capsys, problem):
    (tmp_path / "empty").mkdir()
    data, extra, needle = str(case_root), [], None
    if problem == "missing folder":
        data, needle = str(tmp_path / "nowhere"), str(tmp_path / "nowhere")
    elif problem == "empty folder":
        data, needle = str(tmp_path / "empty"), "no labelled cases"
    elif problem == "unknown method":
        extra, needle = ["--methods", "growcut,magicwand"], "magicwand"
    elif problem.startswith("shard"):
        value = {"shard 3/2": "3/2", "shard 0/2": "0/2", "shard text": "half"}[problem]
        extra, needle = ["--shard", value], value
    elif problem == "clicks 0":
        extra, needle = ["--clicks", "0"], "--clicks"
    elif problem == "rounds 0":
        extra, needle = ["--rounds", "0"], "--rounds"
    elif problem == "view twice":
        extra, needle = ["--views", "axial,coronal,axial"], "views given twice"
    elif problem == "unknown shift":
        extra, needle = ["--shift", "tilt:2"], "unknown shift 'tilt:2'"
    elif problem == "shift out of range":
        extra, needle = ["--shift", "fov:9"], "fov must be between 0.25 and 4"
    elif problem == "unknown view":
        extra, needle = ["--views", "axial,oblique"], "oblique"
    elif problem == "unknown protocol":
        extra, needle = ["--protocol", "4d"], "4d"
    elif problem.startswith("tolerance") or problem == "clicks 2.5":
        option, value = problem.split()
        extra, needle = [f"--{option}", value], f"argument --{option}: expected a "
    elif problem == "out a file":
        (tmp_path / "out").write_text("not a folder")
        needle = "it is an existing file"
    else:
        extra, needle = ["--prompts", "scribble"], "scribble"
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", data, *extra, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("imis-segment: error:") and err.count("\n") == 1, err
    assert needle in err
    assert not out.exists() or out.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] + (["out"] if out.exists() else [])


def test_tolerance_zero_is_accepted_and_the_api_checks_its_numbers(tmp_path):
    """--tolerance 0 is valid (NSD counts only the surface voxels both surfaces share); evaluate() itself
    rejects what the CLI's parser rejects, before any case is read."""
    from IMISSegmentLib import InputError
    from IMISSegmentLib.cli import build_parser
    from IMISSegmentLib.evaluation.metrics import normalized_surface_dice
    from IMISSegmentLib.evaluation.runner import evaluate

    assert build_parser().parse_args(["evaluate", "d", "--tolerance", "0", "--out", "o"]).tolerance == 0.0
    for keyword in ({"tolerance_mm": float("nan")}, {"tolerance_mm": -1.0}, {"tolerance_mm": "2"},
                    {"clicks_2d": 0}, {"rounds_3d": 2.5}):
        with pytest.raises(InputError, match=next(iter(keyword))):
            evaluate(tmp_path / "absent", ["growcut"], tmp_path / "out", **keyword)
    assert not (tmp_path / "out").exists()
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    shifted = np.roll(square, 1, axis=0)
    assert normalized_surface_dice(square, shifted, (0.5, 0.5), 1e308) == 1.0   # a huge tolerance: no overflow
    assert 0.0 < normalized_surface_dice(square, shifted, (0.5, 0.5), 0.0) < 1.0


@pytest.mark.parametrize("problem", ["records not a list", "record without protocol", "step without dice",
                                     "out a file"])
def test_merge_of_a_malformed_results_file_is_one_line(tmp_path, capsys, problem):
    steps = [{"step": 0, "dice": 0.5, "nsd": 0.5, "seconds": 1.0}]
    record = {"case": "c", "structure": "s", "label": 1, "method": "m", "prompt": "box", "protocol": "2d",
              "final_dice": 0.5, "final_nsd": 0.5, "dsc_auc": None, "nsd_auc": None, "noc85": 20, "noc90": 20,
              "seconds_per_step": 1.0, "steps": steps}
    results = {"config": {"methods": ["m"]}, "cases": ["c"], "records": [record]}
    out, needle = tmp_path / "merged", "results.json is not a usable imis-segment evaluate results file: "
    if problem == "records not a list":
        results["records"], needle = 5, needle + "'records' must be a list"
    elif problem == "record without protocol":
        del record["protocol"]
        needle += "record 1 has no protocol"
    elif problem == "step without dice":
        del steps[0]["dice"]
        needle += "record 1 has a malformed steps"
    else:
        out, needle = tmp_path / "merged.txt", "it is an existing file"
        out.write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    code, _, err = run_cli(["-q", "merge", str(tmp_path / "run"), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("imis-segment: error:") and err.count("\n") == 1, err
    assert needle in err
    assert not out.exists() or out.read_text() == "keep"


def test_merge_of_a_hand_made_results_file_works(tmp_path, capsys):
    """The checks above do not reject a minimal well-formed file."""
    record = {"case": "c", "structure": "s", "label": 1, "method": "m", "prompt": "box", "protocol": "2d",
              "final_dice": 0.5, "final_nsd": 0.5, "dsc_auc": None, "nsd_auc": None, "noc85": 20, "noc90": 20,
              "seconds_per_step": 1.0, "steps": [{"step": 0, "dice": 0.5, "nsd": 0.5}]}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"records": [record]}))
    code, _, err = run_cli(["-q", "merge", str(tmp_path / "run"), "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "results.json").read_text())["summary"][0]["final_dice"] == 0.5


# ---------------------------------------------------------------- real data

def test_real_ct_with_a_box(tmp_path, capsys):
    out = tmp_path / "spleen"
    code, _, err = run_cli(["-q", "evaluate", str(EXAMPLE_CT), "--labels", "spleen", "--methods", "growcut",
                            "--protocol", "2d", "--prompts", "box", "--clicks", "3", "--out", str(out)], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    (record,) = results["records"]
    assert (record["case"], record["structure"], record["prompt"]) == ("ct_abdomen", "spleen", "box")
    assert len(record["steps"]) == 3
    assert record["final_dice"] > 0.5
    _check_masks_against_labels(out, results, {"ct_abdomen": EXAMPLE_CT / "label.nii.gz"})


def test_the_3d_summary_tells_the_drops_whose_clicked_slice_got_worse():
    """summarise / summary_markdown: 3D rows give the share of correction steps that dropped with the clicked
    slice worse, in brackets after the drop share; 2D rows (no such count) give the drop share alone."""
    from IMISSegmentLib.evaluation.report import summarise, summary_markdown

    def record(protocol, drops, clicked=None, prompt="box"):
        steps = [{"step": i, "dice": 0.5, "nsd": 0.5, "seconds": 1.0} for i in range(6)]
        out = {"case": "c", "structure": "s", "label": 1, "method": "m", "prompt": prompt, "protocol": protocol,
               "final_dice": 0.5, "final_nsd": 0.5, "dsc_auc": None, "nsd_auc": None, "noc85": 20, "noc90": 20,
               "seconds_per_step": 1.0, "drops": drops, "corrections": 5, "steps": steps}
        if clicked is not None:
            out["drops_clicked_slice"] = clicked
        return out

    records = [record("3d", 2, 1), record("3d", 3, 0), record("2d", 1)]
    rows = {row["protocol"]: row for row in summarise(records)}
    assert rows["3d"]["drop_share"] == pytest.approx(0.5) and rows["3d"]["clicked_slice_drop_share"] == 0.1
    assert rows["2d"]["drop_share"] == pytest.approx(0.2) and rows["2d"]["clicked_slice_drop_share"] is None
    text = summary_markdown({"config": {}, "cases": ["c"], "records": records}, summarise(records))
    assert "| 50.0 % (10.0 %) |" in text and "| 20.0 % |" in text


# ---------------------------------------------------------------- partial and earlier runs in --out

def _tree(folder: Path) -> dict:
    """relative path -> bytes of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupting_factory(after: int):
    """An engine factory whose Grow from Seeds raises KeyboardInterrupt at its ``after``-th slice prediction."""
    from IMISSegmentLib.engines.growcut import GrowCutEngine

    def factory(name):
        engine = GrowCutEngine()
        predict, calls = engine.predict_slice, []

        def predict_slice(request):
            calls.append(1)
            if len(calls) >= after:
                raise KeyboardInterrupt
            return predict(request)
        engine.predict_slice = predict_slice
        return engine
    return factory


def test_an_interrupted_evaluate_leaves_the_earlier_run_as_it_was(case_root, tmp_path, capsys):
    """An interrupt half-way through a run into the --out of a finished run: the earlier run's files are all
    there, unchanged, and nothing of the interrupted one (no masks, no unfinished-run folder)."""
    from IMISSegmentLib.evaluation.runner import evaluate

    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "evaluate", str(case_root), *EVAL_ARGS, "--protocol", "2d", "--out", str(out)],
                           capsys)
    assert code == 0, err
    before = _tree(out)
    assert "results.json" in before and any(name.startswith("masks/") for name in before)
    with pytest.raises(KeyboardInterrupt):
        evaluate(case_root, ["growcut"], out, protocols=["2d", "3d"], clicks_2d=4, rounds_3d=2, progress=False,
                 engine_factory=_interrupting_factory(after=6))
    assert _tree(out) == before
    # into a new folder: the folder holds nothing afterwards
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        evaluate(case_root, ["growcut"], fresh, protocols=["2d"], clicks_2d=4, progress=False,
                 engine_factory=_interrupting_factory(after=6))
    assert not fresh.exists() or list(fresh.iterdir()) == []


def test_a_rerun_replaces_the_earlier_runs_outputs_and_says_so(case_root, tmp_path, capsys):
    """A later run into the same --out (another protocol, then --no-masks) keeps none of the earlier run's masks
    beside its results, and says that it replaced them."""
    out = tmp_path / "out"
    base = ["evaluate", str(case_root), *EVAL_ARGS, "--prompts", "box", "--out", str(out)]
    code, _, err = run_cli(["-q", *base, "--protocol", "2d,3d"], capsys)
    assert code == 0, err
    assert {p.name.rsplit("-", 1)[-1] for p in (out / "masks").glob("*/*")} == {"2d", "3d"}
    code, _, err = run_cli([*base, "--protocol", "2d"], capsys)
    assert code == 0, err
    assert f"note: replaced the outputs of an earlier run in {out}" in err
    results = json.loads((out / "results.json").read_text())
    written = {p.relative_to(out).as_posix() for p in (out / "masks").rglob("*.nii.gz")}
    assert written == {r["mask_file"] for r in results["records"]}            # only this run's masks
    assert {p.name.rsplit("-", 1)[-1] for p in (out / "masks").glob("*/*")} == {"2d"}
    code, _, err = run_cli(["-q", *base, "--protocol", "2d", "--no-masks"], capsys)
    assert code == 0, err
    assert not (out / "masks").exists()
    assert sorted(p.name for p in out.iterdir()) == ["dice_vs_clicks.png", "per_structure.csv", "results.json",
                                                     "steps.csv", "summary.md"]


def test_a_killed_run_is_marked_unfinished_and_the_next_run_removes_it(case_root, tmp_path, capsys):
    """A run killed half-way (SIGKILL: no clean-up) leaves only OUT/unfinished-run, with UNFINISHED.txt saying
    its files are partial, and no results.json or masks/ that look like a finished run; the next run into the
    same --out removes it, saying so."""
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from IMISSegmentLib.engines.growcut import GrowCutEngine\n"
        "from IMISSegmentLib.evaluation.runner import evaluate\n"
        "engine, calls = GrowCutEngine(), []\n"
        "predict = engine.predict_slice\n"
        "def killing(request):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 12:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return predict(request)\n"
        "engine.predict_slice = killing\n"
        "evaluate(sys.argv[1], ['growcut'], sys.argv[2], protocols=['2d'], clicks_2d=4, progress=False,\n"
        "         engine_factory=lambda name: engine)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(case_root), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -9, done.stderr
    assert [p.name for p in out.iterdir()] == ["unfinished-run"]
    marker = (out / "unfinished-run" / "UNFINISHED.txt").read_text()
    assert "partial outputs of a run that has not finished" in marker and "process: " in marker
    assert list((out / "unfinished-run" / "masks").rglob("*.nii.gz"))           # what it had written so far
    code, _, err = run_cli(["evaluate", str(case_root), *EVAL_ARGS, "--protocol", "2d", "--out", str(out)], capsys)
    assert code == 0, err
    assert f"note: removing {out / 'unfinished-run'}: the partial outputs of an earlier run that did not finish" in err
    assert not (out / "unfinished-run").exists() and (out / "results.json").is_file()


def test_a_run_still_writing_into_the_folder_is_not_disturbed(case_root, tmp_path, capsys):
    """An unfinished-run folder whose process is still alive on this host is another run at work: refused, one
    line, exit 2, its folder untouched."""
    import os
    import socket

    out = tmp_path / "out"
    staging = out / "unfinished-run"
    staging.mkdir(parents=True)
    (staging / "UNFINISHED.txt").write_text(f"command: x\nhost: {socket.gethostname()}\nprocess: {os.getppid()}\n")
    code, _, err = run_cli(["-q", "evaluate", str(case_root), *EVAL_ARGS, "--protocol", "2d", "--out", str(out)],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and f"process {os.getppid()}" in err and "another run" in err
    assert [p.name for p in out.iterdir()] == ["unfinished-run"]
    assert [p.name for p in staging.iterdir()] == ["UNFINISHED.txt"]


def test_a_2d_run_merges_with_a_3d_run_of_other_rounds(case_root, tmp_path, capsys):
    """The rounds of the 3D protocol do not concern a run that has only 2D results (and the clicks of the 2D
    protocol not a 3D-only run): such runs merge, the merged settings are those of the runs that used them; the
    same protocol with other settings is still refused."""
    runs = {}
    for name, extra in (("2d", ["--protocol", "2d", "--clicks", "3"]), ("3d", ["--protocol", "3d", "--rounds", "2"]),
                        ("3d-more", ["--protocol", "3d", "--rounds", "3"])):
        runs[name] = tmp_path / name
        code, _, err = run_cli(["-q", "evaluate", str(case_root), "--methods", "growcut", "--prompts", "box",
                                "--no-masks", *extra, "--out", str(runs[name])], capsys)
        assert code == 0, err
    code, _, err = run_cli(["-q", "merge", str(runs["2d"]), str(runs["3d"]), "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "results.json").read_text())["config"]
    assert (config["clicks_2d"], config["rounds_3d"], config["protocols"]) == (3, 2, ["2d", "3d"])
    code, _, err = run_cli(["-q", "merge", str(runs["3d"]), str(runs["3d-more"]), "--out", str(tmp_path / "x")],
                           capsys)
    assert code == 2 and "rounds_3d 2 vs 3" in err and not (tmp_path / "x").exists()

