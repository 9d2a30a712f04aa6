"""Write label maps (NIfTI / NRRD / MHA) and Slicer ``.seg.nrrd`` segmentations on an image's exact geometry.

Every write is atomic: the data go to a hidden temporary file beside the target, which then replaces
the target in one ``os.replace``; on failure the temporary file is removed and any old target is untouched.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_path
from .volume import Volume, ijk_to_lps, to_sitk

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SEGMENTATION_SUFFIX = ".seg.nrrd"
# Used in order for segments given no colour (RGB 0..1); cycles when there are more segments.
PALETTE = (
    (0.902, 0.098, 0.294), (0.235, 0.706, 0.294), (0.0, 0.51, 0.784), (1.0, 0.882, 0.098),
    (0.961, 0.51, 0.188), (0.569, 0.118, 0.706), (0.275, 0.941, 0.941), (0.941, 0.196, 0.902),
    (0.737, 0.965, 0.047), (0.98, 0.745, 0.745), (0.0, 0.502, 0.502), (0.667, 0.431, 0.157),
)


def _atomic_write(path: Path, suffix: str, write: Callable[[str], None]) -> None:
    """Call ``write(temp_name)`` and move the result onto ``path``; the temp name keeps ``suffix``
    because the writers pick the format from the file name."""
    with atomic_path(path, suffix) as temp:
        write(str(temp))


def _checked_labelmap(labelmap: np.ndarray, reference: Volume, path: Path) -> np.ndarray:
    labelmap = np.asarray(labelmap)
    if labelmap.shape != reference.shape:
        raise InputError(f"{path}: label map shape {labelmap.shape} does not match the image's {reference.shape} (K, J, I)")
    if labelmap.dtype == bool:
        return labelmap.astype(np.uint8)
    if not np.issubdtype(labelmap.dtype, np.integer):
        raise InputError(f"{path}: label map must hold integers, got dtype {labelmap.dtype}")
    return labelmap


def _check_nifti_direction(reference: Volume, path: Path) -> None:
    """NIfTI stores only rotations and flips; ITK would silently write a sheared direction as another one.

    The tolerance is ITK's own: it coerces directions whose columns are further than about 1e-4 from orthonormal.
    """
    direction = np.asarray(reference.direction, dtype=float).reshape(3, 3)
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-4:
        columns = ", ".join("(" + ", ".join(f"{v:.4g}" for v in column) + ")" for column in direction.T)
        raise InputError(f"{path}: NIfTI cannot store this volume's direction: its axes {columns} are not "
                         f"orthonormal (a sheared grid); write .nrrd or .seg.nrrd instead, which keep it")


def check_label_geometry(path, reference: Volume) -> None:
    """InputError when the label file format of ``path`` cannot store ``reference``'s geometry (NIfTI: a sheared
    direction), so callers can tell before long work."""
    if Path(path).name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_direction(reference, Path(path))


def write_label(path, labelmap: np.ndarray, reference: Volume) -> None:
    """Write ``labelmap`` ((K, J, I), integers) as NIfTI / NRRD / MHA with ``reference``'s geometry."""
    path = Path(path)
    name = path.name.lower()
    suffix = next((s for s in LABEL_SUFFIXES if name.endswith(s)), None)
    if suffix is None or name.endswith(SEGMENTATION_SUFFIX):
        raise InputError(f"{path}: a label map must be written as {', '.join(LABEL_SUFFIXES)} "
                         f"(use write_segmentation for {SEGMENTATION_SUFFIX})")
    labelmap = _checked_labelmap(labelmap, reference, path)
    check_label_geometry(path, reference)
    image = to_sitk(reference, labelmap)
    _atomic_write(path, suffix, lambda temp: sitk.WriteImage(image, temp, True))


def _show(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


def check_segment_names(segments) -> dict[int, str]:
    """``{value: name}`` from a dict, or from a list of names for label values 1, 2, ...; names are stripped.

    Names must be printable ASCII: the .seg.nrrd header is written by pynrrd, which stores ASCII only
    (and its reader drops other bytes), and a newline would start a new header field.
    """
    if isinstance(segments, dict):
        table = dict(segments)
    elif isinstance(segments, (list, tuple)):
        table = {i + 1: name for i, name in enumerate(segments)}
    else:
        got = f"the string {_show(segments)}" if isinstance(segments, str) else f"a {type(segments).__name__}"
        raise InputError(f"segments must be a dict {{label value: name}} or a list of names, got {got}"
                         + (f"; for one segment use [{_show(segments)}]" if isinstance(segments, str) else ""))
    names = {}
    for value, name in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value <= 65535:
            raise InputError(f"segment label value {value!r} must be an integer in 1 .. 65535")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"segment {value}: name {name!r} must be a non-empty string")
        name = name.strip()
        if not name.isascii():
            ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().strip()
            hint = f", e.g. {ascii_name!r}" if ascii_name.isprintable() and ascii_name else ""
            raise InputError(f"segment {value}: name {_show(name)} has non-ASCII characters; a .seg.nrrd segment "
                             f"name must be printable ASCII{hint}")
        if not name.isprintable():
            raise InputError(f"segment {value}: name {_show(name)} has control characters (a newline, tab, ...); "
                             f"a .seg.nrrd segment name must be printable ASCII")
        names[int(value)] = name
    return dict(sorted(names.items()))


def _color(value: int, color) -> list[float]:
    """RGB in 0..1; a colour with any component above 1 is read as 0..255."""
    rgb = np.asarray(color, dtype=float)
    if rgb.shape != (3,) or not np.all((rgb >= 0) & (rgb <= 255)):
        raise InputError(f"segment {value}: colour {color!r} must be three numbers in 0..1 (or 0..255)")
    return [float(c) for c in (rgb / 255.0 if rgb.max() > 1 else rgb)]


def write_segmentation(path, labelmap: np.ndarray, reference: Volume, segments, colors: dict | None = None) -> None:
    """Write a Slicer ``.seg.nrrd``: one segment per label value in ``segments`` (kept even when empty).

    ``segments`` is ``{value: name}`` or a list of names for values 1, 2, ...; ``colors`` is
    ``{value: (r, g, b)}``, missing ones coming from :data:`PALETTE`. The file stores the voxels in
    (i, j, k) order with ``ijkToLPS`` = :func:`ijk_to_lps` (reference), as slicerio reads it.
    """
    import slicerio   # here, not at the top: inside Slicer it is installed on first use, after the user agrees

    path = Path(path)
    if not path.name.lower().endswith(SEGMENTATION_SUFFIX):
        raise InputError(f"{path}: a Slicer segmentation file name must end with {SEGMENTATION_SUFFIX}")
    labelmap = _checked_labelmap(labelmap, reference, path)
    table = check_segment_names(segments)
    colors = colors or {}
    present = set(np.unique(labelmap).tolist()) - {0}
    unnamed = sorted(present - set(table))
    if unnamed:
        raise InputError(f"{path}: label values {unnamed} in the label map have no segment name")
    voxels = labelmap.astype(np.uint8 if max(table, default=0) <= 255 else np.uint16).T  # (K, J, I) -> (I, J, K)
    entries = []
    for index, (value, name) in enumerate(table.items()):
        where = np.nonzero(voxels == value)
        extent = [int(v) for axis in where for v in (axis.min(), axis.max())] if where[0].size else [0, -1] * 3
        entries.append({
            "id": f"Segment_{value}", "name": name, "labelValue": value, "layer": 0, "extent": extent,
            "color": _color(value, colors[value]) if value in colors else list(PALETTE[index % len(PALETTE)]),
            "colorAutoGenerated": value not in colors,
        })
    segmentation = {
        "voxels": voxels, "ijkToLPS": ijk_to_lps(reference), "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap",
        "segments": entries,
    }
    _atomic_write(path, SEGMENTATION_SUFFIX, lambda temp: slicerio.write_segmentation(temp, segmentation))
