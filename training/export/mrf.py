"""Add a trained MRF quality network to a model bundle.

    python -m training.export.mrf --checkpoint runs/mrf_net/checkpoint.pt --bundle Resources/models/default

The bundle gains one ONNX graph (opset 17; ``mrf_quality.onnx``: ``inputs`` (B, 3, S, S), ``context`` (B, 2)
-> ``logits`` (B, 1), batch size dynamic), the torch state dict (``mrf_net.pt``), a ``fusion`` entry (network class and
config, the fusion settings with the decision threshold, the export check) and, with ``--runs``, the run
records under ``training/``. ``--settings`` values are applied over the bundle's fusion settings (the others
stay, as with ``training.export.fusion_settings``); a bundle without fusion settings starts from the defaults. onnxruntime must match torch on random inputs; the bundle is rebuilt in a
staging folder and swapped in, so a failure leaves the old bundle untouched.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.fusion import FusionSettings
from IMISSegmentLib.fusion.quality import FUSION_STAGE
from IMISSegmentLib.models import sha256_of
from IMISSegmentLib.networks.mrf_net import MrfNet

from training.export.bundle import (OPSET, _check_onnx, load_checkpoint_network, network_entry, rebuild_bundle, run_record,
                                    stage_command)

STATE_FILE = "mrf_net.pt"


def export_quality_stage(network: MrfNet, path: Path, seed: int = 0) -> float:
    """Write the ONNX graph; returns the max abs logit difference onnxruntime vs torch (batch of 5)."""
    import onnxruntime

    network = network.eval().cpu()
    size = int(network.config["input_size"])
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(5, 3, size, size, generator=generator)
    example[:, 1:] = (example[:, 1:] > 0.5).float()
    context = 3 * torch.rand(5, int(network.config["context"]), generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(network, (example, context), str(path), input_names=["inputs", "context"],
                          output_names=["logits"],
                          dynamic_axes={"inputs": {0: "batch"}, "context": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    _check_onnx(path)
    with torch.inference_mode():
        expected = network(example, context).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"inputs": example.numpy(), "context": context.numpy()})[0]
    return float(np.max(np.abs(actual - expected)))


def add_fusion(network: MrfNet, bundle: Path, settings: FusionSettings | None = None, training: dict | None = None,
               runs=(), tolerance: float = 1e-3, overrides: dict | None = None) -> dict:
    """Rebuild ``bundle`` with the MRF stage added (replacing an earlier one); returns the new info.

    The fusion settings written: ``overrides`` (a dict, {} included) applied over the bundle's current
    ``fusion.settings`` (the defaults when it has none); else ``settings`` as given (the defaults for None)."""
    def edit(staging: Path, info: dict) -> None:
        chosen = settings or FusionSettings()
        if overrides is not None:
            current = (info.get("fusion") or {}).get("settings") or {}
            try:
                chosen = FusionSettings.from_dict({**current, **overrides})
            except (TypeError, ValueError) as error:
                raise ValueError(f"{bundle}: fusion settings {json.dumps({**current, **overrides})}: {error}") from None
        difference = export_quality_stage(network, staging / f"{FUSION_STAGE}.onnx")
        if not difference < tolerance:
            raise RuntimeError(f"export check failed: onnxruntime and torch differ by {difference:.3g} "
                               f"(tolerance {tolerance:g})")
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / STATE_FILE)
        info["stages"][FUSION_STAGE] = {
            "file": f"{FUSION_STAGE}.onnx", "sha256": sha256_of(staging / f"{FUSION_STAGE}.onnx"), "opset": OPSET,
            "state_dict": {"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)}}
        info["fusion"] = {
            "network": network_entry(network),
            "settings": asdict(chosen),
            "export_check": {"max_abs_logit_difference": difference},
        }
        if training:
            info["fusion"]["training"] = training
        info["capabilities"] = sorted(set(info.get("capabilities", [])) | {"fuse"})

    return rebuild_bundle(bundle, edit, runs)


def main(argv=None) -> int:
    def add(args, settings):
        network, state = load_checkpoint_network(args.checkpoint, MrfNet)
        return add_fusion(network, Path(args.bundle), None, run_record(args.checkpoint, state), args.runs,
                          overrides=settings)

    def report(args, info, verb):
        fusion = info["fusion"]
        chosen = fusion["settings"]
        return (f"{verb} multi-round fusion in {args.bundle}: {fusion['network']['parameters']} parameters, threshold "
                f"{chosen['threshold']}, fusion {'on' if chosen['enabled'] else 'off'}, network "
                f"{'on' if chosen['network'] else 'off (fusion.settings.network is false)'}, onnx vs torch max |diff| "
                f"{fusion['export_check']['max_abs_logit_difference']:.2g}")

    return stage_command(argv, "training.export.mrf", __doc__.splitlines()[0], "MRF", add, report, FusionSettings,
                         present=lambda info: FUSION_STAGE in info.get("stages", {}),
                         settings_help="JSON object of FusionSettings values, applied over the bundle's fusion "
                                       "settings (the others stay; defaults where the bundle has none), e.g. "
                                       "'{\"threshold\": 0.5, \"network\": true}'")


if __name__ == "__main__":
    sys.exit(main())
