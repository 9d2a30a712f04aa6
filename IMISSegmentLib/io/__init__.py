"""Volume and segmentation I/O (SimpleITK): images in, label maps and Slicer .seg.nrrd out."""
from .volume import Volume
from .readers import read_image, read_label, read_labelmap_names
from .writers import check_label_geometry, check_segment_names, write_label, write_segmentation

__all__ = ["Volume", "check_label_geometry", "check_segment_names", "read_image", "read_label", "read_labelmap_names",
           "write_label", "write_segmentation"]
