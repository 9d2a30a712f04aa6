"""How far multi-round fusion could go: the 3D protocol with fusion rules that know the reference.

    python -m training.analysis.fusion_ceiling --data ../shared/data runs/data --exclude-cases ct_abdomen_multiorgan \\
        --rounds 6 --out runs/fusion_ceiling

The simulated user's 3D protocol (a box and a click first, then ``--rounds`` rounds of click + propagate) runs
on every structure of the cases once per rule, the rule standing in for the MRF quality network:

* ``off``: each round's new result as it is (no fusion);
* ``oracle``: on every slice but the user's, the round's mask with fewer wrong pixels against the reference:
  the best any per-slice quality network could do;
* ``freeze``: every slice but the user's keeps the previous round's mask: what is left is what the corrected
  slices themselves change;
* ``network``: the bundle's own fusion as its settings say (the MRF quality network at its decision threshold,
  the direction check; ``--threshold`` and ``--fusion-settings`` override them): what the shipped fusion does
  when switched on, beside the bounds.

Per rule and first prompt: the mean Dice per round and the share of (structure, round) pairs whose Dice fell by
more than 0.01 (the evaluation's "drops"), written to ``--out`` (``config.json`` the command's arguments,
``metrics.jsonl`` one line per structure and rule, ``summary.json``, ``train.log`` the table). It tells how
much of the drops per-slice fusion can remove at all, on cases not used to report on. Each record also keeps
its correction rounds (``rounds``: the click, the clicked slice's wrong pixels before and after the click, the
Dice before and after the round, and the Dice had only the clicked slice changed or only the other slices),
and the table says where the drops came from: the clicked slice got worse (which per-slice fusion must not
touch), or the other slices' change alone lowers the Dice (what fusion is for). It needs labelled cases; it is
a development tool, not part of the product.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.evaluation.datasets import discover_cases
from IMISSegmentLib.evaluation.protocol import DROP, clicked_slice_drops, round_record, run_3d
from IMISSegmentLib.evaluation.report import summarise
from IMISSegmentLib.evaluation.runner import summarise_steps
from IMISSegmentLib.fusion import FusionSettings
from IMISSegmentLib.settings import settings_json
from IMISSegmentLib.io.atomic import check_output_path
from IMISSegmentLib.io.readers import read_image, read_label
from IMISSegmentLib.models import load_model
from IMISSegmentLib.prompts import slice_of
from IMISSegmentLib.session import InteractiveSession

from training.analysis.tune_inference import link_cases

RULES = ("off", "oracle", "freeze", "network")
PROMPTS = ("box", "click")


class ReferenceFusion:
    """An engine's ``fuse_rounds`` replaced by a rule that reads the reference (``reference`` is set per
    structure); ``decisions`` records, for each slice whose masks differ, (slice, kept previous, wrong pixels
    previous, wrong pixels new)."""

    def __init__(self, rule: str) -> None:
        if rule not in ("oracle", "freeze"):
            raise InputError(f"fusion rule must be oracle or freeze, got {rule!r}")
        self.rule = rule
        self.reference = None
        self.decisions: list[tuple] = []

    def __call__(self, request, previous, current, cancelled=None):
        from IMISSegmentLib.propagation.propagator import propagation_axis
        axis = propagation_axis(request.prompted)
        users = {index for (a, index) in request.prompted if a == axis}
        fused = np.array(current, np.uint8, copy=True)
        for index in range(current.shape[axis]):
            if index in users:
                continue
            old, new = slice_of(previous, axis, index) > 0, slice_of(current, axis, index) > 0
            if np.array_equal(old, new):
                continue
            truth = slice_of(self.reference, axis, index)
            wrong_old, wrong_new = np.count_nonzero(old ^ truth), np.count_nonzero(new ^ truth)
            keep = self.rule == "freeze" or wrong_old < wrong_new
            if keep:
                slice_of(fused, axis, index)[...] = old
            self.decisions.append((index, keep, int(wrong_old), int(wrong_new)))
        return fused


def drop_causes(records: list, tolerance: float = DROP) -> dict:
    """Of the rounds whose Dice fell by more than ``tolerance``: how many made the clicked slice worse (more
    wrong pixels), and how many lose that much through the other slices' change alone."""
    rounds = [r for record in records for r in record.get("rounds", ())]
    drops = [r for r in rounds if r["dice_after"] < r["dice_before"] - tolerance]
    return {"rounds": len(rounds), "drops": len(drops),
            "clicked_slice_worse": clicked_slice_drops(rounds, tolerance),
            "other_slices_drop": sum(r["dice_others_only"] < r["dice_before"] - tolerance for r in drops)}


def network_rule_engine(bundle, fusion_settings=None):
    """The bundle's engine fusing as the ``network`` rule does (its fusion entry, ``fusion_settings`` over it);
    InputError when the bundle has no fusion entry or the settings do not fit it."""
    engine = load_model(str(bundle), device="cpu")
    if "fuse" not in engine.capabilities:
        raise InputError(f"{bundle}: the bundle has no multi-round fusion entry (the network rule needs one)")
    if fusion_settings:
        engine.configure_fusion({**asdict(engine.fusion_settings), **fusion_settings})
    return engine


def run_rule(bundle, rule: str, cases_dir: Path, rounds: int, log=print, fusion_settings=None) -> list[dict]:
    """One rule over every structure of the cases: evaluation-style records (method = the rule).
    ``fusion_settings``: a dict of :class:`IMISSegmentLib.fusion.FusionSettings` fields (the decision
    threshold, the direction check, ...) that replace the bundle's for the ``network`` rule."""
    engine = network_rule_engine(bundle, fusion_settings) if rule == "network" else load_model(str(bundle),
                                                                                                device="cpu")
    fusion = ReferenceFusion(rule) if rule in ("oracle", "freeze") else None
    if fusion is not None:   # this engine instance only: the rule stands in for the quality network
        engine.fuse_rounds = fusion
        engine.capabilities = frozenset(engine.capabilities | {"fuse"})
    records = []
    for case in discover_cases(cases_dir):
        volume = read_image(case.image)
        labels = read_label(case.label, volume)
        session = InteractiveSession(engine, fusion=rule != "off")
        session.set_volume(volume.array, volume.spacing)
        for value in [int(v) for v in np.unique(labels) if v]:
            reference = labels == value
            for prompt in PROMPTS:
                if fusion is not None:
                    fusion.reference = reference
                seen = []
                steps, _ = run_3d(session, reference, volume.spacing, prompt, rounds,
                                  on_round=lambda *state: seen.append(round_record(*state, reference)))
                records.append({"case": case.name, "structure": case.names.get(value, f"label_{value}"),
                                "method": rule, "prompt": prompt, "protocol": "3d", **summarise_steps(steps),
                                "steps": [s.as_dict() for s in steps], "rounds": seen})
                log(f"{rule:<6} {case.name} / {records[-1]['structure']} / {prompt}: "
                    + " ".join(f"{s.dice:.3f}" for s in steps))
    return records


def describe(row: dict) -> str:
    return (f"{row['method']:<6} {row['prompt']:<5} n {row['structures']:3d}  Dice per round "
            + " ".join(f"{d:.3f}" for d in row["dice_by_step"]) + f"  drops {100 * row['drop_share']:.1f} %")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.analysis.fusion_ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="Resources/models/default", help="the model bundle")
    parser.add_argument("--data", nargs="+", required=True, help="folders of labelled cases")
    parser.add_argument("--exclude-cases", default="", help="comma-separated case names to leave out")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="a split file (training/splits/validation.json): only its validation cases")
    parser.add_argument("--rules", default=",".join(RULES), help=f"rules to run (of {', '.join(RULES)})")
    parser.add_argument("--rounds", type=int, default=6, help="correction rounds (default 6)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the network rule's decision threshold (default: the bundle's)")
    parser.add_argument("--fusion-settings", default=None, metavar="JSON",
                        help="fusion settings replacing the bundle's for the network rule, e.g. "
                             "'{\"direction_margin\": 0.5, \"network\": false}'")
    parser.add_argument("--out", required=True, help="run folder for the records")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        rules = [r for r in args.rules.split(",") if r]
        if not rules or any(r not in RULES for r in rules):
            raise InputError(f"--rules must list values of {', '.join(RULES)}, got {args.rules!r}")
        if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
            raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}")
        fusion_settings = settings_json(args.fusion_settings, "--fusion-settings") if args.fusion_settings else {}
        if args.threshold is not None:
            fusion_settings["threshold"] = args.threshold
        FusionSettings.from_dict(fusion_settings)     # unknown names and bad values fail here, before any run
        if args.rounds < 1:
            raise InputError(f"--rounds must be at least 1, got {args.rounds}")
        if "network" in rules:
            network_rule_engine(args.bundle, fusion_settings)   # the bundle fits the rule: before any rule runs
        elif fusion_settings:
            raise InputError("--fusion-settings and --threshold are the network rule's; --rules does not list it")
        check_output_path(out, folder=True)
        cases = link_cases(args.data, {c for c in args.exclude_cases.split(",") if c}, out / "cases", args.split)
        (out / "config.json").write_text(json.dumps({**vars(args), "rules": rules, "cases": cases,
                                                     "fusion_settings": fusion_settings or None}, indent=1) + "\n")
        records = []
        with open(out / "train.log", "w") as log_file:
            def log(line):
                print(line, flush=True)
                log_file.write(line + "\n")
            log(f"cases: {', '.join(cases)}; rounds {args.rounds}")
            for rule in rules:
                records += run_rule(args.bundle, rule, out / "cases", args.rounds, log, fusion_settings)
            rows = summarise(records)
            for row in rows:
                log(describe(row))
            for rule in rules:
                causes = drop_causes([r for r in records if r["method"] == rule])
                log(f"{rule:<6} {causes['drops']} drops in {causes['rounds']} rounds: the clicked slice worse in "
                    f"{causes['clicked_slice_worse']}, the other slices' change alone a drop in "
                    f"{causes['other_slices_drop']}")
        with open(out / "metrics.jsonl", "w") as metrics:
            for record in records:
                metrics.write(json.dumps(record) + "\n")
        (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    except (InputError, OSError, ValueError) as error:
        print(f"training.analysis.fusion_ceiling: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
