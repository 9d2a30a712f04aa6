"""Settings dataclasses read from dicts (a bundle's ``inference_info.json``, a training config): one place
that rejects unknown keys, naming them and the known ones; and one place that reads a command-line option's
JSON object of settings."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Optional

from .errors import InputError


def settings_from_dict(cls, values: Optional[dict], what: str):
    """``cls(**values)`` for a dataclass ``cls``; a ``values`` that is not an object (a dict) or None, and unknown
    keys, raise :class:`InputError` ("<what> settings must be an object ...", "unknown <what> settings [...]
    (known: [...])"). Range checks stay with each class."""
    if values is not None and not isinstance(values, dict):
        raise InputError(f"{what} settings must be an object of their names and values, got {values!r}")
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {what} settings {unknown} (known: {sorted(known)})")
    return cls(**values)


def settings_json(text: str, option: str) -> dict:
    """A command-line option's value ``text`` read as a JSON object of settings; :class:`InputError` naming
    ``option`` when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{option} is not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object, got {text!r}")
    return value
