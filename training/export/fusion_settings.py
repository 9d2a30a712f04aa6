"""Set a bundle's multi-round fusion settings (``fusion.settings`` of ``inference_info.json``), network unchanged.

    python -m training.export.fusion_settings --bundle Resources/models/default \\
        --settings '{"enabled": true, "network": false, "direction_margin": 0.5}' --runs runs/fusion_direction

The values replace the bundle's (the others stay) and are checked as the session reads them
(:class:`IMISSegmentLib.fusion.FusionSettings`); ``--runs`` copies the record of the run that chose them
(``training.analysis.fusion_ceiling``'s folder: its config and its table, ``train.log``; the per-round metrics, several
hundred KB, stay in the run folder) into the bundle's ``training/``. The bundle is
rebuilt in a staging folder and replaced only when it loads again, so a bad value leaves it as it was.

A bundle without the MRF quality network gains a ``fusion`` entry with the settings alone: the direction check
works without the network (its ``network`` setting stays false; ``training.export.mrf`` adds the network).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.fusion import FusionSettings
from IMISSegmentLib.fusion.quality import has_fusion_network
from IMISSegmentLib.settings import settings_json

from training.export.bundle import rebuild_bundle

#: what a bundle keeps of the run that chose its fusion settings
SETTINGS_RECORDS = ("config.json", "train.log")


def set_fusion_settings(bundle, overrides: dict, runs=()) -> dict:
    """The bundle's fusion settings with ``overrides`` applied and checked; returns the new settings."""
    if not isinstance(overrides, dict) or not overrides:
        raise InputError(f"fusion settings must be a non-empty JSON object, got {overrides!r}")

    def edit(staging: Path, info: dict) -> None:
        entry = info.setdefault("fusion", {})
        with_network = has_fusion_network(info)
        current = FusionSettings.from_dict(entry.get("settings") or {"network": with_network})
        settings = FusionSettings.from_dict({**asdict(current), **overrides})
        if settings.network and not with_network:
            raise InputError(f"{bundle}: the bundle has no MRF quality network for \"network\": true "
                             "(training.export.mrf adds it)")
        entry["settings"] = asdict(settings)
        info["capabilities"] = sorted(set(info.get("capabilities", [])) | {"fuse"})

    return rebuild_bundle(bundle, edit, runs, SETTINGS_RECORDS)["fusion"]["settings"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.fusion_settings", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the model bundle folder")
    parser.add_argument("--settings", required=True, metavar="JSON", help="fusion settings to replace, a JSON object")
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="run folders whose records to copy")
    args = parser.parse_args(argv)
    try:
        settings = set_fusion_settings(args.bundle, settings_json(args.settings, "--settings"), args.runs)
    except (OSError, ValueError) as error:
        print(f"training.export.fusion_settings: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.bundle}: fusion settings {json.dumps(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
