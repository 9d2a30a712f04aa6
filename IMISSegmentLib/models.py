"""Model bundles and ``load_model``.

A bundle is a folder with ``inference_info.json``::

    {"format_version": 1, "name": "...", "version": "...", "engine": "onnx",
     "capabilities": ["click", "box"], "input_size": [256, 256], "normalization": "IMISSegmentLib.normalize",
     "stages": {"slice": {"file": "slice.onnx", "sha256": "<hex>"}}}

A stage may also carry its torch weights, ``"state_dict": {"file": "slice.pt", "sha256": "<hex>"}``, so
the torch engine runs the same bundle. Loading checks every stage file's sha256 (and every state_dict's that
is present: an installed copy may leave the torch weights out, as the Slicer extension does, and then only
the torch engine refuses it) and fails with a message naming the file. The default bundle
lives in ``Resources/models/default`` (the 2D click network; training/recipes/click_net_cpu.sh); where no
bundle is installed, ``load_model()`` gives the Grow from Seeds peer.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import InputError
from .engines.registry import create_engine, engine_names
from .shipped import resources_dir

BUNDLE_INFO = "inference_info.json"
BUNDLE_FORMAT_VERSION = 1
FALLBACK_ENGINE = "growcut"
_BUNDLE_ENGINES: dict = {}   # bundle "engine" field -> callable(bundle_dir, info, device) -> Engine


def default_bundle_dir() -> Path:
    """``$IMIS_SEGMENT_MODEL`` if set, else the shipped Resources/models/default (:mod:`.shipped`)."""
    env = os.environ.get("IMIS_SEGMENT_MODEL")
    if env:
        return Path(env)
    return resources_dir() / "models" / "default"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bundle_info(bundle_dir) -> dict:
    """Parse and verify a bundle: the JSON, its format version and every stage file's checksum."""
    bundle_dir = Path(bundle_dir)
    info_path = bundle_dir / BUNDLE_INFO
    if not info_path.is_file():
        raise InputError(f"{bundle_dir} is not a model bundle: {BUNDLE_INFO} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {info_path}: {error}") from None
    if not isinstance(info, dict):
        raise InputError(f"{info_path}: expected a JSON object with the bundle's fields, got a {type(info).__name__}")
    if info.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise InputError(f"{info_path}: format_version {info.get('format_version')!r} is not supported "
                         f"(expected {BUNDLE_FORMAT_VERSION})")
    stages = info.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise InputError(f"{info_path}: 'stages' must name at least one stage file")
    for stage, entry in stages.items():
        _check_stage_file(bundle_dir, info_path, stage, entry)
        weights = entry.get("state_dict")
        if isinstance(weights, dict) and (bundle_dir / str(weights.get("file", ""))).is_file():
            # the stage's torch weights, for the torch engine; an installed copy may leave them out
            _check_stage_file(bundle_dir, info_path, f"{stage}.state_dict", weights)
    text = info.get("text")
    if isinstance(text, dict) and text.get("vocabulary") is not None:   # the text prompt's vocabulary
        _check_stage_file(bundle_dir, info_path, "text.vocabulary", text["vocabulary"])
    return info


def _check_stage_file(bundle_dir: Path, info_path: Path, stage: str, entry) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{info_path}: stage '{stage}' must be an object with 'file' and 'sha256'")
    path = bundle_dir / entry.get("file", "")
    if not entry.get("file") or not path.is_file():
        raise InputError(f"{info_path}: file of stage '{stage}' is missing: {path}")
    actual = sha256_of(path)
    if actual != entry.get("sha256"):
        raise InputError(f"{path}: checksum mismatch (sha256 {actual}, bundle expects {entry.get('sha256')}); "
                         "the file is corrupt or was replaced; reinstall the bundle")


def load_stage_weights(network, bundle_dir, info: dict, stage: str, map_location="cpu"):
    """``network`` with the torch state dict of the bundle's ``stage`` loaded (strict), in eval mode;
    InputError naming the file when the stage has none or it does not fit. torch is imported here only."""
    import torch

    weights = (info.get("stages", {}).get(stage) or {}).get("state_dict")
    if not weights:
        raise InputError(f"{bundle_dir}: the bundle's '{stage}' stage has no torch state_dict file")
    path = Path(bundle_dir) / weights["file"]
    if not path.is_file():
        raise InputError(f"{path}: the torch weights of the bundle's '{stage}' stage are not installed here (the "
                         "Slicer extension ships the ONNX stages alone); use the onnx engine, or the bundle from "
                         "the repository")
    try:
        network.load_state_dict(torch.load(path, map_location=map_location, weights_only=True), strict=True)
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise InputError(f"{path}: cannot load the torch weights ({type(error).__name__}: {error})") from None
    return network.eval()


def register_bundle_engine(kind: str, factory) -> None:
    """Make bundles whose ``engine`` field is ``kind`` loadable (called by the modules that run them)."""
    _BUNDLE_ENGINES[kind] = factory


def _lazy_factory(module_name: str, function_name: str):
    """A bundle factory that imports its engine module (and so onnxruntime / torch) only when called."""
    def factory(bundle_dir, info, device):
        import importlib
        return getattr(importlib.import_module(module_name), function_name)(bundle_dir, info, device)
    return factory


# the click network: onnxruntime (the default engine of shipped bundles) or torch (same bundle layout)
def default_method() -> str:
    """The engine name (``evaluate --methods``) of what ``load_model()`` gives: "clicknet" where a bundle is
    installed (``$IMIS_SEGMENT_MODEL`` or the shipped one), else Grow from Seeds."""
    return "clicknet" if (default_bundle_dir() / BUNDLE_INFO).is_file() else FALLBACK_ENGINE


register_bundle_engine("onnx", _lazy_factory("IMISSegmentLib.engines.onnx_engine", "load_onnx_bundle"))
register_bundle_engine("torch", _lazy_factory("IMISSegmentLib.engines.torch_engine", "load_torch_bundle"))


def load_model(path=None, device: str = "auto"):
    """The engine behind a session: a bundle folder, an engine name ("growcut", "litemedsam"), or the default.

    With no argument: the default bundle if one is installed, otherwise Grow from Seeds.
    """
    if path is None:
        bundle = default_bundle_dir()
        if not (bundle / BUNDLE_INFO).is_file():
            return create_engine(FALLBACK_ENGINE)
        path = bundle
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"model must be an engine name ({', '.join(engine_names())}) or a bundle folder path, "
                         f"got {path!r}")
    if isinstance(path, str) and path in engine_names():
        return create_engine(path)
    bundle_dir = Path(path)
    if not bundle_dir.exists():
        raise InputError(f"model '{path}' is neither an engine ({', '.join(engine_names())}) nor an existing bundle folder")
    info = read_bundle_info(bundle_dir)
    kind = info.get("engine")
    if kind not in _BUNDLE_ENGINES:
        raise InputError(f"{bundle_dir}: bundle engine '{kind}' is not supported by this version of IMISSegment "
                         f"(supported: {', '.join(_BUNDLE_ENGINES) or 'none yet'})")
    return _BUNDLE_ENGINES[kind](bundle_dir, info, device)
