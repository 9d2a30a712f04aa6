"""Carry stages of one bundle into another: keep the propagation, fusion and correction stages (and the answer
check settings) of an earlier bundle when only the 2D network is retrained.

    python -m training.export.carry --from Resources/models/default --to runs/bundle_new \\
        --parts propagation,fusion,propagated_correction,growth_check

Each part is the bundle info's entry of that name, its stage files (with their torch weights), the capability
it gives and the run records it names (``training/<run>/``: ``run_name``, ``run`` of a settings entry, and the runs
it started from through ``init_from`` whose records the source holds), copied as they are: the checksums stay
those the source bundle recorded. ``--records`` names further run records to keep (a settings run that no entry
names, e.g. ``fusion_direction``). The target is rebuilt in a staging folder and swapped in (training/export/bundle.py),
so a failure leaves it untouched; a part the source has not is an error naming it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from IMISSegmentLib.models import read_bundle_info

from training.export.bundle import rebuild_bundle, recorded_parent, run_command, runs_named

#: part (an entry of inference_info.json) -> (the stages it owns, the capability it gives)
PARTS = {
    "propagation": (("prop_key", "prop_value", "prop_decoder"), "propagate"),
    "fusion": (("mrf_quality",), "fuse"),
    "propagated_correction": (("slice_propagated",), None),
    "growth_check": ((), None),
    "shrink_check": ((), None),
    "box_fill": ((), None),
    "zoom": ((), None),
    "prompted_parts": ((), None),
    # the record of the run that chose the 2D inference settings (training/analysis/tune_inference.py)
    "inference_tuning": ((), None),
    "input_gamma": ((), None),
    "input_gamma_tuning": ((), None),   # the run that chose it (tune_inference.py --input-gammas)
    # the text localiser (a network of its own): its stage and the localiser keys of the ``text`` entry; the target
    # must already have its text stage (training.export.text), whose vocabulary must send names to every map
    "text_localiser": (("text_localiser",), None),
}
LOCALISER_KEYS = ("localiser", "localised")   # the ``text`` entry's keys that belong to the localiser


def _entry(info: dict, part: str):
    """The bundle info's entry of ``part`` (the localiser's keys of the ``text`` entry for text_localiser)."""
    if part == "text_localiser":
        text = info.get("text") or {}
        return {k: v for k, v in text.items() if k.startswith(LOCALISER_KEYS)} if text.get("localiser") else None
    return info.get(part)


def _runs_of(source: Path, entry) -> set:
    """The run records (folder names under ``source/training``) behind a bundle info entry: the runs it names
    (:func:`runs_named`) and, through each run's ``init_from``, the runs those started from."""
    todo, found = sorted(runs_named(entry)), set()
    while todo:
        run = todo.pop()
        if run in found or not (source / "training" / run).is_dir():
            continue
        found.add(run)
        config = source / "training" / run / "config.json"
        try:
            init_from = json.loads(config.read_text(encoding="utf-8")).get("init_from") if config.is_file() else None
        except ValueError:
            init_from = None
        parent = recorded_parent(source, init_from)
        if parent:
            todo.append(parent)
    return found


def carry(source, target, parts, records=()) -> dict:
    source, target = Path(source), Path(target)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {', '.join(unknown)}; known: {', '.join(PARTS)}")
    old = read_bundle_info(source)
    missing = [p for p in parts if _entry(old, p) is None]
    if missing:
        raise ValueError(f"{source} has no {', '.join(missing)} to carry")
    absent = [r for r in records if not (source / "training" / r).is_dir()]
    if absent:
        raise ValueError(f"{source} holds no run records {', '.join(absent)} (training/<run>/) to carry")
    new = read_bundle_info(target)
    if "text_localiser" in parts:
        if not new.get("text"):
            raise ValueError(f"{target} has no text stage: export it (training.export.text) before carrying the text "
                             "localiser")
        from IMISSegmentLib.text.vocabulary import load_bundle_vocabulary
        from training.export.text_localiser import unmapped_codes
        vocabulary = load_bundle_vocabulary(target, new)
        bad = unmapped_codes(old["text"]["localiser"].get("codes") or [], vocabulary)
        if bad:
            raise ValueError(f"{source}'s text localiser maps {', '.join(bad)}, which {target}'s text stage was not "
                             "trained on")
    # the carried networks read intensities as the target's does; a carried 2D network, slices of its size too
    keys = ("normalization",) + (("input_size", "slice_aspect")
                                 if {"propagated_correction", "text_localiser"} & set(parts) else ())
    for key in keys:
        if old.get(key) != new.get(key):
            raise ValueError(f"{source} and {target} differ in {key} ({old.get(key)!r} vs {new.get(key)!r}): "
                             "their stages cannot be combined")

    def edit(staging: Path, info: dict) -> None:
        for part in parts:
            stages, capability = PARTS[part]
            if part == "text_localiser":
                info["text"] = {**{k: v for k, v in info["text"].items() if not k.startswith(LOCALISER_KEYS)},
                                **_entry(old, part)}
            else:
                info[part] = old[part]
            for stage in (s for s in stages if s in old["stages"]):   # a settings-only entry has no stage
                entry = old["stages"][stage]
                files = [entry["file"]] + ([entry["state_dict"]["file"]] if isinstance(entry.get("state_dict"), dict)
                                           and (source / entry["state_dict"]["file"]).is_file() else [])
                for name in files:
                    shutil.copyfile(source / name, staging / name)
                info["stages"][stage] = entry
            if capability in old.get("capabilities", []) and capability not in info.get("capabilities", []):
                info["capabilities"] = sorted(info.get("capabilities", []) + [capability])
        for run in sorted(set().union(*(_runs_of(source, _entry(old, part)) for part in parts), records)):
            shutil.copytree(source / "training" / run, staging / "training" / run, dirs_exist_ok=True)
            copied = [f"training/{run}/{p.name}" for p in sorted((source / "training" / run).iterdir())]
            info["training_records"] = sorted(set(info.get("training_records", [])) | set(copied))
    return rebuild_bundle(target, edit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.carry",
                                     description="copy stages and settings of one bundle into another")
    parser.add_argument("--from", dest="source", required=True, help="bundle to copy the parts from")
    parser.add_argument("--to", dest="target", required=True, help="bundle to copy them into (rebuilt, then swapped in)")
    parser.add_argument("--parts", required=True, help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--records", default="", help="comma-separated run records (training/<run>/) of the source "
                        "to keep too, beyond those the parts name")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    records = [r.strip() for r in args.records.split(",") if r.strip()]

    def action() -> str:
        info = carry(args.source, args.target, parts, records)
        return (f"{args.target}: carried {', '.join(parts)} from {args.source}; capabilities "
                f"{', '.join(info.get('capabilities', []))}")
    return run_command("training.export.carry", action)


if __name__ == "__main__":
    sys.exit(main())
