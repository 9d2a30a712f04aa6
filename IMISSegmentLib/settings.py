"""Settings dataclasses read from dicts (a bundle's ``inference_info.json``, a training config): one place
that rejects unknown keys, naming them and the known ones."""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

from .errors import InputError


def settings_from_dict(cls, values: Optional[dict], what: str):
    """``cls(**values)`` for a dataclass ``cls``; unknown keys raise :class:`InputError` ("unknown <what>
    settings [...] (known: [...])"). Range checks stay with each class."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {what} settings {unknown} (known: {sorted(known)})")
    return cls(**values)
