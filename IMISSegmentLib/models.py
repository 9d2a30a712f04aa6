"""Model bundles and ``load_model``.

A bundle is a folder with ``inference_info.json``::

    {"format_version": 1, "name": "...", "version": "...", "engine": "onnx",
     "capabilities": ["click", "box"], "input_size": [256, 256], "normalization": "IMISSegmentLib.normalize",
     "stages": {"slice": {"file": "slice.onnx", "sha256": "<hex>"}}}

Loading checks every stage file's sha256 and fails with a message naming the file. The default bundle
lives in ``Resources/models/default``; until one ships, ``load_model()`` gives the Grow from Seeds peer.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import InputError
from .engines.registry import create_engine, engine_names

BUNDLE_INFO = "inference_info.json"
BUNDLE_FORMAT_VERSION = 1
FALLBACK_ENGINE = "growcut"
_BUNDLE_ENGINES: dict = {}   # bundle "engine" field -> callable(bundle_dir, info, device) -> Engine


def default_bundle_dir() -> Path:
    """``$IMIS_SEGMENT_MODEL`` if set, else Resources/models/default beside the package."""
    env = os.environ.get("IMIS_SEGMENT_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "Resources" / "models" / "default"


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
    if info.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise InputError(f"{info_path}: format_version {info.get('format_version')!r} is not supported "
                         f"(expected {BUNDLE_FORMAT_VERSION})")
    stages = info.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise InputError(f"{info_path}: 'stages' must name at least one stage file")
    for stage, entry in stages.items():
        path = bundle_dir / entry.get("file", "")
        if not path.is_file():
            raise InputError(f"{info_path}: file of stage '{stage}' is missing: {path}")
        actual = sha256_of(path)
        if actual != entry.get("sha256"):
            raise InputError(f"{path}: checksum mismatch (sha256 {actual}, bundle expects {entry.get('sha256')}); "
                             "the file is corrupt or was replaced; reinstall the bundle")
    return info


def register_bundle_engine(kind: str, factory) -> None:
    """Make bundles whose ``engine`` field is ``kind`` loadable (called by the modules that run them)."""
    _BUNDLE_ENGINES[kind] = factory


def load_model(path=None, device: str = "auto"):
    """The engine behind a session: a bundle folder, an engine name ("growcut", "litemedsam"), or the default.

    With no argument: the default bundle if one is installed, otherwise Grow from Seeds.
    """
    if path is None:
        bundle = default_bundle_dir()
        if not (bundle / BUNDLE_INFO).is_file():
            return create_engine(FALLBACK_ENGINE)
        path = bundle
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
