"""Finding labelled cases in a folder.

Layouts understood:
* case folders, each with ``image.*`` + ``label.*`` (+ ``labels.json``), as ../shared/data;
* a single such case folder;
* MSD / nnU-Net raw: ``imagesTr/`` + ``labelsTr/`` (+ ``dataset.json``); images named ``CASE.nii.gz``
  (MSD) or ``CASE_0000.nii.gz`` (nnU-Net, first channel used);
* a parent folder holding several of these side by side (../shared/data itself: case folders and nnU-Net sets):
  a set's cases are named ``SET/CASE`` there (``ct_abdomen_btcv/sabs_0``), so names stay unique.

Every case also knows its ``key``, the name a split file (:mod:`.splits`) uses: ``SET/CASE`` for a case of an
nnU-Net / MSD set (whether the set folder itself or its parent was given), the folder name for a case folder.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.readers import read_labelmap_names

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")


@dataclass
class Case:
    name: str
    image: Path
    label: Path
    names: dict = field(default_factory=dict)   # label value -> structure name
    dataset: str = ""   # the nnU-Net / MSD set (its folder name) the case belongs to; "" for a case folder

    @property
    def key(self) -> str:
        """``SET/CASE`` for a case of a set, the case folder's name otherwise: how split files name cases."""
        if not self.dataset or self.name.startswith(self.dataset + "/"):
            return self.name
        return f"{self.dataset}/{self.name}"


def _strip_suffix(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return ""


def _find(folder: Path, stem: str):
    for suffix in IMAGE_SUFFIXES:
        path = folder / (stem + suffix)
        if path.is_file():
            return path
    return None


def _names(path: Path) -> dict:
    return read_labelmap_names(path) if path.is_file() else {}


def _case_folder(folder: Path):
    image, label = _find(folder, "image"), _find(folder, "label")
    if image and label:
        return Case(folder.name, image, label, _names(folder / "labels.json"))
    return None


def _msd_cases(root: Path, prefix: str = "") -> list[Case]:
    names = _names(root / "dataset.json")
    cases = []
    for label in sorted((root / "labelsTr").iterdir()):
        stem = _strip_suffix(label.name)
        if not stem or stem.startswith("."):
            continue
        image = _find(root / "imagesTr", stem) or _find(root / "imagesTr", stem + "_0000")
        if image is None:
            raise InputError(f"{label}: no image for case '{stem}' in {root / 'imagesTr'} "
                             f"(expected {stem}.nii.gz or {stem}_0000.nii.gz)")
        cases.append(Case(prefix + stem, image, label, names, dataset=Path(os.path.abspath(root)).name))
    return cases


def discover_cases(data_dir) -> list[Case]:
    """All labelled cases under ``data_dir``, sorted by name; InputError if there are none.

    ``data_dir`` is a case folder, an MSD / nnU-Net set, or a folder of these (case folders by their folder
    name, a set's cases as ``SET/CASE``)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist or is not a folder")
    if (root / "labelsTr").is_dir():
        cases = _msd_cases(root)
    else:
        single = _case_folder(root)
        cases = [single] if single else []
        for folder in ([] if single else sorted(d for d in root.iterdir() if d.is_dir())):
            if (folder / "labelsTr").is_dir():
                cases += _msd_cases(folder, prefix=folder.name + "/")
            else:
                case = _case_folder(folder)
                cases += [case] if case else []
    if not cases:
        raise InputError(f"no labelled cases in {root}: expected case folders with image.nii.gz + label.nii.gz, "
                         "an MSD / nnU-Net folder with imagesTr/ and labelsTr/, or a folder holding these")
    return sorted(cases, key=lambda c: c.name)


def select_shard(cases: list, shard: str) -> list:
    """Cases of shard ``"i/n"`` (1-based): every n-th case starting at the i-th."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InputError(f"--shard must be i/n with 1 <= i <= n (e.g. 1/4), got {shard!r}")
    i, n = int(match.group(1)), int(match.group(2))
    return cases[i - 1::n]


class LabelFilter:
    """``--labels``: the structures of each case to evaluate (by label value or name; None: all), and, once every
    case was seen, the labels asked for that no case had."""

    def __init__(self, labels=None) -> None:
        self.labels = labels
        self._matched: set = set()

    def select(self, case: Case, values) -> list:
        """Of a case's label ``values``, those asked for."""
        chosen = [v for v in values if self.labels is None or v in self.labels or case.names.get(v) in self.labels]
        self._matched.update(chosen)
        self._matched.update(case.names.get(v) for v in chosen)
        return chosen

    def unmatched(self, where: str = "") -> str | None:
        """The message for the labels asked for that no case (``where``: "of this shard ", ...) had, or None."""
        missing = sorted(str(label) for label in (self.labels or ()) if label not in self._matched)
        if not missing:
            return None
        return f"labels {', '.join(missing)}: no case {where}has a structure with that value or name"
