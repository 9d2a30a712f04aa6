"""The fixed validation split of ../shared/data: drawn once, by patient, with a fixed seed; no training run uses it.

    python -m training.data.splits            # print what the generator draws (counts per set)
    python -m training.data.splits --write    # (re)write training/splits/validation.json
    python -m training.data.splits --check    # exit 1 unless the committed file is what the generator draws

For each MSD / nnU-Net set under the data folder, about ``FRACTION`` of its patients (at least ``MIN_PER_SET``)
go to validation, drawn with ``random.Random(f"{SEED}/{set name}")`` from the sorted patient list: the draw of a
set depends on nothing but its own patients, so adding a set does not move another set's cases. ACDC's
``patientNNN_frame01`` / ``_frame02`` are one patient (:func:`IMISSegmentLib.evaluation.splits.patient_of`): both
frames go to the same side. The case folders get fixed roles (``CASE_FOLDER_ROLES``): ``ct_abdomen_multiorgan`` is
reported on its own (neither trained on nor used to choose anything), the small ones are training data.

The file format and its reader are in :mod:`IMISSegmentLib.evaluation.splits` (``imis-segment evaluate --split``
reads it; :class:`training.data.datasets.VolumeSliceDataset` leaves its held-out cases out).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from IMISSegmentLib.evaluation.datasets import discover_cases
from IMISSegmentLib.evaluation.splits import patient_of

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path(os.environ.get("IMIS_SHARED_DATA", REPO.parent / "shared" / "data"))   # as Testing/helpers.py
SPLIT_FILE = REPO / "training" / "splits" / "validation.json"
SEED = 26
FRACTION = 0.2
MIN_PER_SET = 2
#: the case folders (image + label + labels.json) and their roles; a case folder not named here is an error
CASE_FOLDER_ROLES = {
    "ct_abdomen_multiorgan": "reported",
    "ct_lesion_a": "training", "ct_lesion_b": "training", "ct_lesion_c": "training",
    "mr_brain_tumor": "training",
    "phantom_prostate": "training",
}
#: case folders elsewhere that hold the same patient as a case of the split, and take its role: the example CT that
#: ships in Resources/Data is ct_abdomen_multiorgan (a root that includes Resources/Data must not train on it)
SAME_PATIENT = {"ct_abdomen": "ct_abdomen_multiorgan"}
DECISIONS = {
    "ct_abdomen_multiorgan": "reported on its own: neither trained on nor used to choose runs or settings (it was "
                             "both the tuning and the reported scan before; its labels are model output)",
    "ct_lesion_a, ct_lesion_b, ct_lesion_c, mr_brain_tumor, phantom_prostate":
        "training: one structure each (three lesions, one tumour, a phantom), too few to validate a set on; "
        "they add lesion, brain MR and phantom contrast that no nnU-Net set has, so the training keeps them",
    "ACDC": "patientNNN_frame01 and _frame02 are one patient: drawn together, both frames on the same side",
}


def draw_split(data_dir=DEFAULT_DATA, seed: int = SEED, fraction: float = FRACTION,
               min_per_set: int = MIN_PER_SET) -> dict:
    """The split of ``data_dir`` (a folder of nnU-Net sets and case folders) as the JSON-ready dict the split
    file holds. Deterministic: the same folder listing gives the same dict."""
    cases = discover_cases(data_dir)
    sets: dict[str, list[str]] = {}
    folders = []
    for case in cases:
        if case.dataset:
            sets.setdefault(case.dataset, []).append(case.key.split("/", 1)[1])
        else:
            folders.append(case.name)
    unknown = sorted(set(folders) - set(CASE_FOLDER_ROLES))
    if unknown:
        raise ValueError(f"case folders without a role in training/data/splits.py CASE_FOLDER_ROLES: "
                         f"{', '.join(unknown)}; decide one (training, validation or reported) and write it there")
    split = {
        "description": "Fixed validation split of ../shared/data, by patient. No training run may read the "
                       "'validation' or 'reported' cases; choose runs and settings on 'validation' only.",
        "command": "python -m training.data.splits --write",
        "seed": seed, "fraction": fraction, "min_per_set": min_per_set,
        "sets": {}, "case_folders": {}, "decisions": DECISIONS,
    }
    for name, ids in sorted(sets.items()):
        patients = sorted({patient_of(i) for i in ids})
        count = min(len(patients) - 1, max(min_per_set, round(fraction * len(patients))))
        chosen = set(random.Random(f"{seed}/{name}").sample(patients, count))
        validation = sorted(i for i in ids if patient_of(i) in chosen)
        split["sets"][name] = {
            "patients": len(patients), "validation_patients": len(chosen),
            "validation": validation, "training": sorted(i for i in ids if patient_of(i) not in chosen)}
    for role in ("validation", "training", "reported"):
        split["case_folders"][role] = sorted(f for f in folders if CASE_FOLDER_ROLES[f] == role)
    return split


def split_text(split: dict) -> str:
    return json.dumps(split, indent=1) + "\n"


def counts(split: dict) -> str:
    lines = [f"{'set':24s} patients  validation (patients / cases)  training cases"]
    for name, entry in split["sets"].items():
        lines.append(f"{name:24s} {entry['patients']:8d}  {entry['validation_patients']:10d} / "
                     f"{len(entry['validation']):<5d}             {len(entry['training'])}")
    for role, names in split["case_folders"].items():
        lines.append(f"case folders, {role}: {', '.join(names) or '-'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.splits", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=f"the data folder (default {DEFAULT_DATA})")
    parser.add_argument("--out", default=str(SPLIT_FILE),
                        help="the split file (default training/splits/validation.json)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="write the split file")
    action.add_argument("--check", action="store_true", help="exit 1 unless the split file is what is drawn now")
    args = parser.parse_args(argv)
    try:
        split = draw_split(args.data)
    except ValueError as error:   # InputError is a ValueError
        print(f"training.data.splits: error: {error}", file=sys.stderr)
        return 2
    text = split_text(split)
    print(counts(split))
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'matches the generator' if same else 'DIFFERS from what the generator draws'}")
        return 0 if same else 1
    if args.write:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
