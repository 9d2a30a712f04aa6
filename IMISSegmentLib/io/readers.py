"""Read images (files or DICOM folders), label maps and label-name tables, rejecting unusable input early.

Images are returned exactly as stored (no reorientation, no resampling). A label map is brought onto its
image's grid: returned as is when the grids agree, resampled nearest-neighbour when it covers the same
physical box on another grid (flipped, permuted or other spacing), rejected otherwise.
"""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
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
    return lines[-1] if lines else type(exc).__name__


def _read_file(path: Path) -> sitk.Image:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    _suffix(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image, the file is unreadable or corrupt ({_sitk_error(exc)})") from None


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
    metadata = {"series_uid": uid, "dicom_files": len(series[uid])}
    if reader.HasMetaDataKey(0, "0008|0060"):
        metadata["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    others = {u: len(files) for u, files in series.items() if u != uid}
    if others:
        metadata["other_series"] = others
    return image, metadata


def _nifti_non_finite(path: Path) -> tuple[int, int]:
    """(NaN, inf) counts in a float NIfTI file's own bytes: ITK's NIfTI reader silently turns both into 0."""
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as file:
        data = file.read()
    for endian in "<>":
        header_size = struct.unpack(endian + "i", data[:4])[0]
        if header_size == 348:  # NIfTI-1: dim int16[8] at 40, datatype int16 at 70, vox_offset float32 at 108
            dims, datatype = struct.unpack(endian + "8h", data[40:56]), struct.unpack(endian + "h", data[70:72])[0]
            offset = struct.unpack(endian + "f", data[108:112])[0]
            break
        if header_size == 540:  # NIfTI-2: datatype int16 at 12, dim int64[8] at 16, vox_offset int64 at 168
            datatype, dims = struct.unpack(endian + "h", data[12:14])[0], struct.unpack(endian + "8q", data[16:80])
            offset = struct.unpack(endian + "q", data[168:176])[0]
            break
    else:
        return 0, 0
    code = {16: "f4", 64: "f8"}.get(datatype)
    if code is None:
        return 0, 0
    values = np.frombuffer(data, endian + code, count=int(np.prod(dims[1:dims[0] + 1])), offset=int(offset))
    nan = int(np.count_nonzero(np.isnan(values)))
    return nan, int(np.count_nonzero(np.isinf(values)))


def _non_finite(path: Path, array: np.ndarray) -> tuple[int, int]:
    """(NaN, inf) voxel counts of a float image read from ``path``."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0, 0
    if _suffix(path) in (".nii", ".nii.gz"):
        return _nifti_non_finite(path)
    return int(np.count_nonzero(np.isnan(array))), int(np.count_nonzero(np.isinf(array)))


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
    path = Path(path)
    if path.is_dir():
        image, metadata = _read_dicom_folder(path)
    else:
        image, metadata = _read_file(path), {}
    _check_layout(image, path)
    metadata["pixel_type"] = image.GetPixelIDTypeAsString()
    array = sitk.GetArrayFromImage(image)
    nan, inf = _non_finite(path, array) if path.is_file() else (0, 0)
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
    path = Path(path)
    label = _read_file(path)
    _check_layout(label, path)
    values = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(values.dtype, np.integer):
        if any(_non_finite(path, values)) or not np.array_equal(values, np.round(values)):
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
    path = Path(path)
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
