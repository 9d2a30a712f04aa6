"""IMISSegment core: interactive segmentation of CT / MR volumes, importable without Slicer, torch or onnxruntime.

    import IMISSegmentLib as imis
    model = imis.load_model()
    s = imis.InteractiveSession(model)
    s.set_volume(array_kji, spacing=(sk, sj, si))
    s.add_click((k, j, i), positive=True, axis=0)
    mask = s.result

The names below are imported on first use, so that importing a submodule (the ``imis-segment`` command starts
with ``IMISSegmentLib.cli``) does not load numpy, scipy and the session first: the command installs its Ctrl-C
handling before any of that (IMISSegmentLib.interrupts).
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CancelledError": ".errors", "EngineUnavailableError": ".errors", "InputError": ".errors",
    "UnknownTextError": ".errors", "load_model": ".models", "normalize_intensity": ".normalize",
    "InteractiveSession": ".session", "PropagationUpdate": ".session", "SliceUpdate": ".session",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
