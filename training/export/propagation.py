"""Add a trained propagation network to a model bundle.

    python -m training.export.propagation --checkpoint runs/prop_net/checkpoint.pt --bundle Resources/models/default

The bundle gains three ONNX graphs (opset 17), one per stage of
:class:`IMISSegmentLib.networks.prop_net.PropNet` (``prop_key.onnx``: image -> f2, f4, f8, key, shrinkage,
selection; ``prop_value.onnx``: image, mask, f8 -> value; ``prop_decoder.onnx``: f2, f4, f8, readout,
sensory, previous -> logits, new_sensory), the whole network's torch state dict (``prop_net.pt``), a ``propagation``
entry (network class and config, memory settings, the export check) and, with ``--runs``, the run
records under ``training/``. Each stage must match torch on random inputs, and the bundle is rebuilt in
a staging folder and swapped in, so a failure leaves the old bundle untouched. ``--settings`` values are
applied over the bundle's propagation settings (the others stay; the defaults where it has none) and checked
(types and ranges, as the propagator uses them) before anything is written.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.models import sha256_of
from IMISSegmentLib.networks.prop_net import PropNet
from IMISSegmentLib.propagation.propagator import PropagationSettings
from IMISSegmentLib.settings import settings_from_dict
from IMISSegmentLib.propagation.stages import KEY_OUTPUTS, PROPAGATION_STAGES

from training.export.bundle import (OPSET, _check_onnx, load_checkpoint_network, network_entry, rebuild_bundle, run_record,
                                    stage_command)

STATE_FILE = "prop_net.pt"


class _KeyStage(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, image):
        return self.network.encode_key(image)


class _ValueStage(_KeyStage):
    def forward(self, image, mask, f8):
        return self.network.encode_value(image, mask, f8)


class _DecoderStage(_KeyStage):
    def forward(self, f2, f4, f8, readout, sensory, previous):
        return self.network.decode(f2, f4, f8, readout, sensory, previous)


def stage_examples(network: PropNet, seed: int = 0) -> dict:
    """Random example inputs of every stage (role -> {input name: tensor})."""
    generator = torch.Generator().manual_seed(seed)
    size, config = network.config["input_size"], network.config
    image = torch.rand(1, 1, size, size, generator=generator)
    with torch.inference_mode():
        f2, f4, f8, *_ = network.encode_key(image)
    side = size // 8
    return {
        "key": {"image": image},
        "value": {"image": image, "mask": torch.rand(1, 1, size, size, generator=generator), "f8": f8},
        "decoder": {"f2": f2, "f4": f4, "f8": f8,
                    "readout": torch.randn(1, config["value_dim"], side, side, generator=generator),
                    "sensory": torch.randn(1, config["sensory_dim"], side, side, generator=generator),
                    "previous": torch.rand(1, 1, size, size, generator=generator)},
    }


def export_stages(network: PropNet, folder: Path) -> dict:
    """Write the three ONNX graphs into ``folder``; returns {role: max abs difference onnxruntime vs torch}."""
    import onnxruntime

    network = network.eval().cpu()
    modules = {"key": _KeyStage(network), "value": _ValueStage(network), "decoder": _DecoderStage(network)}
    outputs = {"key": list(KEY_OUTPUTS), "value": ["value"], "decoder": ["logits", "new_sensory"]}
    examples = stage_examples(network)
    differences = {}
    for role, module in modules.items():
        path = folder / f"{PROPAGATION_STAGES[role]}.onnx"
        inputs = examples[role]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)   # group norm's batch-size check
            torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                              output_names=outputs[role], opset_version=OPSET, dynamo=False, do_constant_folding=True)
        _check_onnx(path)
        with torch.inference_mode():
            expected = module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        differences[role] = max(float(np.max(np.abs(a - e.numpy()))) for a, e in zip(actual, expected))
    return differences


def check_propagation_settings(values) -> PropagationSettings:
    """``values`` (a dict or PropagationSettings) read as the engine reads a bundle's settings
    (``PropagationSettings.from_dict``: names, types, ranges, working_min < working_max); InputError naming the
    setting, its value and what is expected."""
    if isinstance(values, PropagationSettings):
        values = asdict(values)
    try:
        return PropagationSettings.from_dict(values)
    except TypeError as error:
        raise InputError(f"propagation settings: {error}") from None


def add_propagation(network: PropNet, bundle: Path, settings: PropagationSettings | None = None,
                    training: dict | None = None, runs=(), tolerance: float = 1e-3,
                    overrides: dict | None = None) -> dict:
    """Rebuild ``bundle`` with the propagation stages added (replacing earlier ones); returns the new info.

    The settings written: ``overrides`` (a dict, {} included) applied over the bundle's current
    ``propagation.settings`` (the defaults when it has none); else ``settings`` (the defaults for None). They
    are checked (:func:`check_propagation_settings`) before anything is written."""
    if overrides is None:
        chosen = check_propagation_settings(settings or PropagationSettings())

    def edit(staging: Path, info: dict) -> None:
        nonlocal chosen
        if overrides is not None:
            current = (info.get("propagation") or {}).get("settings") or {}
            merged = {**current, **overrides}
            try:
                chosen = check_propagation_settings(merged)
            except InputError as error:
                raise InputError(f"{bundle}: {error} (settings {json.dumps(merged)})") from None
        differences = export_stages(network, staging)
        worst = max(differences.values())
        if not worst < tolerance:
            raise RuntimeError(f"export check failed: onnxruntime and torch differ by {worst:.3g} "
                               f"(tolerance {tolerance:g}) in stage(s) {differences}")
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / STATE_FILE)
        for role, stage in PROPAGATION_STAGES.items():
            entry = {"file": f"{stage}.onnx", "sha256": sha256_of(staging / f"{stage}.onnx"), "opset": OPSET}
            if role == "key":
                entry["state_dict"] = {"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)}
            info["stages"][stage] = entry
        info["propagation"] = {
            "network": network_entry(network),
            "settings": asdict(chosen),
            "export_check": {"max_abs_difference": differences},
        }
        if training:
            info["propagation"]["training"] = training

    return rebuild_bundle(bundle, edit, runs)


def main(argv=None) -> int:
    def add(args, settings):
        network, state = load_checkpoint_network(args.checkpoint, PropNet)
        return add_propagation(network, Path(args.bundle), None, run_record(args.checkpoint, state), args.runs,
                               overrides=settings)

    def report(args, info, verb):
        entry = info["propagation"]
        return (f"{verb} propagation in {args.bundle}: {entry['network']['parameters']} parameters, onnx vs torch max "
                f"|diff| {entry['export_check']['max_abs_difference']}")

    return stage_command(argv, "training.export.propagation", __doc__.splitlines()[0], "propagation", add, report,
                         _CheckedSettings, present=lambda info: "prop_key" in info.get("stages", {}),
                         settings_help="JSON object of PropagationSettings values (working_min, working_max, "
                                       "long_term_max, prototypes, empty_stop, min_pixels, roi_scale, roi_margin_mm, "
                                       "roi_shrink, containment), applied over the bundle's propagation settings (the "
                                       "others stay; defaults where the bundle has none) and checked before anything "
                                       "is written")


class _CheckedSettings:
    """stage_command's early check of ``--settings``: known names and each value on its own (the pair
    working_min < working_max only once merged over the bundle's settings, before writing)."""
    __name__ = "PropagationSettings"

    @staticmethod
    def from_dict(values):
        settings_from_dict(PropagationSettings, values, "propagation")
        PropagationSettings.check_values(values or {})


if __name__ == "__main__":
    sys.exit(main())
