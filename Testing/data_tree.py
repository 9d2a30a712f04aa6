"""A small generated stand-in for ../shared/data: nnU-Net raw sets (``imagesTr/CASE_0000.nii.gz``,
``labelsTr/CASE.nii.gz``, ``dataset.json`` with nnU-Net v2 ``{"name": value}`` labels) and case folders side by
side, for the tests of split files, ``evaluate --split`` and the training readers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (4, 20, 24)
SPACING_XYZ = (1.5, 1.5, 4.0)
SET_LABELS = {"background": 0, "liver": 1, "spleen": 2}
#: set -> case ids; the ACDC-like set has two frames per patient
SETS = {
    "set_ct": [f"ct_{n}" for n in range(1, 11)],
    "set_cine": [f"patient{n:03d}_frame{f:02d}" for n in range(1, 7) for f in (1, 2)],
}
CASE_FOLDERS = ("ct_abdomen_multiorgan", "ct_lesion_a")


def _volume(seed: int):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, SHAPE).astype(np.uint8)
    label = np.zeros(SHAPE, np.uint8)
    j0, i0 = 3 + seed % 5, 3 + seed % 7
    label[:, j0:j0 + 8, i0:i0 + 7] = 1
    label[1:3, 14:18, 15:21] = 2
    image[label == 1] += 120
    image[label == 2] += 70
    return image, label


def _write(array, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def write_set(root: Path, ids, seed: int = 0) -> Path:
    for number, case_id in enumerate(ids):
        image, label = _volume(seed + number)
        _write(image, root / "imagesTr" / f"{case_id}_0000.nii.gz")
        _write(label, root / "labelsTr" / f"{case_id}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "labels": SET_LABELS,
                                                   "file_ending": ".nii.gz"}))
    return root


def write_case_folder(folder: Path, seed: int = 0) -> Path:
    image, label = _volume(seed)
    _write(image, folder / "image.nii.gz")
    _write(label, folder / "label.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"labels": {"1": "liver", "2": "spleen"}}))
    return folder


def write_data_tree(root: Path, sets=None, case_folders=CASE_FOLDERS) -> Path:
    """``root`` laid out as ../shared/data: the nnU-Net ``sets`` ({name: ids}, default SETS) and the case folders."""
    for number, (name, ids) in enumerate((SETS if sets is None else sets).items()):
        write_set(root / name, ids, seed=10 * number)
    for number, name in enumerate(case_folders):
        write_case_folder(root / name, seed=100 + number)
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)   # as ../shared/data: a folder that is no case
    return root


def write_split(path: Path, validation: dict, training: dict = None, case_folders: dict = None) -> Path:
    """A split file: {set: [ids]} per role, and the case folders' roles."""
    sets = {}
    for name in set(validation) | set(training or {}):
        sets[name] = {"validation": validation.get(name, []), "training": (training or {}).get(name, [])}
    path.write_text(json.dumps({"sets": sets, "case_folders": case_folders or {}}))
    return path
