"""MRML geometry and I/O helpers: volume nodes <-> (K, J, I) arrays, IJK / RAS, segments <-> arrays.

Conventions:
* arrays are (K, J, I), as ``slicer.util.arrayFromVolume`` gives them and as the session expects;
  voxel indices in Slicer's own calls (``xyToIjk``, ``GetIJKToRASMatrix``) are (i, j, k);
* Slicer places volumes in RAS, files and SimpleITK in LPS: the two differ by negating x and y.

Nothing here needs Qt or ``slicer.app``; where the Slicer application is present (``load_volume_node``)
it is used, otherwise the MRML classes are driven directly (``slicer-core`` wheel).
"""
from __future__ import annotations

import numpy as np

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])   # its own inverse


def _slicer():
    import slicer
    return slicer


def _vtk():
    import vtk
    return vtk


def has_slicer_app() -> bool:
    """True inside the 3D Slicer application (not with the slicer-core wheel)."""
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None and getattr(slicer, "mrmlScene", None) is not None


def ensure_segmentation_converters() -> None:
    """Register the segmentation representation converters if nobody did (the Slicer application does
    it at start-up; with the slicer-core wheel no one does, and segments cannot even be created)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) > 0:
        return
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                 slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule):
        factory.RegisterConverterRule(rule())


# -- volume nodes ---------------------------------------------------------------------------------
def array_from_volume_node(volume_node) -> np.ndarray:
    """The voxels of a scalar volume node as a (K, J, I) numpy view (no copy)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("the volume node has no image data; load a volume first")
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components per "
                         "voxel; IMIS segments scalar (single-component) volumes only")
    array = _slicer().util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise InputError(f"volume '{volume_node.GetName()}' is not a 3D scalar volume (array shape {array.shape})")
    return array


def spacing_kji(volume_node) -> tuple:
    """Voxel spacing per array axis (sk, sj, si) in mm."""
    return tuple(float(s) for s in reversed(volume_node.GetSpacing()))


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    """4 x 4 numpy matrix taking (i, j, k, 1) to RAS mm (the node's own, parent transforms not applied)."""
    matrix = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ras_to_ijk(volume_node, ras) -> tuple:
    """Nearest voxel (i, j, k) of an RAS point (mm)."""
    ijk = np.linalg.solve(ijk_to_ras_matrix(volume_node), np.array([*map(float, ras), 1.0]))[:3]
    return tuple(int(v) for v in np.floor(ijk + 0.5))


def session_axis_from_ijk_normal(normal_ijk) -> int:
    """Session axis (0: k-slices, 1: j-slices, 2: i-slices) of a view whose normal, in IJK, is given."""
    normal = np.abs(np.asarray(normal_ijk, dtype=float))
    if normal.shape != (3,) or not np.isfinite(normal).all() or normal.max() == 0:
        raise InputError(f"view normal must be three finite numbers, not all zero, got {normal_ijk!r}")
    return 2 - int(np.argmax(normal))


def volume_from_node(volume_node) -> Volume:
    """The node as an ``IMISSegmentLib.io.Volume`` in LPS (what the writers expect): same voxels, same place."""
    directions = [[0.0] * 3 for _ in range(3)]
    volume_node.GetIJKToRASDirections(directions)
    direction_lps = LPS_TO_RAS @ np.array(directions)           # columns: i, j, k axes
    origin_lps = LPS_TO_RAS @ np.array(volume_node.GetOrigin())
    return Volume(array_from_volume_node(volume_node), spacing_kji(volume_node),
                  tuple(float(v) for v in origin_lps), tuple(float(v) for v in direction_lps.ravel()),
                  source=volume_node.GetName() or "")


def volume_node_from_volume(volume: Volume, scene, name: str = "Volume"):
    """A new scalar volume node in ``scene`` holding ``volume`` (LPS geometry turned into RAS)."""
    slicer, vtk = _slicer(), _vtk()
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    array = np.ascontiguousarray(volume.array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    from vtk.util import numpy_support
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                                               array_type=numpy_support.get_vtk_array_type(array.dtype)))
    node.SetAndObserveImageData(image)
    node.SetSpacing(*volume.spacing_xyz)
    node.SetOrigin(*(LPS_TO_RAS @ np.asarray(volume.origin, float)))
    direction_ras = LPS_TO_RAS @ np.asarray(volume.direction, float).reshape(3, 3)
    node.SetIJKToRASDirections([list(row) for row in direction_ras])
    return node


def load_volume_node(path, scene=None, name=None):
    """Load an image file as a scalar volume node.

    In the Slicer application: ``slicer.util.loadVolume`` (into ``slicer.mrmlScene``). Headless: MRML's
    own volume reader (``vtkMRMLVolumeArchetypeStorageNode``, the one Slicer uses) into ``scene``, or
    IMISSegmentLib's reader when that cannot read the file. Geometry is kept exactly; nothing is centred.
    """
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    slicer = _slicer()
    if has_slicer_app() and (scene is None or scene is slicer.mrmlScene):
        try:
            return slicer.util.loadVolume(str(path), {"name": name or path.name.split(".")[0], "show": False})
        except RuntimeError as error:
            raise InputError(f"{path}: Slicer could not load the volume ({error})") from None
    if scene is None:
        raise InputError("a MRML scene is needed to load a volume outside the Slicer application")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name or path.name.split(".")[0])
    scene.AddNode(node)
    if path.is_file():
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        ok = storage.ReadData(node)
        scene.RemoveNode(storage)
        if ok and node.GetImageData() is not None and node.GetImageData().GetNumberOfScalarComponents() == 1:
            return node
    scene.RemoveNode(node)
    from IMISSegmentLib.io import read_image
    return volume_node_from_volume(read_image(path), scene, name or path.name.split(".")[0])


# -- segments -------------------------------------------------------------------------------------
def oriented_image(volume_node, region, values: np.ndarray):
    """A ``vtkOrientedImageData`` on the volume's grid covering ``region`` (tuple of 3 slices, k, j, i)
    and holding ``values`` (uint8, shape of the region); its extent is the region in (i, j, k)."""
    slicer, vtk = _slicer(), _vtk()
    from vtk.util import numpy_support
    k, j, i = region
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetGeometryFromImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(values.shape)[...] = values
    return image


def export_segment_array(segmentation_node, segment_id: str, volume_node, region=None) -> np.ndarray:
    """A segment as uint8 0/1 (K, J, I) on the volume's grid (resampled nearest-neighbour if needed), or only
    ``region`` of it (a tuple of 3 slices, k, j, i); voxels the segment does not reach are 0.

    Works without ``slicer.mrmlScene`` / ``slicer.modules`` (unlike ``slicer.util.arrayFromSegmentBinaryLabelmap``).
    """
    slicer = _slicer()
    from vtk.util import numpy_support
    if region is None:
        region = tuple(slice(0, n) for n in array_from_volume_node(volume_node).shape)
    shape = tuple(r.stop - r.start for r in region)
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap):
        raise InputError(f"segment '{segment_id}' has no binary labelmap in '{segmentation_node.GetName()}'")
    reference = oriented_image(volume_node, region, np.zeros(shape, np.uint8))
    resampled = slicer.vtkOrientedImageData()
    # not padded: the output is the reference's extent even where the segment reaches past the volume
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False)
    scalars = resampled.GetPointData().GetScalars()
    if scalars is None or resampled.GetExtent() != reference.GetExtent():   # an empty segment
        return np.zeros(shape, np.uint8)
    array = numpy_support.vtk_to_numpy(scalars).reshape(shape)
    # segments share labelmap layers: the layer comes back whole, the segment is its label value
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return (array == label).astype(np.uint8)


def export_other_segments(segmentation_node, volume_node, region, skip: str):
    """Yields (segment ID, bool array of ``region``) for every segment but ``skip`` that has voxels in
    ``region``, on the volume's grid, one at a time (a large region and many segments must not all be held
    at once). Reads each shared labelmap layer once and only over ``region`` (a segmentation may hold a
    hundred segments; a click must stay fast)."""
    slicer = _slicer()
    from vtk.util import numpy_support
    segmentation = segmentation_node.GetSegmentation()
    shape = tuple(r.stop - r.start for r in region)
    reference = oriented_image(volume_node, region, np.zeros(shape, np.uint8))
    for layer in range(segmentation.GetNumberOfLayers()):
        ids = [i for i in segmentation.GetSegmentIDsForLayer(layer) if i != skip]
        data = segmentation.GetLayerDataObject(layer)
        if not ids or not isinstance(data, slicer.vtkOrientedImageData):
            continue
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            data, reference, resampled, False, False)
        scalars = resampled.GetPointData().GetScalars()
        if scalars is None or resampled.GetExtent() != reference.GetExtent():
            continue
        array = numpy_support.vtk_to_numpy(scalars).reshape(shape)
        for segment_id in ids:
            mask = array == segmentation.GetSegment(segment_id).GetLabelValue()
            if mask.any():
                yield segment_id, mask
