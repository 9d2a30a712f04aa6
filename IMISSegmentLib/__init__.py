"""IMISSegment core: interactive segmentation of CT / MR volumes, importable without Slicer, torch or onnxruntime.

    import IMISSegmentLib as imis
    model = imis.load_model()
    s = imis.InteractiveSession(model)
    s.set_volume(array_kji, spacing=(sk, sj, si))
    s.add_click((k, j, i), positive=True, axis=0)
    mask = s.result
"""
from .errors import CancelledError, EngineUnavailableError, InputError, UnknownTextError
from .models import load_model
from .normalize import normalize_intensity
from .session import InteractiveSession, PropagationUpdate, SliceUpdate

__version__ = "0.1.0"

__all__ = ["CancelledError", "EngineUnavailableError", "InputError", "InteractiveSession", "PropagationUpdate",
           "SliceUpdate", "UnknownTextError", "load_model", "normalize_intensity", "__version__"]
