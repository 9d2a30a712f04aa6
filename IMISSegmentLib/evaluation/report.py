"""Evaluation results on disk: results.json (everything), CSV tables, summary.md and the Dice-vs-clicks plot.

``summarise`` turns per-structure records into per-method means; ``write_report`` writes every file
from a results dict, so ``imis-segment merge`` can rebuild the report from shards.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path, write_json, write_text

RESULTS_FILE = "results.json"
RECORD_KEYS = ("case", "structure", "label", "method", "prompt", "protocol", "final_dice", "final_nsd",
               "dsc_auc", "nsd_auc", "noc85", "noc90", "seconds_per_step", "drops", "drops_clicked_slice",
               "corrections", "mask_file", "view")
STEP_KEYS = ("case", "structure", "label", "method", "prompt", "protocol", "step", "interactions", "action",
             "dice", "nsd", "seconds", "fusion_seconds", "view")
DEFAULT_VIEW = "axial"   # records written before views existed were all axial


def view_label(protocol: str, view: str = DEFAULT_VIEW) -> str:
    """The protocol as reports name it: "2d", or "2d coronal" for prompts in another view than axial."""
    return protocol if view in (None, DEFAULT_VIEW) else f"{protocol} {view}"


def _column(record: dict) -> tuple:
    """(protocol as reported, method, first prompt): what a summary row groups records by."""
    return view_label(record["protocol"], record.get("view")), record["method"], record["prompt"]


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict]) -> list[dict]:
    """One row per (protocol and view, method, prompt): structure count and mean metrics, Dice and NSD per step."""
    groups = defaultdict(list)
    for record in records:
        groups[_column(record)].append(record)
    rows = []
    for (protocol, method, prompt), group in sorted(groups.items()):
        longest = max(len(r["steps"]) for r in group)
        per_step = [[r["steps"][i] for r in group if i < len(r["steps"])] for i in range(longest)]
        rows.append({
            "protocol": protocol, "method": method, "prompt": prompt, "structures": len(group),
            "dice_by_step": [_mean(s["dice"] for s in steps) for steps in per_step],
            "nsd_by_step": [_mean(s["nsd"] for s in steps) for steps in per_step],
            **{key: _mean(r[key] for r in group)
               for key in ("final_dice", "final_nsd", "dsc_auc", "nsd_auc", "noc85", "noc90", "seconds_per_step")},
            "drop_share": _share(sum(r.get("drops", 0) for r in group), sum(r.get("corrections", 0) for r in group)),
            # 3D: the drops whose clicked slice got worse (fusion keeps the user's slices, so cannot prevent them)
            "clicked_slice_drop_share": _share(sum(r["drops_clicked_slice"] for r in group),
                                               sum(r.get("corrections", 0) for r in group))
            if all("drops_clicked_slice" in r for r in group) else None,
        })
    return rows


def _share(part: int, whole: int):
    return part / whole if whole else None


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _drops(row: dict) -> str:
    clicked = row.get("clicked_slice_drop_share")
    return _percent(row.get("drop_share")) + ("" if clicked is None else f" ({_percent(clicked)})")


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_markdown(results: dict, summary: list[dict]) -> str:
    config = results.get("config", {})
    lines = ["# IMISSegment evaluation", "",
             f"Data: `{config.get('data_dir', '?')}`; cases: {len(results.get('cases', []))}; "
             f"methods: {', '.join(config.get('methods', []))}; NSD tolerance {config.get('tolerance_mm', 2.0)} mm"
             + (f"; the validation cases of split `{config['split']}`" if config.get("split") else "")
             + (f"; every case shifted `{config['shift']}` (imis-segment evaluate --shift)" if config.get("shift")
                else "") + ".", "",
             "Step 0 is the first prompt (box, click, text, or text and a click; in 3D followed by propagation); "
             "each later step is one "
             "correction click (3D: click + propagate). DSC_AUC / NSD_AUC: trapezoid area (unit step) under the "
             "curve of the 5 correction steps, 0..4. NoC: interactions until Dice >= 0.85 / 0.90, 20 if never. "
             "drops: the share of (structure, correction step) pairs whose Dice fell by more than 0.01; in 3D, "
             "in brackets, the share of all pairs that fell with the clicked slice itself worse after the click "
             "(multi-round fusion keeps the user's slices, so it cannot prevent these). "
             "A method named `<name>-nomrf` is `<name>` with multi-round fusion switched off.", ""]
    for protocol in sorted({row["protocol"] for row in summary}):
        rows = [row for row in summary if row["protocol"] == protocol]
        steps = max(len(row["dice_by_step"]) for row in rows)
        shown = [i for i in (0, 1, 2, 4, 5, 9, 19) if i < steps]
        lines += [f"## {protocol.upper()} protocol", "",
                  "| method | first prompt | n | " + " | ".join(f"Dice@{i + 1}" for i in shown)
                  + " | final Dice | final NSD | DSC_AUC | NSD_AUC | NoC85 | NoC90 | drops | s/step |",
                  "|---|---|---|" + "---|" * (len(shown) + 8)]
        for row in rows:
            dice_cells = [_fmt(row["dice_by_step"][i]) if i < len(row["dice_by_step"]) else "" for i in shown]
            lines.append(f"| {row['method']} | {row['prompt']} | {row['structures']} | " + " | ".join(dice_cells)
                         + f" | {_fmt(row['final_dice'])} | {_fmt(row['final_nsd'])} | {_fmt(row['dsc_auc'])}"
                         f" | {_fmt(row['nsd_auc'])} | {_fmt(row['noc85'], 1)} | {_fmt(row['noc90'], 1)}"
                         f" | {_drops(row)} | {_fmt(row['seconds_per_step'], 3)} |")
        lines.append("")
    lines += _per_set_markdown(results.get("records", []))
    lines += _per_case_markdown(results.get("records", []))
    for title, key in (("Skipped", "skipped"), ("Errors", "errors")):
        if results.get(key):
            lines += [f"## {title}", ""] + [f"- {item}" for item in results[key]] + [""]
    return "\n".join(lines)


def _per_set_markdown(records: list[dict]) -> list[str]:
    """Mean Dice after 1 / 3 / 5 interactions per set and (protocol, method, prompt), when the cases come from
    more than one set (a folder of several sets names its cases ``SET/CASE``; other cases count as "cases")."""
    sets = sorted({r["case"].rsplit("/", 1)[0] if "/" in r["case"] else "cases" for r in records})
    if len(sets) < 2:
        return []
    columns = sorted({_column(r) for r in records})
    lines = ["## Per set: mean Dice after 1 / 3 / 5 interactions", "",
             "| set | " + " | ".join(f"{p.upper()} {m} ({q})" for p, m, q in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in sets + ["all"]:
        cells = []
        for column in columns:
            group = [r for r in records if _column(r) == column and (
                name == "all" or (r["case"].rsplit("/", 1)[0] if "/" in r["case"] else "cases") == name)]
            means = [_mean(r["steps"][i]["dice"] for r in group if i < len(r["steps"])) for i in (0, 2, 4)]
            cells.append(f"{' / '.join(_fmt(m) for m in means)} (n={len(group)})" if group else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _per_case_markdown(records: list[dict]) -> list[str]:
    """Mean Dice after the first prompt and at the end, per case and (protocol, method, prompt)."""
    columns = sorted({_column(r) for r in records})
    cases = sorted({r["case"] for r in records})
    if len(cases) < 2:
        return []
    lines = ["## Per case: mean Dice after the first prompt / at the end", "",
             "| case | n | " + " | ".join(f"{p.upper()} {m} ({q})" for p, m, q in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for case in cases:
        cells = []
        for column in columns:
            group = [r for r in records if r["case"] == case and _column(r) == column]
            first = _mean(r["steps"][0]["dice"] for r in group)
            cells.append(f"{_fmt(first)} / {_fmt(_mean(r['final_dice'] for r in group))}" if group else "")
        count = len({r["label"] for r in records if r["case"] == case})
        lines.append(f"| {case} | {count} | " + " | ".join(cells) + " |")
    return lines + [""]


def _csv_text(rows, keys) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_dice_curves(summary: list[dict], path) -> None:
    """PNG: mean Dice against interactions, one panel per protocol, one line per method and first prompt."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    protocols = sorted({row["protocol"] for row in summary})
    figure, axes = plt.subplots(1, max(1, len(protocols)), figsize=(5.5 * max(1, len(protocols)), 4), squeeze=False)
    for axis, protocol in zip(axes[0], protocols):
        for row in (r for r in summary if r["protocol"] == protocol):
            values = [v if v is not None else np.nan for v in row["dice_by_step"]]
            x = np.arange(1, len(values) + 1)
            axis.plot(x, values, marker="o" if len(values) < 8 else None, label=f"{row['method']} ({row['prompt']})")
        axis.set_title(f"{protocol.upper()} protocol")
        axis.set_xlabel("interactions (first prompt + correction clicks)")
        axis.set_ylabel("mean Dice")
        axis.set_ylim(0, 1)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=110)
    plt.close(figure)


def write_report(out_dir, results: dict) -> list[dict]:
    """Write results.json, per_structure.csv, steps.csv, summary.md and dice_vs_clicks.png; return the summary."""
    out_dir = Path(out_dir)
    records = [dict(r, view=r.get("view") or DEFAULT_VIEW) for r in results["records"]]
    summary = summarise(records)
    results = dict(results, summary=summary)
    write_json(out_dir / RESULTS_FILE, results)
    write_text(out_dir / "per_structure.csv", _csv_text(records, RECORD_KEYS))
    steps = [dict({k: r[k] for k in STEP_KEYS[:6]}, view=r["view"], **step) for r in records for step in r["steps"]]
    write_text(out_dir / "steps.csv", _csv_text(steps, STEP_KEYS))
    write_text(out_dir / "summary.md", summary_markdown(results, summary))
    if summary:
        plot_dice_curves(summary, out_dir / "dice_vs_clicks.png")
    return summary


def load_results(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read evaluation results {path}: {error}") from None
    if not isinstance(results, dict) or "records" not in results:
        raise InputError(f"{path} is not an imis-segment evaluate results file (no 'records')")
    problem = _results_problem(results)
    if problem:
        raise InputError(f"{path} is not a usable imis-segment evaluate results file: {problem}")
    return results


_NAME_KEYS = ("case", "structure", "method", "prompt", "protocol")   # strings
_METRIC_KEYS = ("final_dice", "final_nsd", "dsc_auc", "nsd_auc", "noc85", "noc90", "seconds_per_step")


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _results_problem(results: dict):
    """What in a results dict (a hand-edited results.json) the report cannot use, or None."""
    config = results.get("config", {})
    if not isinstance(config, dict) or not isinstance(config.get("methods", []), list):
        return "'config' must be an object with a list of 'methods'"
    for key in ("records", "cases", "skipped", "errors"):
        if not isinstance(results.get(key, []), list):
            return f"'{key}' must be a list"
    for n, record in enumerate(results["records"], start=1):
        if not isinstance(record, dict):
            return f"record {n} is not an object"
        missing = [key for key in (*_NAME_KEYS, "label", *_METRIC_KEYS, "steps") if key not in record]
        if missing:
            return f"record {n} has no {', '.join(missing)}"
        steps = record["steps"]
        wrong = [key for key in _NAME_KEYS if not isinstance(record[key], str)]
        wrong += [key for key in ("label", "drops", "drops_clicked_slice", "corrections")
                  if key in record and (isinstance(record[key], bool) or not isinstance(record[key], int))]
        wrong += [key for key in _METRIC_KEYS if not _number_or_none(record[key])]
        if not isinstance(steps, list) or not steps or not all(
                isinstance(s, dict) and _number_or_none(s.get("dice", "")) and _number_or_none(s.get("nsd", ""))
                for s in steps):
            wrong.append("steps (a list of steps with 'dice' and 'nsd')")
        if wrong:
            return f"record {n} has a malformed {', '.join(wrong)}"
    return None


MERGE_MUST_MATCH = ("clicks_2d", "rounds_3d", "tolerance_mm", "shift")   # protocol settings two parts must share ...
_SETTING_PROTOCOL = {"clicks_2d": "2d", "rounds_3d": "3d"}       # ... where both ran the protocol they concern


def _protocols_run(part: dict) -> set:
    """The protocols a part has results of (those of its config when it has none)."""
    return ({r.get("protocol") for r in part.get("records", [])}
            or set(part.get("config", {}).get("protocols") or ("2d", "3d")))


def _record_key(record: dict) -> tuple:
    return (record.get("case"), record.get("label", record.get("structure")), record.get("method"),
            view_label(record.get("protocol"), record.get("view")), record.get("prompt"))


def _same_split(a: dict, b: dict) -> bool:
    """Whether two parts were run on the same cases: both on every case found, or on one split file, by content
    (``split_sha256``) where both recorded it, else by file name (runs recorded before the content was)."""
    if not a.get("split") or not b.get("split"):
        return not a.get("split") and not b.get("split")
    if a.get("split_sha256") and b.get("split_sha256"):
        return a["split_sha256"] == b["split_sha256"]
    return Path(str(a["split"])).name == Path(str(b["split"])).name


def merge_results(parts: list[dict], replace: bool = False) -> dict:
    """Combine evaluate runs: shards of one run, or runs of other methods on the same cases (a peer run in its
    own environment). The same (case, structure, method, protocol, first prompt) in two parts is an error, or
    with ``replace`` the later part's result replaces the earlier one (a method re-run after a change, over a
    run of several); parts run with different protocol settings (``MERGE_MUST_MATCH``) are an error, a setting
    compared only between parts that ran its protocol (a 2D-only run merges with a 3D run of other rounds), and
    parts run on different splits (or one on a split, one on every case) are an error too."""
    first = parts[0].get("config", {})
    merged = {"config": dict(first, shard=None, methods=[]), "cases": [], "records": [], "skipped": [],
              "errors": []}
    seen = set()
    settled = {}            # setting -> the value of the first part that ran its protocol
    protocols, views = [], []
    for part in parts:
        config = part.get("config", {})
        if not _same_split(first, config):
            raise InputError("evaluation runs on different cases cannot be merged: split "
                             f"{first.get('split') or 'none (every case)'} vs {config.get('split') or 'none (every case)'}"
                             + (" (the same file name, another content)" if first.get("split") and config.get("split")
                                and Path(str(first["split"])).name == Path(str(config["split"])).name else ""))
        ran = _protocols_run(part)
        protocols += [p for p in ("2d", "3d") if p in ran and p not in protocols]
        relevant = [key for key in MERGE_MUST_MATCH if key not in _SETTING_PROTOCOL or _SETTING_PROTOCOL[key] in ran]
        differing = [key for key in relevant if key in settled and config.get(key) != settled[key]]
        if differing:
            raise InputError("evaluation runs with different protocol settings cannot be merged: "
                             + ", ".join(f"{key} {settled[key]!r} vs {config.get(key)!r}" for key in differing))
        for key in relevant:
            settled.setdefault(key, config.get(key))
        keys = [_record_key(record) for record in part.get("records", [])]
        overlap = sorted({" / ".join(str(v) for v in key) for key in keys if key in seen})
        if overlap and replace:
            fresh = set(keys)
            merged["records"] = [r for r in merged["records"] if _record_key(r) not in fresh]
        elif overlap:
            raise InputError(f"results in more than one part: {', '.join(overlap[:3])}"
                             + (f" and {len(overlap) - 3} more" if len(overlap) > 3 else ""))
        seen.update(keys)
        merged["config"]["methods"] += [m for m in config.get("methods", []) if m not in merged["config"]["methods"]]
        views += [v for v in config.get("views", ["axial"]) if v not in views]
        merged["cases"] += [c for c in part.get("cases", []) if c not in merged["cases"]]
        for key in ("records", "errors"):
            merged[key] += part.get(key, [])
        merged["skipped"] += [s for s in part.get("skipped", []) if s not in merged["skipped"]]
    merged["cases"].sort()
    merged["config"].update(settled, protocols=protocols or list(first.get("protocols", [])), views=views)
    return merged
