"""Run configs checked before anything trains: unknown keys, types and ranges (``RULES``), the device, data
paths, interaction and defect settings, the network section; and what may change when a run resumes.

Shared by the four training loops (training/loops/click_net.py and its siblings); each gives its own DEFAULTS and network
check. A problem is an InputError naming the key, raised before the run folder is touched.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from IMISSegmentLib.errors import InputError

from training.data.datasets import BALANCE, HELD_OUT_MODES
from training.data.defects import DefectConfig
from training.loops.interaction import InteractionConfig

#: settings that may change when a run resumes from its checkpoint (the step budget may only grow)
RESUMABLE = ("steps", "log_every", "checkpoint_every", "validation.every", "num_threads", "device")

# (kind, low, high, low_open, none_allowed): kind "int" (a whole number) or "number" (finite); a bound of
# None is open; low_open: the value must be above ``low``. Applied where the loop's DEFAULTS have the key.
RULES = {
    "steps": ("int", 1, None, False, False), "batch_size": ("int", 1, None, False, False),
    "checkpoint_every": ("int", 1, None, False, False), "log_every": ("int", 1, None, False, False),
    "seed": ("int", 0, None, False, False), "num_threads": ("int", 1, None, False, False),
    "input_size": ("int", 1, None, False, False),
    "input_gamma": ("number", 0.2, 5.0, False, False),
    # lr 0 is allowed: the weights stay (e.g. only batch norm recalibrated; Testing/test_training_smoke.py uses it)
    "optimizer.lr": ("number", 0, None, False, False), "optimizer.weight_decay": ("number", 0, None, False, False),
    "optimizer.warmup_steps": ("int", 0, None, False, False), "optimizer.min_lr_ratio": ("number", 0, 1, False, False),
    "optimizer.grad_clip": ("number", 0, None, False, False),
    "data.min_area": ("int", 0, None, False, False), "data.phantom_fraction": ("number", 0, 1, False, False),
    "data.phantom_pool": ("int", 0, None, False, False), "data.propagated_fraction": ("number", 0, 1, False, False),
    "data.defective_fraction": ("number", 0, 1, False, False), "data.length": ("int", 2, None, False, False),
    "data.end_fraction": ("number", 0, 1, False, False), "data.synthetic_pairs": ("int", 0, None, False, False),
    "data.round_fraction": ("number", 0, 1, False, False), "data.anchor_fraction": ("number", 0, 1, False, False),
    "validation.phantoms": ("int", 0, None, False, False), "validation.clicks": ("int", 1, None, False, False),
    "validation.every": ("int", 0, None, False, False), "validation.batch_size": ("int", 1, None, False, False),
    "validation.real_samples": ("int", 1, None, False, False), "validation.sequences": ("int", 1, None, False, False),
    "validation.length": ("int", 2, None, False, False), "validation.share": ("number", 0, 1, False, False),
    "validation.threshold": ("number", 0, 1, False, False),
    "loss.bce_weight": ("number", 0, None, False, False), "loss.dice_weight": ("number", 0, None, False, False),
    "batchnorm.freeze_from": ("int", 0, None, False, True), "batchnorm.recalibrate_batches": ("int", 1, None, False, False),
    "batchnorm.recalibrate_rounds": ("int", 0, None, False, True),
    "text.dim": ("int", 1, None, False, False), "text.film_from": ("int", 0, None, False, False),
    "interaction.max_rounds": ("int", 0, None, False, False), "interaction.box_prob": ("number", 0, 1, False, False),
    "interaction.box_jitter_px": ("int", 0, None, False, False),
    "interaction.center_click_prob": ("number", 0, 1, False, False),
    "interaction.confirm_click_prob": ("number", 0, 1, False, False),
    "interaction.focal_weight": ("number", 0, None, False, False), "interaction.dice_weight": ("number", 0, None, False, False),
    "interaction.focal_gamma": ("number", 0, None, False, False),
    "interaction.click_radius_px": ("number", 0, None, True, False),
}
#: [low, high] settings of the data section: (what the numbers are, whether low must be above 0 rather than at least 0)
RANGES = {"propagated_offset_mm": ("in mm", False),
          "roi_scale": ("(the ROI's side over the structure's extent)", True)}
# settings that take one of a few names
CHOICES = {"data.balance": BALANCE, "validation.held_out": HELD_OUT_MODES}
# sections with their own checks (not walked against the defaults' keys)
OPEN_SECTIONS = ("network", "interaction", "data.defects", "data.zoom", "data.structure_weights", "modes")
#: settings of more than one type: (types, what the message says)
EITHER = {"data.sides": ((bool, list), "true, false or a list of category names")}
_TYPES = {str: "a string", bool: "true or false", list: "a list", dict: "a section (JSON object)"}


def _show(value) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_value(path: str, value, rule) -> None:
    kind, low, high, low_open, none_allowed = rule
    if value is None and none_allowed:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        ok = is_number and (isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()))
    else:
        ok = is_number and math.isfinite(value)
    ok = ok and not (low is not None and (value <= low if low_open else value < low)) \
        and not (high is not None and value > high)
    if not ok:
        if low is not None and high is not None:
            bounds = f" in {low}..{high}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low}"
        else:
            bounds = ""
        what = ("a whole number" if kind == "int" else "a finite number") + bounds + (" or null" if none_allowed else "")
        raise InputError(f"config: {path} must be {what}, got {_show(value)}")


def _check_range(path: str, value, what: str, low_open: bool) -> None:
    """InputError unless ``value`` (None: not set) is [low, high] of finite numbers, 0 < / <= low <= high."""
    if value is None:
        return
    numbers = (isinstance(value, list) and len(value) == 2
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not (numbers and (0 < value[0] if low_open else 0 <= value[0]) and value[0] <= value[1]):
        raise InputError(f"config: {path} must be [low, high] {what} with 0 {'<' if low_open else '<='} low <= high, "
                         f"got {_show(value)}")


def _walk(values: dict, defaults: dict, prefix: str = "") -> None:
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        where = f"{prefix[:-1]} " if prefix else ""
        raise InputError(f"config: unknown {where}settings {unknown} (known: {sorted(defaults)})")
    for key, value in values.items():
        path, default = prefix + key, defaults[key]
        if path in RULES:
            _check_value(path, value, RULES[path])
        elif path in EITHER:
            if not isinstance(value, EITHER[path][0]):
                raise InputError(f"config: {path} must be {EITHER[path][1]}, got {_show(value)}")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise InputError(f"config: {path} must be {_TYPES[dict]}, got {_show(value)}")
            if path not in OPEN_SECTIONS:
                _walk(value, default, path + ".")
        elif default is not None and type(default) in _TYPES and not isinstance(value, type(default)):
            raise InputError(f"config: {path} must be {_TYPES[type(default)]}, got {_show(value)}")


def _check_strings(path: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return
    raise InputError(f"config: {path} must be a path or a list of paths, got {_show(value)}")


def _check_network(config: dict, make_config, name: str) -> dict:
    """``config["network"]`` checked against the network module's ``DEFAULT_CONFIG`` keys and its
    ``make_config``; returns the full network config."""
    values = config.get("network") or {}
    known = set(sys.modules[make_config.__module__].DEFAULT_CONFIG)
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"config: unknown network settings {unknown} ({name}; known: {sorted(known)})")
    try:
        return make_config(values)
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(f"config: network: {error}") from None


def check_config(config: dict, defaults: dict, network=None) -> dict:
    """Check a run config against its loop's ``defaults`` before anything runs: unknown keys (top level and
    in each section), types, ranges (RULES), the device, data paths, interaction and defect settings;
    ``network(config)`` checks the network section. InputError (one line naming the key) on the first
    problem; returns ``config``."""
    if not isinstance(config, dict):
        raise InputError(f"config must be a mapping, got {_show(config)}")
    _walk(config, defaults)
    device = config.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"config: device must be 'auto', 'cpu' or 'cuda', got {_show(device)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(f"config: device is 'cuda' but this torch ({torch.__version__}) sees no CUDA GPU; "
                         "use 'cpu' or 'auto'")
    data = config.get("data", {})
    for path, value in (("data.roots", data.get("roots")), ("validation.roots", config.get("validation", {}).get("roots"))):
        if value is not None:
            _check_strings(path, value)
            for root in [value] if isinstance(value, str) else value:   # a folder, or a training.data.pack_data file
                if not (Path(root).is_dir() or (Path(root).is_file() and str(root).endswith(".npz"))):
                    raise InputError(f"config: {path}: {root} is neither a folder of cases nor a .npz file "
                                     f"written by python -m training.data.pack_data")
    if "axes" in data:
        axes = data["axes"]
        if not isinstance(axes, list) or not axes or any(a not in (0, 1, 2) or isinstance(a, bool) for a in axes):
            raise InputError(f"config: data.axes must be a non-empty list of 0, 1, 2, got {_show(axes)}")
    for path, choices in CHOICES.items():
        section, key = path.split(".")
        value = config.get(section, {}).get(key)
        if key in config.get(section, {}) and value not in choices:
            raise InputError(f"config: {path} must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
    for path in ("exclude_cases", "include_cases"):
        for section in ("data", "validation"):
            value = config.get(section, {}).get(path)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise InputError(f"config: {section}.{path} must be a list of case names, got {_show(value)}")
    for key, (what, low_open) in RANGES.items():
        _check_range(f"data.{key}", data.get(key), what, low_open)
    if "defects" in data:
        try:
            DefectConfig.from_dict(data["defects"])
        except (ValueError, TypeError) as error:
            raise InputError(f"config: data.defects: {error}") from None
    if "interaction" in config:
        for key, value in config["interaction"].items():
            if f"interaction.{key}" in RULES:
                _check_value(f"interaction.{key}", value, RULES[f"interaction.{key}"])
        try:
            InteractionConfig.from_dict(config["interaction"])
        except (ValueError, TypeError) as error:
            raise InputError(f"config: interaction: {error}") from None
    for key in ("init_from", "init_bundle"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise InputError(f"config: {key} must be a path, got {_show(config[key])}")
    if network is not None:
        network(config)
    return config


def _differences(saved, new, prefix: str = "") -> list:
    """Dotted keys whose values differ (keys only one side has are skipped: a default added or dropped since)."""
    out = []
    for key in sorted(set(saved) & set(new)):
        a, b = saved[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict) and prefix + key not in ("network", "modes"):   # whole
            out += _differences(a, b, f"{prefix}{key}.")
        elif json.loads(json.dumps(a, default=str)) != json.loads(json.dumps(b, default=str)):
            out.append(f"{prefix}{key}")
    return out


def _get(config: dict, path: str):
    for key in path.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config


def check_resume(saved: dict, config: dict, checkpoint_path: Path, derived=()) -> list:
    """Refuse (InputError) to resume from ``saved`` with a ``config`` that differs from the checkpoint's
    beyond RESUMABLE, or whose ``steps`` is below the checkpoint's step; ``derived``: top-level keys the
    loop computes itself. Returns the resumable keys that change (for the log)."""
    old = {k: v for k, v in saved["config"].items() if k not in derived}
    new = {k: v for k, v in config.items() if k not in derived}
    foreign = sorted(set(old) - set(new))
    hint = f"use --no-resume to start over in {checkpoint_path.parent} (its checkpoint is then replaced), or another --out"
    if foreign:
        raise InputError(f"{checkpoint_path}: its config has settings this training loop does not know ({foreign}): "
                         f"a run of another training loop? {hint}")
    changed = _differences(old, new)
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        shown = "; ".join(f"{k}: {_show(_get(old, k))} -> {_show(_get(new, k))}" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise InputError(f"cannot resume {checkpoint_path} (step {saved['step']}) with another config: {shown}{more}. "
                         f"Only {', '.join(RESUMABLE)} may change on resume; {hint}")
    if int(config["steps"]) < int(saved["step"]):
        raise InputError(f"cannot resume {checkpoint_path}: steps {config['steps']} is below the checkpoint's step "
                         f"{saved['step']}; give --steps >= {saved['step']} (the step budget may only grow past it), "
                         "or --no-resume")
    return [k for k in changed if k in RESUMABLE]
