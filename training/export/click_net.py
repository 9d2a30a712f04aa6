"""Export a trained click network to a model bundle (IMISSegmentLib/models.py's format).

    python -m training.export.click_net --checkpoint runs/click_net/checkpoint.pt --out Resources/models/default

The bundle folder gets:

* ``click_net.onnx``: the network, ONNX opset 17 (run by onnxruntime >= 1.17 on CPU and CUDA), inputs
  ``image`` (B, 1, S, S) and ``prompts`` (B, 4, S, S), output ``logits`` (B, 1, S, S), batch axis dynamic;
* ``click_net.pt``: the same weights as a torch state dict (for :class:`TorchClickEngine`);
* ``training/<run>/``: with ``--runs``, each run's config.json, train.log and metrics.jsonl;
* ``inference_info.json``: format_version 1, name, version, engine "onnx", capabilities, input_size,
  normalization, the network class and config, and both files with their sha256.

The export checks itself: onnxruntime's logits must match torch's on a random input (max abs difference
below ``tolerance``), otherwise nothing is written. The bundle is written into a temporary sibling folder
and moved into place, so an existing bundle is never left half-written.

``--out`` must be a new path, an empty folder, or a bundle (a folder with ``inference_info.json``). A bundle
that holds more than this export writes (the propagation, MRF, correction or text stages, settings such as
``fusion`` or ``zoom``, other files, other runs' records) is replaced only with ``--replace-bundle``: without
it the export lists what would be dropped and writes nothing. To update the other stages of a bundle use
the stage commands (``training.export.propagation``, ``.mrf``, ``.correction``, ``.text``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.models import BUNDLE_FORMAT_VERSION, BUNDLE_INFO, read_bundle_info, sha256_of
from IMISSegmentLib.networks.click_net import ClickNet
from IMISSegmentLib.prompts import CLICK_RADIUS_PX

from training.export.bundle import (OPSET, RUN_RECORDS, _check_onnx, copy_run_records, load_checkpoint_network,
                                    network_entry, replace_folder, run_command, run_record, staging_folder)

ONNX_FILE = "click_net.onnx"
STATE_FILE = "click_net.pt"


def network_inputs(network: ClickNet) -> list:
    """The graph's input names: image, prompts, and text for networks with a text stage."""
    return ["image", "prompts"] + (["text"] if network.text is not None else [])


def export_onnx(network: ClickNet, path, size: int = 256, opset: int = OPSET) -> None:
    """Write ``network`` as ONNX with a dynamic batch axis (TorchScript-based exporter: needs no onnxscript)."""
    network = network.eval().cpu()
    names = network_inputs(network)
    example = (torch.zeros(1, 1, size, size), torch.zeros(1, 4, size, size), torch.zeros(1, 2, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the legacy exporter announces its deprecation
        torch.onnx.export(network, example[:len(names)], str(path), input_names=names, output_names=["logits"],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={**{name: {0: "batch"} for name in names}, "logits": {0: "batch"}})


def onnx_torch_difference(network: ClickNet, onnx_path, size: int = 256, batch: int = 2, seed: int = 0) -> float:
    """Max abs logit difference between torch and onnxruntime (CPU) on a random input of ``batch`` slices."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=generator)
    prompts = (torch.rand(batch, 4, size, size, generator=generator) > 0.9).float()
    inputs = [image, prompts]
    if network.text is not None:   # one sample without text, the others with random codes
        text = torch.stack([torch.randint(0, network.text.category.num_embeddings, (batch,), generator=generator),
                            torch.randint(0, network.text.side.num_embeddings, (batch,), generator=generator)], 1)
        text[0] = 0
        inputs.append(text)
    with torch.inference_mode():
        expected = network.eval()(*inputs).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {name: value.numpy() for name, value in zip(network_inputs(network), inputs)})[0]
    return float(np.max(np.abs(actual - expected)))


def write_click_network(network: ClickNet, folder: Path, onnx_file: str, state_file: str, size: int,
                        tolerance: float = 1e-3) -> float:
    """Write ``network`` into ``folder`` as ONNX (checked) and as a torch state dict; returns the max abs logit
    difference onnxruntime vs torch, RuntimeError when it is not below ``tolerance``."""
    export_onnx(network, folder / onnx_file, size)
    _check_onnx(folder / onnx_file)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, folder / state_file)
    difference = onnx_torch_difference(network, folder / onnx_file, size)
    if not difference < tolerance:
        raise RuntimeError(f"export check failed: onnxruntime and torch logits differ by {difference:.3g} "
                           f"(tolerance {tolerance:g})")
    return difference


def export_bundle(network: ClickNet, out_dir, name: str = "imis-clicknet", version: str = "0.0.0",
                  size: int = 256, description: str = "", training: dict | None = None,
                  tolerance: float = 1e-3, runs=(), replace_bundle: bool = False) -> dict:
    """Write a bundle for ``network`` to ``out_dir`` and return its inference_info.

    ``out_dir`` must be absent, an empty folder, or a bundle; a bundle holding more than this export writes
    (other stages, settings entries, files) is replaced only with ``replace_bundle`` (:func:`check_export_target`:
    ValueError listing what would be dropped, nothing written).
    ``runs``: training run folders whose records (``RUN_RECORDS``) are copied into ``training/<run>/``
    inside the bundle, so the shipped model carries its configs, logs and validation metrics."""
    out_dir = Path(out_dir)
    if size % network.stride:
        raise ValueError(f"input size {size} must be a multiple of the network's stride {network.stride}")
    check_export_target(out_dir, replace_bundle, runs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out_dir)
    try:
        difference = write_click_network(network, staging, ONNX_FILE, STATE_FILE, size, tolerance)
        info = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "name": name,
            "version": version,
            "description": description or "IMISSegment 2D interactive network (clicks, box, previous mask)",
            "engine": "onnx",
            "capabilities": ["click", "box", "propagate"],
            "input_size": [size, size],
            "normalization": "IMISSegmentLib.normalize",
            "click_radius_px": CLICK_RADIUS_PX,
            "slice_aspect": "physical",
            "inputs": {"image": "(B, 1, S, S) slice normalised 0..1",
                       "prompts": "(B, 4, S, S) positive disks, negative disks, box, previous mask / probability"},
            "outputs": {"logits": "(B, 1, S, S) mask logits"},
            "network": network_entry(network),
            "stages": {"slice": {"file": ONNX_FILE, "sha256": sha256_of(staging / ONNX_FILE), "opset": OPSET,
                                 "state_dict": {"file": STATE_FILE, "sha256": sha256_of(staging / STATE_FILE)}}},
            "export_check": {"max_abs_logit_difference": difference},
            "torch_version": torch.__version__,
        }
        if training:
            info["training"] = training
        records = copy_run_records(runs, staging / "training")
        if records:
            info["training_records"] = records
        (staging / BUNDLE_INFO).write_text(json.dumps(info, indent=1) + "\n")
        read_bundle_info(staging)   # the bundle must load as written
        replace_folder(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return info


#: the keys of inference_info.json that :func:`export_bundle` writes


EXPORT_KEYS = ("format_version", "name", "version", "description", "engine", "capabilities", "input_size",
               "normalization", "click_radius_px", "slice_aspect", "inputs", "outputs", "network", "stages",
               "export_check", "torch_version", "training", "training_records")


def _listing(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def export_drops(out_dir: Path, info: dict, runs=()) -> dict:
    """What writing a fresh bundle over the bundle ``out_dir`` (its parsed ``info``) would drop:
    {"stages": [...], "entries": [...], "files": [...]} (files: relative paths, ``training/<run>/`` for a run's
    records; the files of the dropped stages are not repeated)."""
    stages = info.get("stages") if isinstance(info.get("stages"), dict) else {}
    dropped_stages = [name for name in stages if name != "slice"]
    entries = [key for key in info if key not in EXPORT_KEYS]
    written = {ONNX_FILE, STATE_FILE, BUNDLE_INFO}
    for run in runs or ():
        written |= {f"training/{Path(run).name}/{name}" for name in RUN_RECORDS}
    stage_files = set()
    for name in dropped_stages:
        entry = stages.get(name) if isinstance(stages.get(name), dict) else {}
        stage_files.add(str(entry.get("file")))
        if isinstance(entry.get("state_dict"), dict):
            stage_files.add(str(entry["state_dict"].get("file")))
    files = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(out_dir).as_posix()
        if relative in written or relative in stage_files:
            continue
        parts = relative.split("/")
        shown = "/".join(parts[:2]) + "/" if parts[0] == "training" and len(parts) > 2 else relative
        if shown not in files:
            files.append(shown)
    return {"stages": dropped_stages, "entries": entries, "files": files}


def check_export_target(out_dir: Path, replace_bundle: bool = False, runs=()) -> None:
    """ValueError (nothing written) unless ``out_dir`` is absent, an empty folder, or a model bundle (a folder
    with inference_info.json) that holds nothing the export would drop or ``replace_bundle`` is set. A file or a
    folder that is not a bundle (a run folder, say) is never replaced."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ValueError(f"{out_dir} is a file, not a bundle folder: nothing was written (choose a new folder for "
                         "--out)")
    if not out_dir.exists():
        return
    contents = sorted(path.name for path in out_dir.iterdir())
    if not contents:
        return
    if BUNDLE_INFO not in contents:
        raise ValueError(f"{out_dir} is a folder that is not a model bundle (no {BUNDLE_INFO}; it holds "
                         f"{_listing(contents, 8)}): nothing was written (choose a new or empty folder for --out)")
    if replace_bundle:
        return
    try:
        info = json.loads((out_dir / BUNDLE_INFO).read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise ValueError(f"{out_dir / BUNDLE_INFO} cannot be read ({error}): nothing was written (--replace-bundle "
                         "replaces the folder anyway)") from None
    drops = export_drops(out_dir, info, runs)
    parts = [f"{kind} {_listing(names)}" for kind, names in drops.items() if names]
    if parts:
        raise ValueError(f"{out_dir} is a bundle with parts this export would drop: {'; '.join(parts)}. Nothing was "
                         "written: pass --replace-bundle to replace the whole bundle, or --out a new folder (the "
                         "stage commands training.export.propagation, .mrf, .correction and .text "
                         "add stages to a bundle)")


def export_checkpoint(checkpoint, out_dir, name: str | None = None, version: str | None = None, runs=(),
                      replace_bundle: bool = False) -> dict:
    check_export_target(Path(out_dir), replace_bundle, runs)   # before the checkpoint is read
    network, state = load_checkpoint_network(checkpoint)
    config = state.get("config") or {}
    training = run_record(checkpoint, state)
    return export_bundle(network, out_dir, name=name or config.get("bundle_name") or "imis-clicknet",
                         version=version or config.get("bundle_version") or f"0.0.{state.get('step', 0)}",
                         size=int(config.get("input_size", 256)), training=training, runs=runs,
                         replace_bundle=replace_bundle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.export.click_net", description=__doc__.splitlines()[0],
        epilog="--out must be a new path, an empty folder or a model bundle; a file or another folder is never "
               "touched. A bundle holding more than this export writes (the propagation, MRF, correction or text "
               "stages, settings entries, other files or run records) is refused with a list of what would be "
               "dropped, unless --replace-bundle is given. The stage commands (training.export.propagation, "
               ".mrf, .correction, .text) add stages to a bundle.")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (checkpoint.pt of a run)")
    parser.add_argument("--out", required=True,
                        help="bundle folder to write: a new path, an empty folder, or a bundle to replace")
    parser.add_argument("--replace-bundle", action="store_true",
                        help="replace the bundle at --out as a whole, dropping its other stages, settings, files and "
                             "run records (without it the export refuses a bundle that has any)")
    parser.add_argument("--name", default=None, help="bundle name (default: the run config's bundle_name)")
    parser.add_argument("--version", default=None, help="bundle version (default: 0.0.<step>)")
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                        help="run folders whose config.json, train.log and metrics.jsonl go into the bundle's training/")
    args = parser.parse_args(argv)

    def action() -> str:
        info = export_checkpoint(args.checkpoint, args.out, args.name, args.version, args.runs, args.replace_bundle)
        return (f"wrote {args.out}: {info['name']} {info['version']}, {info['network']['parameters']} parameters, "
                f"onnx vs torch max |diff| {info['export_check']['max_abs_logit_difference']:.2e}")
    return run_command("training.export.click_net", action)


if __name__ == "__main__":
    sys.exit(main())
