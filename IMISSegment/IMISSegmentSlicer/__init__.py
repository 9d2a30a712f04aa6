"""Slicer-side glue of IMISSegment: MRML nodes <-> ``IMISSegmentLib.InteractiveSession``.

Importable with only vtk, the ``slicer`` MRML classes (3D Slicer or the ``slicer-core`` wheel) and
IMISSegmentLib: no Qt, no ``slicer.app``. The module widget and the Segment Editor effect stay thin
and call into :class:`IMISSegmentMRMLLogic`; the batch script and the tests drive it headless.

The names below are loaded on first use (PEP 562): importing the package, or its ``dependencies`` module,
which asks the user before installing what IMIS needs, imports nothing that a stock Slicer may lack.
"""
import importlib

_EXPORTS = {
    "IMISSegmentMRMLLogic": "logic", "PropagationJob": "logic",
    "array_from_volume_node": "mrml", "ensure_segmentation_converters": "mrml", "export_segment_array": "mrml",
    "ijk_to_ras_matrix": "mrml", "load_volume_node": "mrml", "ras_to_ijk": "mrml",
    "session_axis_from_ijk_normal": "mrml", "spacing_kji": "mrml", "volume_from_node": "mrml",
    "volume_node_from_volume": "mrml",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
