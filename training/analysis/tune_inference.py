"""Choose the click network's inference settings on validation cases and write them into a bundle.

    python -m training.analysis.tune_inference --bundle Resources/models/default --data ../shared/data runs/data \\
        --exclude-cases ct_abdomen_multiorgan --out runs/inference_tune --apply

Two settings change how the trained network is used, not its weights (IMISSegmentLib/engines/zoom.py and
``prompted_components`` in onnx_engine.py): the zoom-in window (``zoom``: off, or on with an ``expansion``, a
``min_crop_mm`` and whether a box alone sets a window, ``box_alone``) and whether clicks and boxes alone keep
only the prompted connected parts of the mask (``prompted_parts``: "text" or "always"). Each combination of
the grid runs the 2D protocol (the simulated user, ``--clicks`` interactions, first prompt a click and a box)
on the validation cases; the score is the mean Dice over the first five interactions, averaged over the two
first prompts. The best combination (ties: the earlier in the grid, which starts with zoom off) then, if it
zooms, runs the 3D protocol (``--rounds`` rounds of click + propagate) with and without zoom on masks that came
from propagation (``zoom.propagated``: a correction on a propagated slice) and on a box alone
(``zoom.box_alone``), scored by the mean Dice over all its steps. The result is written to ``--out``
(``config.json``, ``metrics.jsonl`` one line per run, ``train.log`` the table) and, with ``--apply``, into the
bundle, whose ``training/`` folder gets those records. Keep the cases you report on out of ``--data``.

With ``--input-gammas`` the grid is instead the click network's input gamma (``input_gamma``: the slice's 0..1
intensities raised to that power before the network sees them), the bundle's zoom and prompted parts held as
they are; the best gamma by the same 2D score is written with ``--apply``:

    python -m training.analysis.tune_inference --bundle Resources/models/default --data ../shared/data \
        --split training/splits/validation.json --input-gammas 1,0.8,0.6,0.5,0.4 --clicks 5 \
        --out runs/input_gamma --apply
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from IMISSegmentLib.engines.box_fill import BoxFillSettings
from IMISSegmentLib.engines.growth_check import GrowthCheckSettings
from IMISSegmentLib.engines.onnx_engine import PROMPTED_PARTS, OnnxClickEngine
from IMISSegmentLib.engines.zoom import ZoomSettings
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.evaluation.datasets import IMAGE_SUFFIXES, discover_cases
from IMISSegmentLib.evaluation.runner import evaluate
from IMISSegmentLib.evaluation.report import summarise
from IMISSegmentLib.models import read_bundle_info

from training.data.datasets import case_filter
from training.export.bundle import rebuild_bundle

SCORED_STEPS = 5
PROMPTS = ("click", "box")
#: the answer checks (IMISSegmentLib/engines/box_fill.py, growth_check.py): not tuned, their values fixed by hand;
#: every candidate runs with them and --apply writes them beside the chosen settings, so this command reproduces
#: the shipped settings
ANSWER_CHECKS = {"box_fill": asdict(BoxFillSettings(enabled=True)),
                 "growth_check": {k: v for k, v in asdict(GrowthCheckSettings(enabled=True)).items() if k != "neighbour"}}


def answer_checks(info: dict) -> dict:
    """ANSWER_CHECKS for a bundle: its growth check keeps the bundle's ``neighbour`` mode (not chosen here:
    ``training.export.correction --remove`` writes it; absent, it is "auto")."""
    checks = {name: dict(values) for name, values in ANSWER_CHECKS.items()}
    neighbour = (info.get("growth_check") or {}).get("neighbour")
    if neighbour is not None:
        checks["growth_check"]["neighbour"] = neighbour
    return checks


def candidate_settings(expansions, min_crops, parts) -> list[dict]:
    """The grid: zoom off first, then every (expansion, min_crop_mm, box_alone); each with every prompted_parts
    value."""
    zooms = [asdict(ZoomSettings(enabled=False))]
    zooms += [asdict(ZoomSettings(enabled=True, expansion=float(e), min_crop_mm=float(m), box_alone=alone))
              for e, m, alone in itertools.product(expansions, min_crops, (True, False))]
    return [{"zoom": zoom, "prompted_parts": part} for zoom in zooms for part in parts]


def gamma_candidates(info: dict, gammas) -> list[dict]:
    """The input-gamma grid: each gamma with the bundle's own zoom and prompted parts (1.0 first: ties keep it)."""
    zoom = {**asdict(ZoomSettings()), **(info.get("zoom") or {})}
    parts = info.get("prompted_parts", "text")
    ordered = sorted({float(g) for g in gammas}, key=lambda g: (g != 1.0, -g))
    return [{"zoom": zoom, "prompted_parts": parts, "input_gamma": gamma} for gamma in ordered]


def link_cases(roots, exclude, folder: Path, split=None) -> list[str]:
    """A folder of links to the cases under ``roots`` (names or ``SET/CASE`` keys in ``exclude`` left out; with
    ``split``, a split file, only its validation cases); returns their names (a set's cases as ``SET__CASE``)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = case_filter(split=split, held_out="only") if split is not None else None
    names = []
    for root in roots:
        for case in discover_cases(root):
            if case.name in exclude or case.key in exclude or (wanted is not None and not wanted(case)):
                continue
            case = replace(case, name=case.key.replace("/", "__"))
            if case.name in names:
                raise InputError(f"two validation cases are named {case.name!r} (under {root})")
            target = folder / case.name
            target.mkdir(exist_ok=True)
            for stem, path in (("image", case.image), ("label", case.label)):
                suffix = next(s for s in IMAGE_SUFFIXES if Path(path).name.endswith(s))
                if suffix in (".mhd", ".nhdr"):
                    raise InputError(f"{path}: detached-header images cannot be linked; convert to .nii.gz or .nrrd")
                link = target / (stem + suffix)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(Path(path).resolve())
            (target / "labels.json").write_text(json.dumps({"labels": {str(k): v for k, v in case.names.items()}}))
            names.append(case.name)
    if not names:
        raise InputError(f"no validation cases under {', '.join(map(str, roots))} (after excluding {sorted(exclude)}"
                         + (f", keeping the validation cases of {split})" if split is not None else ")"))
    return names


def score(summary: list[dict], steps_scored: int = SCORED_STEPS) -> dict:
    """Mean Dice over the first ``steps_scored`` interactions per first prompt, and their mean (the score)."""
    by_prompt = {}
    for row in summary:
        steps = [d for d in row["dice_by_step"][:steps_scored] if d is not None]
        by_prompt[row["prompt"]] = sum(steps) / len(steps) if steps else 0.0
    missing = [p for p in PROMPTS if p not in by_prompt]
    if missing:
        raise RuntimeError(f"the evaluation gave no rows for first prompt(s) {missing}")
    return {"score": sum(by_prompt[p] for p in PROMPTS) / len(PROMPTS),
            **{f"{p}_dice": by_prompt[p] for p in PROMPTS},
            "dice_by_step": {row["prompt"]: row["dice_by_step"] for row in summary}}


def run_candidate(bundle: Path, info: dict, settings: dict, number: int, cases_dir: Path, out: Path, protocol: str,
                  interactions: int) -> dict:
    """One candidate's validation run (``protocol`` "2d": ``interactions`` clicks; "3d": that many rounds)."""
    engine = OnnxClickEngine(bundle, {**info, **settings}, device="cpu")
    started = time.perf_counter()
    results = evaluate(cases_dir, ["clicknet"], out / "evaluations" / f"{number:02d}", protocols=(protocol,),
                       prompts=PROMPTS, clicks_2d=interactions, rounds_3d=interactions, save_masks=False,
                       progress=False, engine_factory=lambda name: engine, fusion="off")
    if results["errors"]:
        raise RuntimeError(f"validation evaluation failed: {results['errors']}")
    scored = SCORED_STEPS if protocol == "2d" else interactions + 1
    return {"candidate": number, "protocol": protocol, **settings, **score(summarise(results["records"]), scored),
            "structures": len(results["records"]) // len(PROMPTS), "seconds": time.perf_counter() - started}


def tune(bundle: Path, cases_dir: Path, out: Path, candidates: list[dict], clicks: int, rounds: int = 0,
         log=print) -> tuple[list[dict], dict]:
    """All rows and the chosen settings: the best of ``candidates`` by the 2D protocol; then, when it zooms and
    ``rounds`` > 0, the 3D protocol decides whether it also zooms on propagated masks (``zoom.propagated``) and on
    a box alone (``zoom.box_alone``: the box then sets the window for the slice that starts the propagation)."""
    info = read_bundle_info(bundle)
    info = {**info, **answer_checks(info)}
    rows = []
    for number, settings in enumerate(candidates):
        rows.append(run_candidate(bundle, info, settings, number, cases_dir, out, "2d", clicks))
        log(describe_row(rows[-1]))
    chosen = best(rows)
    log(f"best in 2D: {describe_row(chosen)}")
    settings = {key: chosen[key] for key in ("zoom", "prompted_parts", "input_gamma") if key in chosen}
    if rounds > 0 and chosen["zoom"]["enabled"]:
        checks = []
        for propagated, alone in itertools.product((True, False), (True, False)):
            variant = {**settings, "zoom": {**settings["zoom"], "propagated": propagated, "box_alone": alone}}
            checks.append(run_candidate(bundle, info, variant, len(rows), cases_dir, out, "3d", rounds))
            rows.append(checks[-1])
            log(describe_row(checks[-1]))
        settings = {key: best(checks)[key] for key in settings}
    return rows, settings


def describe_row(row: dict) -> str:
    zoom = row["zoom"]
    where = (f"zoom x{zoom['expansion']:g} >= {zoom['min_crop_mm']:g} mm" if zoom["enabled"] else "zoom off")
    if zoom["enabled"] and not zoom["box_alone"]:
        where += ", not on a box alone"
    if row.get("protocol") == "3d":
        where = f"3D, {where}, {'also' if zoom['propagated'] else 'not'} on propagated masks"
    if "input_gamma" in row:
        where = f"gamma {row['input_gamma']:g}, {where}"
    return (f"{row['candidate']:2d}  {where:<24} parts {row['prompted_parts']:<6}  score {row['score']:.4f}  "
            f"(click {row['click_dice']:.3f}, box {row['box_dice']:.3f}; "
            f"{row['structures']} structures, {row['seconds']:.0f} s)")


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda row: (round(row["score"], 4), -row["candidate"]))


def apply_settings(bundle: Path, chosen: dict, out: Path) -> dict:
    """Write the chosen settings into the bundle (staged; the run records go to its training/ folder)."""
    def edit(staging, info):
        info["zoom"] = chosen["zoom"]
        info["prompted_parts"] = chosen["prompted_parts"]
        info.update(answer_checks(info))
        record = {"run": out.name, "records": f"training/{out.name}/"}
        if "input_gamma" in chosen:   # the zoom and parts were held: the run that chose them stays on record
            info["input_gamma"] = chosen["input_gamma"]
            info["input_gamma_tuning"] = record
        else:
            info["inference_tuning"] = record
    return rebuild_bundle(bundle, edit, runs=[out])


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.analysis.tune_inference", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the click-network bundle")
    parser.add_argument("--data", nargs="+", required=True, help="folders of validation cases")
    parser.add_argument("--exclude-cases", default="", help="comma-separated case names to leave out (held out)")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="a split file (training/splits/validation.json): only its validation cases")
    parser.add_argument("--out", required=True, help="run folder for the records")
    parser.add_argument("--expansions", type=_floats, default=[1.5, 2.0, 3.0])
    parser.add_argument("--min-crop-mm", type=_floats, default=[120.0, 240.0, 360.0])
    parser.add_argument("--parts", default=",".join(PROMPTED_PARTS), help="prompted_parts values to try")
    parser.add_argument("--clicks", type=int, default=10, help="2D interactions per structure (default 10)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="3D rounds for the zoom-on-propagated-masks / box-alone check (default 5; 0 skips it)")
    parser.add_argument("--input-gammas", type=_floats, default=None,
                        help="tune the click network's input gamma over these values instead of the zoom grid "
                             "(e.g. 1,0.8,0.6,0.5,0.4; each between 0.2 and 5)")
    parser.add_argument("--apply", action="store_true", help="write the best settings into the bundle")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        parts = [p for p in args.parts.split(",") if p]
        unknown = [p for p in parts if p not in PROMPTED_PARTS]
        if unknown or not parts:
            raise InputError(f"--parts must list values of {', '.join(PROMPTED_PARTS)}, got {args.parts!r}")
        if args.clicks < SCORED_STEPS:
            raise InputError(f"--clicks must be at least {SCORED_STEPS}, got {args.clicks}")
        exclude = {c for c in args.exclude_cases.split(",") if c}
        cases = link_cases(args.data, exclude, out / "cases", args.split)
        if args.rounds < 0:
            raise InputError(f"--rounds must be 0 or more, got {args.rounds}")
        if args.input_gammas is not None:
            if not args.input_gammas or not all(0.2 <= g <= 5.0 for g in args.input_gammas):
                raise InputError(f"--input-gammas must list numbers between 0.2 and 5, got {args.input_gammas}")
            candidates = gamma_candidates(read_bundle_info(Path(args.bundle)), args.input_gammas)
            args.rounds = 0   # the 3D check concerns the zoom, which stays as it is
        else:
            candidates = candidate_settings(args.expansions, args.min_crop_mm, parts)
        config = {"name": out.name, "bundle": str(args.bundle), "data": args.data, "exclude_cases": sorted(exclude),
                  "cases": cases, "clicks": args.clicks, "rounds": args.rounds, "prompts": list(PROMPTS),
                  "candidates": candidates}
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        with open(out / "train.log", "w") as log_file:
            def log(line):
                print(line, flush=True)
                log_file.write(line + "\n")
            log(f"validation cases: {', '.join(cases)}")
            rows, chosen = tune(Path(args.bundle), out / "cases", out, candidates, args.clicks, args.rounds, log)
            log(f"chosen: zoom {chosen['zoom']}, prompted_parts {chosen['prompted_parts']!r}"
                + (f", input_gamma {chosen['input_gamma']:g}" if "input_gamma" in chosen else ""))
        with open(out / "metrics.jsonl", "w") as metrics:
            for row in rows:
                metrics.write(json.dumps(row) + "\n")
        if args.apply:
            apply_settings(Path(args.bundle), chosen, out)
            print(f"wrote zoom {chosen['zoom']} and prompted_parts {chosen['prompted_parts']!r}"
                  + (f" and input_gamma {chosen['input_gamma']:g}" if "input_gamma" in chosen else "")
                  + f" into {args.bundle}")
    except (InputError, OSError, ValueError, RuntimeError) as error:
        print(f"training.analysis.tune_inference: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
