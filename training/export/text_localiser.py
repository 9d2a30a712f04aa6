"""Add a trained text localiser (training/loops/text_localiser.py) to a model bundle.

    python -m training.export.text_localiser --checkpoint runs/text_localiser_lite0/checkpoint.pt \
        --bundle Resources/models/default [--settings '{"threshold": 0.0, "min_part_share": 0.0}']

The bundle must already take text (``training.export.text``: its vocabulary, the click network's text stage),
every structure the localiser maps must be a trained category of that vocabulary (a sided map, one whose sides
it trains), and the run must have trained at the bundle's input size. The bundle gains the
``text_localiser`` stage (``text_localiser.onnx``: ``image`` (B, 1, S, S) -> ``logits`` (B, C, S, S), batch
dynamic; ``text_localiser.pt``; the network's class and config) and ``text.localiser`` (the codes of the C
maps and the settings of IMISSegmentLib/engines/text_localiser.py; ``--settings`` over the bundle's current
ones). onnxruntime must match torch on random slices; the bundle is rebuilt in a staging folder and swapped in,
so a failure leaves it untouched.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.engines.onnx_engine import bundle_input_size
from IMISSegmentLib.engines.text_localiser import LOCALISER_STAGE, LocaliserSettings
from IMISSegmentLib.models import read_bundle_info, sha256_of
from IMISSegmentLib.networks.text_localiser import TextLocaliser
from IMISSegmentLib.text import load_bundle_vocabulary

from training.export.bundle import (OPSET, _check_onnx, load_checkpoint_network, network_entry, rebuild_bundle,
                                    run_record, stage_command)

ONNX_FILE = f"{LOCALISER_STAGE}.onnx"
STATE_FILE = f"{LOCALISER_STAGE}.pt"


class _Overrides:
    """--settings check for stage_command: the settings of LocaliserSettings other than codes."""

    @staticmethod
    def from_dict(values: dict):
        if not isinstance(values, dict):
            raise ValueError(f"expected a JSON object, got {values!r}")
        if "codes" in values:
            raise ValueError("codes come from the checkpoint, not --settings")
        return LocaliserSettings.from_entry({"codes": [[1, 0]], **values}, "--settings")


def export_localiser(network: TextLocaliser, path: Path, size: int, seed: int = 0) -> float:
    """Write the ONNX graph; returns the max abs logit difference onnxruntime vs torch (2 random slices)."""
    import onnxruntime

    network = network.eval().cpu()
    image = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding")   # the exporter's notes on the stem's slicing
        torch.onnx.export(network, (image[:1],), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    _check_onnx(path)
    with torch.inference_mode():
        expected = network(image).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.max(np.abs(session.run(None, {"image": image.numpy()})[0] - expected)))


def unmapped_codes(codes, vocabulary) -> list:
    """The codes (as "[category, side] name") a vocabulary cannot send to a localiser map: categories it does not
    mark trained, sides it does not tell apart."""
    bad = []
    for category, side in codes:
        known = vocabulary.categories.get(int(category))
        if known is None or not known.trained or (side and not known.trained_sides):
            name = vocabulary.code_name(category, side) if known is not None else "unknown category"
            bad.append(f"[{category}, {side}] {name}")
    return bad


def add_localiser(network: TextLocaliser, bundle: Path, training: dict | None = None, runs=(),
                  overrides: dict | None = None, tolerance: float = 1e-3, trained_size: int | None = None) -> dict:
    """Rebuild ``bundle`` with the localiser stage (replacing an earlier one); returns the new info.
    ``trained_size``: the run's input size, which must be the bundle's."""
    bundle = Path(bundle)
    info = read_bundle_info(bundle)
    if "text" not in info:
        raise ValueError(f"{bundle}: the bundle takes no text yet; add the text stage first (training.export.text)")
    vocabulary = load_bundle_vocabulary(bundle, info)
    bad = unmapped_codes(network.config["codes"], vocabulary)
    if bad:
        raise ValueError(f"{bundle}: the localiser maps {', '.join(bad)}, which the bundle's vocabulary does not mark "
                         f"trained (with sides); export the text stage trained on them first")

    def edit(staging: Path, info: dict) -> None:
        size = bundle_input_size(info)
        if trained_size is not None and int(trained_size) != size:
            raise ValueError(f"the localiser was trained at input size {trained_size}, the bundle runs at {size}")
        if size % network.stride:
            raise ValueError(f"the bundle's input size {size} is not a multiple of the localiser's stride "
                             f"{network.stride}")
        current = {k: v for k, v in ((info.get("text") or {}).get("localiser") or {}).items() if k != "codes"}
        settings = LocaliserSettings.from_entry({**current, **(overrides or {}), "codes": network.config["codes"]},
                                                "--settings")
        difference = export_localiser(network, staging / ONNX_FILE, size)
        if not difference < tolerance:
            raise RuntimeError(f"export check failed: onnxruntime and torch differ by {difference:.3g} "
                               f"(tolerance {tolerance:g})")
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / STATE_FILE)
        info["stages"][LOCALISER_STAGE] = {
            "file": ONNX_FILE, "sha256": sha256_of(staging / ONNX_FILE), "opset": OPSET,
            "state_dict": {"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)},
            "network": network_entry(network), "export_check": {"max_abs_logit_difference": difference}}
        entry = asdict(settings)
        entry["codes"] = [list(code) for code in settings.codes]
        info["text"]["localiser"] = entry
        info["text"]["localised_names"] = [vocabulary.code_name(c, s) for c, s in settings.codes]
        if training:
            info["text"]["localiser_training"] = training

    return rebuild_bundle(bundle, edit, runs)


def main(argv=None) -> int:
    def add(args, overrides):
        network, state = load_checkpoint_network(args.checkpoint, TextLocaliser)
        return add_localiser(network, Path(args.bundle), run_record(args.checkpoint, state, "loss"), args.runs,
                             overrides, trained_size=(state.get("config") or {}).get("input_size"))

    def report(args, info, verb):
        check = info["stages"][LOCALISER_STAGE]["export_check"]
        return (f"{verb} the text localiser in {args.bundle}: {', '.join(info['text']['localised_names'])}; "
                f"onnx vs torch max |diff| {check['max_abs_logit_difference']:.2g}")

    return stage_command(argv, "training.export.text_localiser", __doc__.splitlines()[0], "text localiser", add,
                         report, settings_class=_Overrides,
                         settings_help="JSON object of text.localiser settings (threshold, min_part_share)",
                         present=lambda info: LOCALISER_STAGE in info.get("stages", {}))


if __name__ == "__main__":
    sys.exit(main())
