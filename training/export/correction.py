"""Add a click network for corrections on propagated slices to a model bundle (or remove it).

    python -m training.export.correction --checkpoint runs/click_net_cpu_ft5/checkpoint.pt \\
        --bundle Resources/models/default --runs runs/click_net_cpu_ft5
    python -m training.export.correction --remove --bundle Resources/models/default

A correction on a slice whose mask came from propagation feeds that mask to the network as its previous
mask; a network fine-tuned on such priors (training/data/datasets.py: propagated priors) answers those
corrections, and the bundle's slice network everything else (first prompts, corrections of its own answers,
text). The bundle gains ``click_net_propagated.onnx`` (inputs ``image``, ``prompts``; the slice network's
architecture without a text stage) with its torch state dict and a ``propagated_correction`` entry (network
config, the run, the export check). onnxruntime must match torch; the bundle is rebuilt in a staging folder
and swapped in, so a failure leaves it untouched. ``--remove`` takes the stage, its files and its entry out
again: the slice network then answers those corrections too, with the propagated mask as its previous mask, and
the growth check's ``neighbour`` mode is written down (``--neighbour``; IMISSegmentLib/engines/growth_check.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from IMISSegmentLib.engines.growth_check import NEIGHBOUR_MODES, GrowthCheckSettings
from IMISSegmentLib.engines.onnx_engine import PROPAGATED_STAGE
from IMISSegmentLib.models import sha256_of
from IMISSegmentLib.networks.click_net import ClickNet

from training.export.bundle import (OPSET, load_checkpoint_network, network_entry, rebuild_bundle, run_command, run_record,
                                    runs_named, stage_command)
from training.export.click_net import write_click_network

ONNX_FILE = "click_net_propagated.onnx"
STATE_FILE = "click_net_propagated.pt"


def _without_text(config: dict) -> dict:
    return {k: v for k, v in (config or {}).items() if k != "text"}


def add_correction(network: ClickNet, bundle: Path, training: dict | None = None, runs=(),
                   tolerance: float = 1e-3) -> dict:
    """Rebuild ``bundle`` with the correction stage added (replacing an earlier one); returns the new info.
    The network must be the bundle's slice architecture without a text stage (ValueError otherwise)."""
    if network.text is not None:
        raise ValueError("the correction network must have no text stage (text prompts use the slice network)")
    def edit(staging: Path, info: dict) -> None:
        slice_config = _without_text((info.get("network") or {}).get("config"))
        if _without_text(network.config) != slice_config:
            raise ValueError(f"the correction network's config {_without_text(network.config)} differs from the "
                             f"bundle's slice network {slice_config}")
        size = int(info.get("input_size", [256])[0])
        difference = write_click_network(network, staging, ONNX_FILE, STATE_FILE, size, tolerance)
        info["stages"][PROPAGATED_STAGE] = {
            "file": ONNX_FILE, "sha256": sha256_of(staging / ONNX_FILE), "opset": OPSET,
            "state_dict": {"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)}}
        info["propagated_correction"] = {
            "network": network_entry(network),
            "export_check": {"max_abs_logit_difference": difference},
        }
        if training:
            info["propagated_correction"]["training"] = training

    return rebuild_bundle(bundle, edit, runs)


def _record_folders(training: Path, run_name) -> list:
    """The run folders under a bundle's ``training/`` of the run ``run_name``: the folder of that name, and any
    whose config.json names the run (a run folder need not be named as its config)."""
    if not run_name or not training.is_dir():
        return []
    found = []
    for folder in sorted(p for p in training.iterdir() if p.is_dir()):
        try:
            named = json.loads((folder / "config.json").read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            named = None
        if run_name in (folder.name, named):
            found.append(folder.name)
    return found


def remove_correction(bundle, records=None, neighbour: str = "prior") -> dict:
    """Rebuild ``bundle`` without its correction stage (ValueError when it has none); returns the new info.
    ``records``: the run folders under the bundle's ``training/`` that belong to the stage and go with it
    (default: those of the run its entry names, :func:`_record_folders`, unless another entry still names that
    run). ``neighbour``: the growth check's neighbour mode from now on (IMISSegmentLib/engines/growth_check.py):
    its "auto" would mean "off" once the stage is gone, so the choice is written down."""
    bundle = Path(bundle)
    if neighbour not in NEIGHBOUR_MODES or neighbour == "auto":
        raise ValueError(f"neighbour must be one of prior, area, off, got {neighbour!r}")
    for name in records or ():
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"--records: {name!r} is not the name of a run folder under the bundle's training/")

    def edit(staging: Path, info: dict) -> None:
        if PROPAGATED_STAGE not in info.get("stages", {}):
            raise ValueError(f"{bundle}: the bundle has no propagated-slice correction network to remove")
        entry = info.pop("propagated_correction", None) or {}
        run_name = (entry.get("training") or {}).get("run_name")
        names = list(records) if records is not None else \
            ([] if run_name in runs_named(info) else _record_folders(staging / "training", run_name))
        for name in names:
            folder = staging / "training" / name
            if records is not None and not folder.is_dir():
                raise ValueError(f"{bundle}: no run records training/{name} to remove")
            shutil.rmtree(folder, ignore_errors=True)
            info["training_records"] = [r for r in info.get("training_records", [])
                                        if not r.startswith(f"training/{name}/")]
        for name in (ONNX_FILE, STATE_FILE):
            (staging / name).unlink(missing_ok=True)
        del info["stages"][PROPAGATED_STAGE]
        if info.get("growth_check") is not None:
            info["growth_check"] = {**info["growth_check"], "neighbour": neighbour}
            GrowthCheckSettings.from_dict(info["growth_check"])

    return rebuild_bundle(bundle, edit)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--remove" in argv:
        parser = argparse.ArgumentParser(prog="python -m training.export.correction",
                                         description=__doc__.splitlines()[0])
        parser.add_argument("--remove", action="store_true", required=True,
                            help="take the propagated-slice correction network out of the bundle")
        parser.add_argument("--bundle", required=True, help="the model bundle folder")
        parser.add_argument("--records", nargs="*", default=None, metavar="RUN",
                            help="the stage's run records (folders of the bundle's training/) to remove with it "
                                 "(default: the run its entry names)")
        parser.add_argument("--neighbour", choices=("prior", "area", "off"), default="prior",
                            help="how a neighbouring slice's mask enters a positive click on an empty slice from now "
                                 "on (growth_check.neighbour: the 2D network's previous mask and the growth limit, "
                                 "the limit alone, or neither; default prior)")
        args = parser.parse_args(argv)

        def remove() -> str:
            info = remove_correction(args.bundle, args.records, args.neighbour)
            check = info.get("growth_check")
            return (f"removed the propagated-slice correction network from {args.bundle}"
                    + (f"; growth check neighbour: {check['neighbour']}" if check is not None else ""))
        return run_command("training.export.correction", remove)

    def add(args, settings):
        network, state = load_checkpoint_network(args.checkpoint)
        return add_correction(network, Path(args.bundle), run_record(args.checkpoint, state), args.runs)

    def report(args, info, verb):
        entry = info["propagated_correction"]
        return (f"{verb} the propagated-slice correction network in {args.bundle}: {entry['network']['parameters']} parameters, "
                f"onnx vs torch max |diff| {entry['export_check']['max_abs_logit_difference']:.2e}")

    return stage_command(argv, "training.export.correction", __doc__.splitlines()[0], "click-network", add, report,
                         present=lambda info: PROPAGATED_STAGE in info.get("stages", {}))


if __name__ == "__main__":
    sys.exit(main())
