"""Add a click network for corrections on propagated slices to a model bundle.

    python -m training.export.correction --checkpoint runs/click_net_cpu_ft5/checkpoint.pt \\
        --bundle Resources/models/default --runs runs/click_net_cpu_ft5

A correction on a slice whose mask came from propagation feeds that mask to the network as its previous
mask; a network fine-tuned on such priors (training/data/datasets.py: propagated priors) answers those
corrections, and the bundle's slice network everything else (first prompts, corrections of its own answers,
text). The bundle gains ``click_net_propagated.onnx`` (inputs ``image``, ``prompts``; the slice network's
architecture without a text stage) with its torch state dict and a ``propagated_correction`` entry (network
config, the run, the export check). onnxruntime must match torch; the bundle is rebuilt in a staging folder
and swapped in, so a failure leaves it untouched.
"""
from __future__ import annotations

import sys
from pathlib import Path

from IMISSegmentLib.engines.onnx_engine import PROPAGATED_STAGE
from IMISSegmentLib.models import sha256_of
from IMISSegmentLib.networks.click_net import ClickNet

from training.export.bundle import OPSET, load_checkpoint_network, network_entry, rebuild_bundle, run_record, stage_command
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


def main(argv=None) -> int:
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
