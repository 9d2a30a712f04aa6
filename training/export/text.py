"""Put a text-trained 2D network (training/loops/text.py) into a model bundle.

    python -m training.export.text --checkpoint runs/text_net/checkpoint.pt --bundle Resources/models/default

The bundle's slice stage is replaced: ``click_net.onnx`` gains the ``text`` input ((B, 2) int64: category,
side; (0, 0) = no text) and ``click_net.pt`` the text stage's weights; the bundle gains
``text_vocabulary.json`` (the vocabulary with the categories the run trained marked) and a ``text`` entry
(the vocabulary file with its sha256, the prompt format, the run). Capabilities gain "text". Without text
the network computes what the bundle's did (the click weights were frozen): the export checks that on the
bundle's own network (max abs logit difference) as well as onnxruntime against torch. The bundle is rebuilt
in a staging folder and swapped in; a failure leaves it untouched.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from IMISSegmentLib.engines.torch_engine import network_from_bundle
from IMISSegmentLib.models import read_bundle_info, sha256_of
from IMISSegmentLib.networks.click_net import ClickNet
from IMISSegmentLib.text import VOCABULARY_FILE, Vocabulary

from training.export.bundle import load_checkpoint_network, network_entry, rebuild_bundle, run_record, stage_command
from training.export.click_net import ONNX_FILE, STATE_FILE, write_click_network


def no_text_difference(network: ClickNet, bundle: Path, info: dict, size: int, seed: int = 0) -> float:
    """Max abs logit difference, without text, between ``network`` and the bundle's current network."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 1, size, size, generator=generator)
    prompts = (torch.rand(2, 4, size, size, generator=generator) > 0.9).float()
    with torch.inference_mode():
        return float((network(image, prompts) - network_from_bundle(bundle, info)(image, prompts)).abs().max())


def add_text(network: ClickNet, bundle: Path, trained: dict, training: dict | None = None, runs=(),
             tolerance: float = 1e-3) -> dict:
    """Rebuild ``bundle`` with ``network`` (a ClickNet with a text stage) as its slice stage."""
    if network.text is None:
        raise ValueError("the checkpoint's network has no text stage (train it with training.loops.text)")
    # a network trained before later categories were appended knows the categories below its embedding's rows
    rows = network.text.category.num_embeddings
    vocabulary = Vocabulary.default().limited(rows).with_training(trained)
    unknown = sorted(set(trained) - set(vocabulary.categories))
    if unknown:
        raise ValueError(f"the network's text embedding has {rows} rows, but it was trained on categories {unknown}")

    def edit(staging: Path, info: dict) -> None:
        size = int(info.get("input_size", [256])[0])
        unchanged = no_text_difference(network, bundle, info, size)
        if not unchanged < tolerance:
            raise RuntimeError(f"without text the network differs from the bundle's by {unchanged:.3g}: the checkpoint "
                               f"was not trained on top of this bundle's click weights")
        difference = write_click_network(network, staging, ONNX_FILE, STATE_FILE, size, tolerance)
        (staging / VOCABULARY_FILE).write_text(json.dumps(vocabulary.to_dict(), indent=1) + "\n")
        info["stages"]["slice"].update(file=ONNX_FILE, sha256=sha256_of(staging / ONNX_FILE),
                                       state_dict={"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)})
        info["network"] = network_entry(network)
        info["inputs"]["text"] = "(B, 2) int64 text prompt: category id, side id (text_vocabulary.json); 0, 0 = none"
        info["export_check"] = {"max_abs_logit_difference": difference, "no_text_vs_previous": unchanged}
        info["capabilities"] = sorted(set(info.get("capabilities", [])) | {"text"})
        info["description"] = "IMISSegment 2D interactive network (clicks, box, text, previous mask)"
        localiser = {k: v for k, v in (info.get("text") or {}).items() if k.startswith(("localiser", "localised"))}
        if localiser.get("localiser"):   # the localiser stays, if the new vocabulary still sends names to its maps
            from training.export.text_localiser import unmapped_codes
            bad = unmapped_codes(localiser["localiser"].get("codes") or [], vocabulary)
            if bad:
                raise ValueError(f"{bundle}: its text localiser maps {', '.join(bad)}, which this text stage was not "
                                 f"trained on; train the text stage on them too, or re-export the localiser")
        info["text"] = {"vocabulary": {"file": VOCABULARY_FILE, "sha256": sha256_of(staging / VOCABULARY_FILE)},
                        "trained_categories": vocabulary.names(trained_only=True), **localiser}   # the localiser stays
        if training:
            info["text"]["training"] = training

    return rebuild_bundle(bundle, edit, runs)


def main(argv=None) -> int:
    def add(args, settings):
        read_bundle_info(args.bundle)
        network, state = load_checkpoint_network(args.checkpoint)
        config = state.get("config") or {}
        trained = {int(k): bool(v) for k, v in (config.get("trained_categories") or {}).items()}
        if not trained:
            raise ValueError(f"{args.checkpoint}: the run config records no trained categories")
        return add_text(network, Path(args.bundle), trained, run_record(args.checkpoint, state, "modes"), args.runs)

    def report(args, info, verb):
        check = info["export_check"]
        return (f"{verb} text prompts in {args.bundle}: {', '.join(info['text']['trained_categories'])}; onnx vs torch max |diff| "
                f"{check['max_abs_logit_difference']:.2g}, without text vs before {check['no_text_vs_previous']:.2g}")

    return stage_command(argv, "training.export.text", __doc__.splitlines()[0], "text", add, report,
                         bundle_help="the bundle whose click weights the run started from",
                         present=lambda info: "text" in info)


if __name__ == "__main__":
    sys.exit(main())
