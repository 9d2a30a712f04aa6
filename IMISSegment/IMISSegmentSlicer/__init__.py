"""Slicer-side glue of IMISSegment: MRML nodes <-> ``IMISSegmentLib.InteractiveSession``.

Importable with only vtk, the ``slicer`` MRML classes (3D Slicer or the ``slicer-core`` wheel) and
IMISSegmentLib: no Qt, no ``slicer.app``. The module widget and the Segment Editor effect stay thin
and call into :class:`IMISSegmentMRMLLogic`; the batch script and the tests drive it headless.
"""
from .mrml import (array_from_volume_node, ensure_segmentation_converters, export_segment_array,
                   ijk_to_ras_matrix, load_volume_node, ras_to_ijk, session_axis_from_ijk_normal,
                   spacing_kji, volume_from_node, volume_node_from_volume)
from .logic import IMISSegmentMRMLLogic, PropagationJob

__all__ = ["IMISSegmentMRMLLogic", "PropagationJob", "array_from_volume_node", "ensure_segmentation_converters",
           "export_segment_array", "ijk_to_ras_matrix", "load_volume_node", "ras_to_ijk",
           "session_axis_from_ijk_normal", "spacing_kji", "volume_from_node", "volume_node_from_volume"]
