"""Read images (files or DICOM folders), label maps and label-name tables, rejecting unusable input early.

Images are returned exactly as stored (no reorientation, no resampling). A label map is brought onto its
image's grid: returned as is when the grids agree, resampled nearest-neighbour when it covers the same
physical box on another grid (flipped, permuted or other spacing), rejected otherwise.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .nifti_check import is_nifti2, nifti2_as_nifti1, scan_nifti
from .volume import Volume, to_sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} "
                     f"or a folder holding a DICOM series")


def _sitk_error(exc: Exception) -> str:
    """The useful last line of a (multi-line, C++-flavoured) SimpleITK exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith("Reason:") and "File cannot be read" in lines[-2]:
        # MetaIO's "Reason" is a stale errno ("No such file or directory" for a truncated .mha)
        return "its voxel data are truncated, or its data file is missing"
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_itk():
    """Silence ITK's multi-line warnings (no series found, missing slices, ...): our checks say it in one line."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _as_path(path, what: str) -> Path:
    """``path`` as a Path; '' would be the current folder, a number a TypeError deep in pathlib."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"expected the path of {what}, got {type(path).__name__} {path!r}")
    if not str(path).strip():
        raise InputError(f"expected the path of {what}, got an empty path")
    return Path(path)


def _read_file(path: Path) -> tuple[sitk.Image, tuple[int, int]]:
    """The image, and for NIfTI the (NaN, inf) counts of the file's own voxel bytes ((0, 0) otherwise)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if suffix not in (".nii", ".nii.gz") or not is_nifti2(path):
            raise InputError(f"{path}: cannot read the image, the file is unreadable or corrupt "
                             f"({_sitk_error(exc)})") from None
        image = _read_nifti2(path, exc)
    return image, scan_nifti(path) if suffix in (".nii", ".nii.gz") else (0, 0)


def _read_nifti2(path: Path, error: RuntimeError) -> sitk.Image:
    """A NIfTI-2 file this SimpleITK cannot read itself, read through a NIfTI-1 copy of it (same voxels, same
    geometry fields; :func:`~.nifti_check.nifti2_as_nifti1`)."""
    with tempfile.TemporaryDirectory(prefix="imis-nifti2-") as folder:
        copy = Path(folder) / "image.nii"
        nifti2_as_nifti1(path, copy)
        try:
            image = sitk.ReadImage(str(copy))
        except RuntimeError:
            raise InputError(f"{path}: cannot read the NIfTI-2 image, the file is unreadable or corrupt "
                             f"({_sitk_error(error)})") from None
        image.GetSize()   # the pixels are in memory before the copy goes
    return image


def _check_slice_positions(reader: sitk.ImageSeriesReader, files, where: str, unread: list[str]) -> None:
    """Reject a series whose slices are not evenly spaced (a missing, unreadable or duplicate slice, or a
    deliberately variable spacing, which ITK would put on one even grid with only a warning).

    Each gap between neighbouring slices (ImagePositionPatient along the slice normal) may differ from the
    median gap by max(20 % of it, 0.11 mm): above what positions rounded to 0.1 mm in real headers give, well
    below the doubled gap of a missing slice.
    """
    if len(files) < 2:
        return
    try:
        tags = np.array([[float(v) for key in ("0020|0032", "0020|0037")
                          for v in reader.GetMetaData(i, key).split("\\")] for i in range(len(files))])
    except (RuntimeError, ValueError):
        return  # some slice has no usable position or orientation: nothing to check against
    if tags.shape[1] != 9:
        return
    if np.abs(tags[:, 3:] - tags[0, 3:]).max() > 1e-3:
        raise InputError(f"{where}: the slices do not all have the same orientation (ImageOrientationPatient)")
    positions = tags[:, :3] @ np.cross(tags[0, 3:6], tags[0, 6:9])
    gaps = np.abs(np.diff(positions))
    typical = float(np.median(gaps))
    duplicate = gaps <= max(0.01, 0.05 * typical)
    uneven = np.abs(gaps - typical) > max(0.2 * typical, 0.11)
    if not duplicate.any() and not uneven.any():
        return
    names = [Path(f).name for f in files]
    if duplicate.any():
        i = int(np.argmax(duplicate))
        problem = f"slices {i} and {i + 1} ({names[i]}, {names[i + 1]}) are at the same position (duplicate slices?)"
    else:
        i = int(np.argmax(np.abs(gaps - typical)))
        problem = (f"slice positions are not evenly spaced: {typical:.3f} mm steps but {gaps[i]:.3f} mm between "
                   f"slices {i} and {i + 1} ({names[i]}, {names[i + 1]})"
                   + (" (a missing slice?)" if gaps[i] > 1.5 * typical else " (a variable slice spacing?)"))
    if unread:
        problem += f"; files in the folder that look like DICOM but could not be read: {', '.join(unread[:5])}"
    raise InputError(f"{where}: {problem}")


def _unread_dicom_files(folder: Path, listed) -> list[str]:
    """Names of files in ``folder`` that start like DICOM (``DICM`` at byte 128) but are in no series GDCM
    could read: corrupt slices, or non-image objects (a DICOMDIR, a structure set)."""
    unread = []
    for path in sorted(folder.iterdir()):
        if path.name not in listed and path.is_file():
            with contextlib.suppress(OSError), open(path, "rb") as file:
                if file.read(132)[128:] == b"DICM":
                    unread.append(path.name)
    return unread


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, dict]:
    """Read the largest DICOM series in ``folder``, slices sorted by GDCM on position, not by file name."""
    reader = sitk.ImageSeriesReader()
    series = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid)
              for uid in reader.GetGDCMSeriesIDs(str(folder))}
    if not series:
        raise InputError(f"{folder}: no DICOM series found in the folder")
    uid = max(series, key=lambda u: len(series[u]))
    reader.SetFileNames(series[uid])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series {uid} ({_sitk_error(exc)})") from None
    unread = _unread_dicom_files(folder, {Path(f).name for files in series.values() for f in files})
    _check_slice_positions(reader, series[uid], f"{folder}: DICOM series {uid}", unread)
    metadata = {"series_uid": uid, "dicom_files": len(series[uid])}
    if reader.HasMetaDataKey(0, "0008|0060"):
        metadata["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    others = {u: len(files) for u, files in series.items() if u != uid}
    if others:
        metadata["other_series"] = others
    if unread:
        metadata["skipped_files"] = unread  # DICOM-looking files in no readable series
    return image, metadata


def _non_finite(array: np.ndarray, stored: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """(NaN, inf) voxel counts of a float image; ``stored`` are those of a NIfTI file's bytes, which ITK reads
    as 0 (the array's own come from scaling, e.g. a huge scl_slope)."""
    if not np.issubdtype(array.dtype, np.floating):
        return stored
    return (max(stored[0], int(np.count_nonzero(np.isnan(array)))),
            max(stored[1], int(np.count_nonzero(np.isinf(array)))))


def _check_layout(image: sitk.Image, path: Path) -> None:
    size = "x".join(str(s) for s in image.GetSize())
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D volume, got a {image.GetDimension()}D image of size {size}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected one value per voxel, got a {image.GetPixelIDTypeAsString()} "
                         f"with {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if 0 in image.GetSize():
        raise InputError(f"{path}: the image has zero voxels (size {size})")


def read_image(path) -> Volume:
    """Read a 3D scalar image from a file or a DICOM series folder; geometry as SimpleITK reports it."""
    path = _as_path(path, "an image file or a DICOM folder")
    with _quiet_itk():
        if path.is_dir():
            (image, metadata), stored = _read_dicom_folder(path), (0, 0)
        else:
            (image, stored), metadata = _read_file(path), {}
    _check_layout(image, path)
    metadata["pixel_type"] = image.GetPixelIDTypeAsString()
    array = sitk.GetArrayFromImage(image)
    nan, inf = _non_finite(array, stored)
    if nan or inf:
        raise InputError(f"{path}: {nan + inf} of {array.size} voxels are not finite ({nan} NaN, {inf} inf)")
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(f"{path}: constant volume, all {array.size} voxels equal {low}")
    return Volume(array, tuple(reversed(image.GetSpacing())), tuple(image.GetOrigin()),
                  tuple(image.GetDirection()), str(path), metadata)


def _same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    return (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-4, atol=0)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-3)
            and np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-4))


def _same_box(image: sitk.Image, reference: sitk.Image) -> bool:
    """Whether ``image`` covers the reference's physical box (voxel edges), measured in reference voxels.

    The allowance per reference axis is half a voxel of the coarser grid along it, so a label on another
    spacing whose extent rounds differently is accepted while a one-voxel crop or shift is not.
    """
    size = np.array(image.GetSize())
    corners = np.array([[(c >> a & 1) * size[a] - 0.5 for a in range(3)] for c in range(8)])
    in_ref = np.array([reference.TransformPhysicalPointToContinuousIndex(
        image.TransformContinuousIndexToPhysicalPoint(corner.tolist())) for corner in corners])
    ref_dir = np.array(reference.GetDirection()).reshape(3, 3)
    img_axes = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    voxel_in_ref = np.abs(ref_dir.T @ img_axes).sum(axis=1) / np.array(reference.GetSpacing())
    allowance = 0.5 * np.maximum(1.0, voxel_in_ref) + 1e-3
    ref_size = np.array(reference.GetSize())
    return bool(np.all(np.abs(in_ref.min(axis=0) + 0.5) < allowance)
                and np.all(np.abs(in_ref.max(axis=0) - (ref_size - 0.5)) < allowance))


def _describe(image: sitk.Image) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    return f"size {size} (i, j, k) spacing {spacing} mm"


def read_label(path, reference: Volume) -> np.ndarray:
    """Read a label map and return it as uint8/uint16 in ``reference``'s (K, J, I) grid."""
    path = _as_path(path, "a label map file")
    with _quiet_itk():
        label, stored = _read_file(path)
    _check_layout(label, path)
    values = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(values.dtype, np.integer):
        if any(_non_finite(values, stored)) or not np.array_equal(values, np.round(values)):
            raise InputError(f"{path}: label values must be whole numbers, got {label.GetPixelIDTypeAsString()} "
                             f"values that are fractional, NaN or inf")
    low, high = values.min(), values.max()
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise InputError(f"{path}: label values must lie in 0 .. 65535, got {low} .. {high}")
    ref_image = to_sitk(reference, np.zeros(reference.shape, np.uint8))
    if not _same_grid(label, ref_image):
        if not _same_box(label, ref_image):
            raise InputError(f"{path}: the label does not cover the image: label {_describe(label)}, "
                             f"image {_describe(ref_image)}")
        label = sitk.Resample(label, ref_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              label.GetPixelID())
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return sitk.GetArrayFromImage(label).astype(dtype)


def read_labelmap_names(path) -> dict[int, str]:
    """Label value -> name from a labels.json, an MSD/nnU-Net v1 ``dataset.json`` ({"1": "liver"}) or an
    nnU-Net v2 one ({"liver": 1}); label 0 (background) is dropped."""
    path = _as_path(path, "a labels JSON file")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: expected a JSON object with a \"labels\" mapping ({exc})") from None
    if not isinstance(table, dict):
        raise InputError(f"{path}: \"labels\" must be a mapping of label value to name")
    names: dict[int, str] = {}
    for key, value in table.items():
        if isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: name -> value
            label, name = value, key
        else:
            try:
                label, name = int(key), value
            except ValueError:
                raise InputError(f"{path}: label entry {key!r}: {value!r} is neither \"value\": \"name\" "
                                 f"nor \"name\": value (region lists are not supported)") from None
        if not isinstance(name, str) or label < 0:
            raise InputError(f"{path}: label entry {key!r}: {value!r} needs a non-negative value and a name")
        if label in names:
            raise InputError(f"{path}: label value {label} appears twice")
        names[label] = name
    names.pop(0, None)
    return dict(sorted(names.items()))
