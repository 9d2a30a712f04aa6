"""Split files: which labelled cases are for training, which are held out for validation, which are reported.

A split file is JSON (``training/splits/validation.json`` is the project's, written by
``python -m training.data.splits --write``)::

    {"sets": {"ct_abdomen_btcv": {"validation": ["sabs_1", ...], "training": ["sabs_0", ...]}, ...},
     "case_folders": {"validation": [], "training": ["ct_lesion_a", ...], "reported": ["ct_abdomen_multiorgan"]},
     ...}                                   (other keys: how it was drawn; ignored here)

``sets`` names MSD / nnU-Net sets by folder name and their cases by case id (the label file's name without
``.nii.gz``; other keys than the roles, such as counts, are ignored); ``case_folders`` names case folders
(image + label + labels.json) by folder name. Each case has
one role: ``training``, ``validation`` or ``reported`` (a scan reported on its own, neither trained on nor
used to choose anything). In a set, ``PATIENTNNN_frameNN`` cases (ACDC) are one patient, which may not be in
two roles. Cases are matched by :attr:`.datasets.Case.key` (``SET/CASE`` or the case folder's name).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

ROLES = ("training", "validation", "reported")
HELD_OUT = ("validation", "reported")   # the roles no training run may read unless it asks for them
_FRAME = re.compile(r"(.+)_frame\d+")


def patient_of(case_id: str) -> str:
    """The patient a case id belongs to: ``patient001_frame01`` -> ``patient001`` (ACDC's frames of one
    patient); any other id is its own patient."""
    match = _FRAME.fullmatch(case_id)
    return match.group(1) if match else case_id


@dataclass
class Split:
    path: str
    roles: dict = field(default_factory=dict)   # case key (SET/CASE or case folder name) -> role

    def role(self, key: str):
        """``key``'s role, or None when the split does not name it."""
        return self.roles.get(key)

    def keys(self, *roles) -> list[str]:
        return sorted(k for k, r in self.roles.items() if r in roles)

    @staticmethod
    def group(key: str) -> str:
        """The set a key belongs to ("" for a case folder)."""
        return key.rsplit("/", 1)[0] if "/" in key else ""


def _ids(path, where: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() and "/" not in v for v in value):
        raise InputError(f"split {path}: {where} must be a list of case names (no '/'), got {value!r}"[:300])
    return value


def load_split(path) -> Split:
    """Read and check a split file; InputError (one line) when it is missing, not JSON, not shaped as above,
    or puts a case or a patient in two roles."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file {path} does not exist (the project's is training/splits/validation.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"split file {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sets", {}), dict) \
            or not isinstance(data.get("case_folders", {}), dict) or not (data.get("sets") or data.get("case_folders")):
        raise InputError(f"split file {path}: expected a JSON object with \"sets\" ({{set: {{role: [case, ...]}}}}) "
                         "and / or \"case_folders\" ({role: [folder, ...]})")
    split = Split(str(path))
    groups = [(name, f"sets.{name}", roles) for name, roles in data.get("sets", {}).items()]
    groups.append(("", "case_folders", data.get("case_folders", {})))
    for name, where, roles in groups:
        if not isinstance(roles, dict):
            raise InputError(f"split {path}: {where} must map roles ({', '.join(ROLES)}) to case lists")
        patients = {}
        for role, ids in roles.items():
            if role not in ROLES and isinstance(ids, list):
                raise InputError(f"split {path}: {where}: unknown role {role!r}; expected {', '.join(ROLES)}")
            if role not in ROLES:   # counts, notes
                continue
            for case_id in _ids(path, f"{where}.{role}", ids):
                key = f"{name}/{case_id}" if name else case_id
                if key in split.roles:
                    raise InputError(f"split {path}: {key} is both {split.roles[key]} and {role}")
                patient = patient_of(case_id) if name else case_id
                if patients.setdefault(patient, role) != role:
                    raise InputError(f"split {path}: patient {patient} of {where} is both {patients[patient]} "
                                     f"and {role} ({key})")
                split.roles[key] = role
    return split


def select_split(cases: list, split: Split, role: str = "validation", data_dir="the data folder") -> list:
    """Of ``cases`` (:func:`.datasets.discover_cases`), those the split gives ``role``. A set (or the case
    folders) that ``data_dir`` holds must hold all of the split's cases of that role (InputError naming the
    missing ones); a set it does not hold at all is left out (one set of the split can be run alone). InputError
    when nothing is left."""
    if role not in ROLES:
        raise InputError(f"unknown split role {role!r}; expected one of {', '.join(ROLES)}")
    wanted = split.keys(role)
    present = {case.key for case in cases}
    groups = {Split.group(key) for key in present}
    missing = [key for key in wanted if Split.group(key) in groups and key not in present]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise InputError(f"split {split.path}: {len(missing)} {role} case(s) not in {data_dir}: {shown} "
                         "(is it the folder the split was drawn from, or one of its sets, complete?)")
    chosen = [case for case in cases if split.role(case.key) == role]
    if not chosen:
        sets = sorted({Split.group(k) or "case folders" for k in wanted})
        raise InputError(f"split {split.path}: none of its {len(wanted)} {role} cases is in {data_dir} (the split "
                         f"names cases of {', '.join(sets) or 'nothing'}; the folder holds "
                         f"{', '.join(sorted(g or 'case folders' for g in groups))})")
    return chosen
