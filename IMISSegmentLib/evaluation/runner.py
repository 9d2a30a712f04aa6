"""``evaluate``: run the protocols for several methods over a folder of labelled cases and write the report."""
from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import check_output_path
from ..models import sha256_of
from ..io.readers import read_image, read_label
from ..io.writers import write_label
from ..session import InteractiveSession
from .datasets import LabelFilter, discover_cases, select_shard
from .shifts import apply_shift, parse_shift
from .metrics import NOC_CAP, area_under_curve, clicks_to_reach
from .protocol import (DROP, PROMPT_KINDS, clicked_slice_drops, round_record, run_2d, run_3d, supported,
                       text_unsupported)
from .report import DEFAULT_VIEW, view_label, write_report
from .rundir import staged_run
from .splits import load_split, select_split

PROTOCOLS = ("2d", "3d")
#: the views the prompts and correction clicks can be given in: the axis normal to the slice
#: (array order k, j, i of the volume as read; for a volume in the usual orientation: axial, coronal, sagittal)
VIEWS = {"axial": 0, "coronal": 1, "sagittal": 2}
FUSION_MODES = ("default", "on", "off", "both")
NO_FUSION_SUFFIX = "-nomrf"


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def fusion_variants(engines: dict, fusion: str):
    """(method label, engine, fusion: True / False / None for the model's default) for each run: with "both",
    engines that can fuse run twice."""
    for name, engine in engines.items():
        can_fuse = "fuse" in engine.capabilities
        if fusion == "default" or not can_fuse:
            yield name, engine, None
            continue
        if fusion != "off":
            yield name, engine, True
        if fusion in ("off", "both"):
            yield name + NO_FUSION_SUFFIX if fusion == "both" else name, engine, False


def safe_filename(name: str) -> str:
    """``name`` with anything but letters, digits, ``_.-`` replaced, for file and folder names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "structure"


def _nan_to_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarise_steps(steps) -> dict:
    """Per-structure figures from the step list: final Dice/NSD, AUCs over 5 corrections, NoC, s/step, and
    the correction steps whose Dice fell by more than ``DROP``."""
    dices = [s.dice for s in steps]
    corrections = steps[1:6]
    timed = [s.seconds for s in steps if s.action != "none"]
    return {
        "final_dice": dices[-1], "final_nsd": steps[-1].nsd,
        "dsc_auc": _nan_to_none(area_under_curve([s.dice for s in corrections])) if len(corrections) == 5 else None,
        "nsd_auc": _nan_to_none(area_under_curve([s.nsd for s in corrections])) if len(corrections) == 5 else None,
        "noc85": clicks_to_reach(dices, 0.85, NOC_CAP), "noc90": clicks_to_reach(dices, 0.90, NOC_CAP),
        "seconds_per_step": float(np.mean(timed)) if timed else None,
        "drops": int(sum(1 for a, b in zip(dices, dices[1:]) if b < a - DROP)),
        "corrections": max(0, len(dices) - 1),
    }


def evaluate(data_dir, methods, out_dir, protocols=PROTOCOLS, prompts=PROMPT_KINDS, shard=None,
             clicks_2d: int = 20, rounds_3d: int = 5, tolerance_mm: float = 2.0, labels=None,
             save_masks: bool = True, progress: bool = True, engine_factory=None, fusion: str = "default",
             split=None, views=("axial",), shift=None) -> dict:
    """Run every (method, protocol, first prompt) on every structure of every case; write the report.

    ``fusion``: "default" (each model's own default), "on" (multi-round fusion where the engine has it), "off",
    or "both": engines that can fuse run with it, then without it, reported as method ``<name>-nomrf`` (the
    ablation).

    ``views``: the views the prompts are given in (:data:`VIEWS`); a record's ``view`` says which, and the report
    shows each view other than axial as a protocol of its own ("2d coronal").

    ``split``: a split file (:mod:`.splits`, e.g. training/splits/validation.json): only its validation cases of
    ``data_dir`` run (before ``shard`` picks its share of them).

    ``shift``: "fov:F", "resolution:R" or "gamma:G" (:mod:`.shifts`): every case is shown as another scanner
    would show it, for every method alike (None: as it is).

    ``engine_factory(name)`` builds engines (default: the registry); all are built before any case runs,
    so a missing optional dependency fails at once. Unreadable cases are recorded as errors and skipped.

    Everything is written into ``out_dir/unfinished-run`` and moved into ``out_dir`` once the run has finished,
    replacing an earlier run's outputs there (:mod:`.rundir`): a run that fails or is interrupted leaves
    ``out_dir`` as it was.
    """
    from ..engines.registry import create_engine
    from tqdm import tqdm

    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")
    for prompt in prompts:
        if prompt not in PROMPT_KINDS:
            raise InputError(f"unknown first prompt '{prompt}'; expected one of {', '.join(PROMPT_KINDS)}")
    views = list(views)
    if not views:
        raise InputError("no views given; e.g. --views axial,coronal")
    for view in views:
        if view not in VIEWS:
            raise InputError(f"unknown view '{view}'; expected one of {', '.join(VIEWS)}")
    if len(set(views)) < len(views):
        raise InputError(f"views given twice: {', '.join(views)}")
    if not methods:
        raise InputError("no methods given; e.g. --methods growcut,litemedsam")
    if fusion not in FUSION_MODES:
        raise InputError(f"fusion must be one of {', '.join(FUSION_MODES)}, got {fusion!r}")
    for name, value in (("clicks_2d", clicks_2d), ("rounds_3d", rounds_3d)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    if not isinstance(tolerance_mm, (int, float, np.number)) or not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise InputError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}")
    shift = parse_shift(shift)
    check_output_path(out_dir, folder=True)
    held = load_split(split) if split else None
    cases = discover_cases(data_dir)
    if held:
        cases = select_split(cases, held, "validation", data_dir)
    if shard:
        cases = select_shard(cases, shard)
    engines = {name: (engine_factory or create_engine)(name) for name in methods}
    out_dir = Path(out_dir)
    results = {"config": {"data_dir": str(data_dir), "methods": list(methods), "protocols": list(protocols),
                          "prompts": list(prompts), "shard": shard, "split": str(split) if split else None,
                          "split_sha256": sha256_of(split) if split else None,
                          "clicks_2d": clicks_2d,
                          "rounds_3d": rounds_3d, "tolerance_mm": tolerance_mm, "fusion": fusion, "views": views,
                          "shift": shift.label if shift else None},
               "cases": [c.name for c in cases], "records": [], "skipped": [], "errors": []}
    for name, engine in engines.items():
        for protocol in protocols:
            for prompt in prompts:
                reason = supported(engine, protocol, prompt)
                if reason:
                    results["skipped"].append(f"{name} / {protocol} / {prompt}: {reason}")

    # everything goes to OUT/unfinished-run first and into OUT when the run has finished (rundir.py)
    with staged_run(out_dir, echo=_note if progress else None) as staging:
        bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress, dynamic_ncols=True)
        wanted = LabelFilter(labels)
        for case in cases:
            try:
                volume = read_image(case.image)
                label_map = read_label(case.label, volume)
                present = [int(v) for v in np.unique(label_map) if v != 0]
                if shift is not None:
                    volume, label_map = apply_shift(shift, volume, label_map)
                    kept = {int(v) for v in np.unique(label_map)}
                    lost = [case.names.get(v, f"label_{v}") for v in present if v not in kept]
                    if lost:   # cropped away or too small for the shifted grid: said, not silently dropped
                        results["skipped"].append(f"{case.name}: {', '.join(lost)} not in the {shift.label} view")
                    present = [v for v in present if v in kept]
            except InputError as error:
                results["errors"].append(f"{case.name}: {error}")
                bar.update(1)
                continue
            values = wanted.select(case, present)
            if not values:
                results["skipped"].append(f"{case.name}: no structure to evaluate ("
                                          + ("none of the labels asked for" if present else "its label map is empty")
                                          + ")")
            for method, engine, fused in fusion_variants(engines, fusion):
                session = InteractiveSession(engine, fusion=fused)
                session.set_volume(volume.array, volume.spacing)
                for value in values:
                    reference = label_map == value
                    structure = case.names.get(value, f"label_{value}")
                    bar.set_postfix_str(f"{case.name} {method} {structure}"[:60])
                    for view, protocol, prompt in itertools.product(views, protocols, prompts):
                        axis, where = VIEWS[view], f"{case.name} / {structure} / {method} / {view_label(protocol, view)}"
                        if supported(engine, protocol, prompt):
                            continue
                        reason = text_unsupported(engine, prompt, structure)
                        if reason:
                            results["skipped"].append(f"{where} / {prompt}: {reason}")
                            continue
                        try:
                            if protocol == "2d":
                                steps, mask = run_2d(session, reference, volume.spacing, prompt, clicks_2d, axis=axis,
                                                     tolerance_mm=tolerance_mm, name=structure)
                            else:
                                rounds = []
                                steps, mask = run_3d(session, reference, volume.spacing, prompt, rounds_3d, axis=axis,
                                                     tolerance_mm=tolerance_mm, name=structure,
                                                     on_round=lambda *state: rounds.append(
                                                         round_record(*state, reference, axis=axis)))
                        except Exception as error:  # one failing structure must not lose a long run
                            results["errors"].append(f"{where} / {prompt}: {type(error).__name__}: {error}")
                            continue
                        record = {"case": case.name, "structure": structure, "label": value, "method": method,
                                  "prompt": prompt, "protocol": protocol, "view": view, **summarise_steps(steps),
                                  "steps": [s.as_dict() for s in steps], "mask_file": None}
                        if protocol == "3d":   # the drops fusion cannot prevent: the clicked slice got worse
                            record["drops_clicked_slice"] = clicked_slice_drops(rounds)
                            record["rounds"] = [{k: _nan_to_none(v) for k, v in r.items()} for r in rounds]
                        if save_masks:
                            run_name = f"{method}-{prompt}-{protocol}" + ("" if view == DEFAULT_VIEW else f"-{view}")
                            relative = (Path("masks") / safe_filename(case.name) / run_name
                                        / f"{value}_{safe_filename(structure)}.nii.gz")
                            write_label(staging / relative, mask.astype(np.uint8), volume)
                            record["mask_file"] = str(relative)
                        results["records"].append(record)
            bar.update(1)
        bar.close()
        unmatched = wanted.unmatched("of this shard " if shard else "")
        if unmatched:   # a shard sees only its cases: there it is listed, not an error
            (results["skipped"] if shard else results["errors"]).append(unmatched)
        write_report(staging, results)
    return results
