"""training/data/prepare_data.py: the rib-piece cases are the chest case's rib components, alternating by size."""
import json

import numpy as np

from IMISSegmentLib.evaluation.datasets import discover_cases
from IMISSegmentLib.io import read_image, write_label
from IMISSegmentLib.io.readers import read_label
from IMISSegmentLib.io.volume import Volume
from training.data.prepare_data import RIB_MIN_VOXELS, export_rib_pieces


def _chest_case(folder):
    """A small chest-like case: label 1 (ribs) in four separate pieces of 200, 150, 100 and 20 voxels, and a
    label 2 that must not show up among the pieces; the pieces' masks, largest first."""
    labels = np.zeros((12, 40, 40), np.uint8)
    pieces = [np.zeros(labels.shape, bool) for _ in range(4)]
    pieces[0][0:8, 2:7, 2:7] = True          # 200 voxels
    pieces[1][0:6, 2:7, 20:25] = True        # 150
    pieces[2][0:4, 30:35, 2:7] = True        # 100
    pieces[3][10:12, 30:32, 30:35] = True    # 20: below RIB_MIN_VOXELS
    for piece in pieces:
        labels[piece] = 1
    labels[0:4, 15:20, 12:17] = 2            # another structure
    volume = Volume(np.random.default_rng(0).normal(0, 100, labels.shape).astype(np.int16), (5.0, 2.0, 2.0))
    folder.mkdir()
    write_label(folder / "image.nii.gz", volume.array, volume)
    write_label(folder / "label.nii.gz", labels, volume)
    (folder / "labels.json").write_text(json.dumps({"labels": {"1": "ribs", "2": "vertebrae"}}))
    return pieces


def test_rib_pieces_alternate_between_a_training_and_a_validation_case(tmp_path):
    assert 20 < RIB_MIN_VOXELS <= 100
    pieces = _chest_case(tmp_path / "chest")
    train, val = export_rib_pieces(tmp_path / "chest", tmp_path / "ribs")
    assert (train.name, val.name) == ("ct_chest_ribs_train", "ct_chest_ribs_val")
    cases = {case.name: case for case in discover_cases(tmp_path / "ribs")}
    assert set(cases) == {"ct_chest_ribs_train", "ct_chest_ribs_val"}
    volume = read_image(train / "image.nii.gz")
    assert volume.spacing == (5.0, 2.0, 2.0)
    got_train = read_label(train / "label.nii.gz", volume)
    got_val = read_label(val / "label.nii.gz", volume)
    # training: the largest (1) and the third largest (2); validation: the second largest (1); the 20-voxel
    # piece and the other structure nowhere
    assert np.array_equal(got_train == 1, pieces[0]) and np.array_equal(got_train == 2, pieces[2])
    assert np.array_equal(got_val == 1, pieces[1])
    assert set(np.unique(got_train)) == {0, 1, 2} and set(np.unique(got_val)) == {0, 1}
    assert cases["ct_chest_ribs_val"].names == {1: "rib piece 1"}


def test_pack_data_round_trips_the_cases_and_refuses_bad_paths_with_one_line(tmp_path, capsys):
    from training.data.datasets import _read_cases
    from training.data.pack_data import main as pack
    (tmp_path / "data").mkdir()
    _chest_case(tmp_path / "data" / "chest")
    out = tmp_path / "packed.npz"
    assert pack([str(tmp_path / "data"), "--out", str(out)]) == 0
    ((case, array, spacing, label),) = list(_read_cases(out))
    original = read_image(tmp_path / "data" / "chest" / "image.nii.gz")
    assert case.name == "chest" and np.array_equal(array, original.array) and spacing == original.spacing
    assert case.names == {1: "ribs", 2: "vertebrae"} and label.max() == 2
    (tmp_path / "a_file").write_text("x")
    bad = {"missing root": ([str(tmp_path / "missing"), "--out", str(tmp_path / "p.npz")], "missing"),
           "out below a file": ([str(tmp_path / "data"), "--out", str(tmp_path / "a_file" / "p.npz")], "a_file")}
    for argv, message in bad.values():
        assert pack(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("training.data.pack_data: error:") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "p.npz").exists()


def test_prepare_data_says_in_one_line_when_its_folder_cannot_be_written(tmp_path, capsys):
    from training.data.prepare_data import main as prepare
    (tmp_path / "a_file").write_text("x")
    assert prepare(["--out", str(tmp_path / "a_file" / "data"), "--ribs-out", str(tmp_path / "ribs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("training.data.prepare_data: error: cannot write") and err.count("\n") == 1
    assert not (tmp_path / "ribs").exists()
