"""Set a bundle's inference settings that need no training (chosen on the validation split).

    python -m training.export.settings --bundle Resources/models/default \\
        --set text.localiser.keep_confirmed=true --bundle-version 0.8.0

Only the settings in SETTABLE can be set (the rest of a bundle comes from its exports); each value is JSON and
the result is checked as the engines read it before the bundle is rebuilt (staged: a failure leaves it as it
was). Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from IMISSegmentLib.engines.onnx_engine import bundle_input_gamma
from IMISSegmentLib.engines.shrink_check import ShrinkCheckSettings
from IMISSegmentLib.engines.text_localiser import LocaliserSettings
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.propagation.propagator import PropagationSettings
from IMISSegmentLib.models import read_bundle_info

from training.export.bundle import rebuild_bundle, run_command

#: dotted key -> what it is (IMISSegmentLib/engines/text_localiser.py, onnx_engine.py, shrink_check.py,
#: propagation/propagator.py)
SETTABLE = {
    "text.localiser.threshold": "the localiser's logit threshold",
    "text.localiser.min_part_share": "the smallest part a name alone keeps, as a share of the largest",
    "text.localiser.keep_confirmed": "confirmed parts of a name's answer stay (true / false)",
    "input_gamma": "the click network's input gamma",
    "propagation.settings.roi_scale": "the memory network's region of interest: its side over the structure's extent",
    "propagation.settings.roi_margin_mm": "the region of interest's side: millimetres added to it",
    "shrink_check": 'a positive click\'s answer joined to the mask it took most of '
                    '({"enabled": true, "min_share": 0.5})',
}


def parse_assignment(text: str) -> tuple:
    """"key=json" -> (key, value); InputError naming what is wrong."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in SETTABLE:
        raise InputError(f"--set {text!r}: expected KEY=VALUE with KEY one of {', '.join(SETTABLE)}")
    try:
        return key, json.loads(value)
    except ValueError:
        raise InputError(f"--set {text!r}: the value must be JSON (true, 0.5, ...)") from None


def set_settings(bundle, assignments: dict, version: str | None = None) -> dict:
    """Rebuild ``bundle`` with ``assignments`` ({dotted key: value}) set, checked, and the version."""
    bundle = Path(bundle)
    read_bundle_info(bundle)

    def edit(staging: Path, info: dict) -> None:
        for key, value in assignments.items():
            *path, last = key.split(".")
            entry = info
            for part in path:
                entry = entry.get(part) if isinstance(entry, dict) else None
                if not isinstance(entry, dict):
                    raise InputError(f"{bundle}: it has no {'.'.join(path)} entry to set {last} in")
            entry[last] = value
        if (info.get("text") or {}).get("localiser") is not None:
            LocaliserSettings.from_entry(info["text"]["localiser"], "--set")
        bundle_input_gamma(info)
        ShrinkCheckSettings.from_dict(info.get("shrink_check"))
        if isinstance(info.get("propagation"), dict):
            PropagationSettings.from_dict(info["propagation"].get("settings"))
        if version is not None:
            info["version"] = version

    return rebuild_bundle(bundle, edit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the bundle to change")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=JSON",
                        help=f"a setting (repeatable): {', '.join(SETTABLE)}")
    parser.add_argument("--bundle-version", default=None, metavar="VERSION", help="the bundle's new version")
    args = parser.parse_args(argv)

    def action() -> str:
        if not args.assignments:
            raise InputError("nothing to set: give --set KEY=VALUE")
        if args.bundle_version is not None and not args.bundle_version.strip():
            raise InputError("--bundle-version must not be empty")
        assignments = dict(parse_assignment(text) for text in args.assignments)
        set_settings(args.bundle, assignments, args.bundle_version.strip() if args.bundle_version else None)
        return (f"{args.bundle}: set " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in assignments.items())
                + (f"; version {args.bundle_version.strip()}" if args.bundle_version else ""))
    return run_command("training.export.settings", action)


if __name__ == "__main__":
    sys.exit(main())
