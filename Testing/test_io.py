"""Tests for IMISSegmentLib.io: reading images / DICOM series / labels, writing labels and .seg.nrrd."""
from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.io import (Volume, check_segment_names, read_image, read_label, read_labelmap_names, write_label,
                                write_segmentation)
from IMISSegmentLib.io import nifti_check, writers
from IMISSegmentLib.io.volume import ijk_to_lps, to_sitk
from helpers import EXAMPLE_CT, write_dicom_series

# float32-exact geometry, so NIfTI (which stores it in float32) round-trips bit for bit
SPACING_KJI = (2.5, 0.75, 0.5)
ORIGIN = (-100.5, 20.25, 7.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # i -> -y, j -> +x: a 90 degree rotation


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    k, j, i = np.indices(shape)
    return (((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
            + ((i - centre[2]) / radii[2]) ** 2) <= 1.0


@pytest.fixture
def io_volume() -> Volume:
    """An 8 x 20 x 24 (K, J, I) int16 CT-like volume with a bright off-centre ellipsoid."""
    rng = np.random.default_rng(0)
    array = rng.integers(-50, 50, size=(8, 20, 24)).astype(np.int16)
    array[_ellipsoid(array.shape, (4, 7, 15), (2.5, 4, 5))] += 1000
    return Volume(array, SPACING_KJI, ORIGIN, DIRECTION, source="synthetic")


@pytest.fixture
def io_label(io_volume) -> np.ndarray:
    label = (io_volume.array > 500).astype(np.uint8)
    label[1, 2:5, 3:6] = 2
    return label


def _write(array: np.ndarray, path: Path, volume: Volume | None = None) -> Path:
    image = sitk.GetImageFromArray(array) if volume is None else to_sitk(volume, array)
    sitk.WriteImage(image, str(path))
    return path


def _assert_geometry(volume: Volume, reference: Volume) -> None:
    assert volume.spacing == reference.spacing
    assert volume.origin == reference.origin
    assert volume.direction == reference.direction


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", ["image.nii.gz", "image.nii", "image.nrrd", "image.mha"])
def test_image_round_trip_keeps_array_and_geometry(tmp_path, io_volume, name):
    read = read_image(_write(io_volume.array, tmp_path / name, io_volume))
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, io_volume.array)
    _assert_geometry(read, io_volume)
    assert read.source == str(tmp_path / name)


@pytest.mark.parametrize("name", ["label.nii.gz", "label.nrrd", "label.mha"])
def test_write_label_round_trip(tmp_path, io_volume, io_label, name):
    write_label(tmp_path / "sub" / name, io_label, io_volume)
    image = sitk.ReadImage(str(tmp_path / "sub" / name))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), io_label)
    assert image.GetSpacing() == io_volume.spacing_xyz
    assert image.GetOrigin() == io_volume.origin
    assert image.GetDirection() == io_volume.direction
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / name, io_volume), io_label)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [name]  # no temp file left


def test_single_slice_volume_is_valid(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    assert read_image(_write(array, tmp_path / "one.nrrd")).shape == (1, 3, 4)


def test_ijk_to_lps_matches_sitk(io_volume):
    image = to_sitk(io_volume)
    matrix = ijk_to_lps(io_volume)
    for index in [(0, 0, 0), (23, 0, 0), (3, 19, 7)]:
        np.testing.assert_allclose(matrix @ (*index, 1), (*image.TransformIndexToPhysicalPoint(index), 1))


# ---------------------------------------------------------------- DICOM + label on another grid

def test_dicom_series_and_flipped_nifti_label_line_up(tmp_path, io_volume):
    ct = Volume(io_volume.array, (2.5, 0.6, 0.8), (-30.0, 12.5, 100.0))
    truth = _ellipsoid(ct.shape, (4, 7, 15), (2.5, 4, 5)).astype(np.uint8)
    names = [f"slice_{n:03d}.dcm" for n in range(ct.shape[0])]
    random.Random(3).shuffle(names)  # name order is not slice order: GDCM must sort by position
    write_dicom_series(ct, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2", names)
    small = Volume(ct.array[:3], ct.spacing, ct.origin)  # a second, smaller series in the same folder
    write_dicom_series(small, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.3")

    image = read_image(tmp_path / "dicom")
    np.testing.assert_array_equal(image.array, ct.array)
    np.testing.assert_allclose(image.spacing, ct.spacing, atol=1e-5)
    np.testing.assert_allclose(image.origin, ct.origin, atol=1e-5)
    assert image.metadata["modality"] == "CT"
    assert image.metadata["series_uid"] == "1.2.826.0.1.3680043.2.1125.2"
    assert image.metadata["other_series"] == {"1.2.826.0.1.3680043.2.1125.3": 3}

    # the same label flipped along j: y axis reversed, origin moved to the far end -> same physical voxels
    flipped = Volume(truth[:, ::-1, :].copy(), ct.spacing,
                     (ct.origin[0], ct.origin[1] + ct.spacing[1] * (ct.shape[1] - 1), ct.origin[2]),
                     (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    label = read_label(_write(flipped.array, tmp_path / "label.nii.gz", flipped), image)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, truth)
    assert image.array[label == 1].min() > 500 and image.array[label == 0].max() < 500


def _series(tmp_path, io_volume, **kwargs) -> tuple[Path, list[Path]]:
    """An 8-slice series, 2.5 mm apart, in tmp_path / "dicom"; also its files in slice order."""
    folder = tmp_path / "dicom"
    write_dicom_series(Volume(io_volume.array, (2.5, 0.6, 0.8), (-30.0, 12.5, 100.0)), folder,
                        "1.2.826.0.1.3680043.2.1125.7", [f"s{k}.dcm" for k in range(8)], **kwargs)
    return folder, [folder / f"s{k}.dcm" for k in range(8)]


def test_dicom_series_with_a_missing_slice_is_rejected(tmp_path, io_volume):
    folder, files = _series(tmp_path, io_volume)
    files[3].unlink()  # ITK would read 7 slices on an even 2.86 mm grid
    with pytest.raises(InputError, match=r"2\.500 mm steps but 5\.000 mm between slices 2 and 3 \(s2\.dcm, s4\.dcm\) "
                                         r"\(a missing slice\?\)") as info:
        read_image(folder)
    assert str(folder) in str(info.value) and "1.2.826.0.1.3680043.2.1125.7" in str(info.value)


def test_dicom_series_with_an_unreadable_slice_names_the_file(tmp_path, io_volume):
    folder, files = _series(tmp_path, io_volume)
    files[5].write_bytes(files[5].read_bytes()[:600])  # GDCM drops the file from the series
    with pytest.raises(InputError, match=r"between slices 4 and 5 .*look like DICOM but could not be read: s5\.dcm"):
        read_image(folder)


def test_dicom_series_with_duplicate_slice_positions_is_rejected(tmp_path, io_volume):
    folder, _ = _series(tmp_path, io_volume, shifts=[0, 0, 0, 0, -2.5, 0, 0, 0])  # slice 4 on top of slice 3
    with pytest.raises(InputError, match="same position"):
        read_image(folder)


def test_dicom_series_spacing_tolerance(tmp_path, io_volume):
    # header rounding-sized jitter is accepted: a 2.5 mm step, and a 1.25 mm one with positions written to 0.1 mm
    jitter = [0, 0.03, -0.05, 0.1, 0, -0.1, 0.05, 0]
    folder, _ = _series(tmp_path, io_volume, shifts=jitter)
    image = read_image(folder)
    assert image.shape == io_volume.shape and image.spacing[0] == pytest.approx(2.5, abs=1e-6)
    thin = Volume(io_volume.array, (1.25, 0.6, 0.8), (-30.0, 12.5, 100.0))
    rounded = [round(k * 1.25 + 100.0, 1) - (k * 1.25 + 100.0) for k in range(8)]   # 101.2, 102.5, 103.8, ...
    write_dicom_series(thin, tmp_path / "thin", "1.2.826.0.1.3680043.2.1125.6", shifts=rounded)
    assert read_image(tmp_path / "thin").shape == io_volume.shape
    # a slice half a step off its place is not rounding
    folder, _ = _series(tmp_path / "off", io_volume, shifts=[0, 0, 0, 1.25, 0, 0, 0, 0])
    with pytest.raises(InputError, match=r"not evenly spaced: 2\.500 mm steps but 3\.750 mm"):
        read_image(folder)


def test_single_slice_dicom_series_is_read(tmp_path, io_volume):
    volume = Volume(io_volume.array[3:4], (2.5, 0.6, 0.8), (-30.0, 12.5, 100.0))
    write_dicom_series(volume, tmp_path / "one", "1.2.826.0.1.3680043.2.1125.8")
    np.testing.assert_array_equal(read_image(tmp_path / "one").array, volume.array)


def test_label_with_permuted_axes_is_resampled(tmp_path, io_volume, io_label):
    # store the label (I, J, K)-swapped: array axes reversed, direction columns reversed to match
    d = np.array(io_volume.direction).reshape(3, 3)[:, ::-1]
    permuted = Volume(io_label.transpose(2, 1, 0).copy(), io_volume.spacing[::-1], io_volume.origin,
                      tuple(d.ravel()))
    label = read_label(_write(permuted.array, tmp_path / "perm.nrrd", permuted), io_volume)
    np.testing.assert_array_equal(label, io_label)


def test_label_on_finer_grid_covering_same_box_is_resampled(tmp_path, io_volume, io_label):
    fine = np.repeat(np.repeat(np.repeat(io_label, 2, 0), 2, 1), 2, 2)
    d = np.array(io_volume.direction).reshape(3, 3)
    half = np.array(io_volume.spacing_xyz) / 2
    origin = np.array(io_volume.origin) - d @ (half / 2)  # first fine voxel centre, a quarter voxel in
    fine_volume = Volume(fine, tuple(s / 2 for s in io_volume.spacing), tuple(origin), io_volume.direction)
    label = read_label(_write(fine, tmp_path / "fine.mha", fine_volume), io_volume)
    np.testing.assert_array_equal(label, io_label)


def test_float_label_with_whole_values_is_accepted(tmp_path, io_volume, io_label):
    label = read_label(_write(io_label.astype(np.float32), tmp_path / "f.nrrd", io_volume), io_volume)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, io_label)


def test_large_label_values_give_uint16(tmp_path, io_volume, io_label):
    wide = io_label.astype(np.int32) * 300
    label = read_label(_write(wide, tmp_path / "w.nii.gz", io_volume), io_volume)
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, wide)


# ---------------------------------------------------------------- the example CT that ships

def test_example_ct_and_label():
    image = read_image(EXAMPLE_CT / "image.nii.gz")
    label = read_label(EXAMPLE_CT / "label.nii.gz", image)
    assert image.shape == label.shape == (30, 101, 122)
    assert np.issubdtype(label.dtype, np.integer)
    names = read_labelmap_names(EXAMPLE_CT / "labels.json")
    assert names[1] == "spleen" and names[117] == "costal_cartilages" and 0 not in names
    assert set(np.unique(label).tolist()) - {0} <= set(names)


# ---------------------------------------------------------------- label names

@pytest.mark.parametrize("labels", [
    {"1": "spleen", "5": "liver"},
    {"0": "background", "1": "spleen", "5": "liver"},
    {"background": 0, "spleen": 1, "liver": 5},
])
def test_labelmap_names_forms(tmp_path, labels):
    (tmp_path / "labels.json").write_text(json.dumps({"labels": labels}))
    assert read_labelmap_names(tmp_path / "labels.json") == {1: "spleen", 5: "liver"}


@pytest.mark.parametrize("text, message", [
    ("{not json", "JSON"),
    ('{"name": "x"}', "labels"),
    ('{"labels": {"tumour": [1, 2]}}', "region"),
    ('{"labels": {"1": "a", "01": "b"}}', "twice"),
])
def test_bad_labelmap_names(tmp_path, text, message):
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_labelmap_names(tmp_path / "labels.json")
    assert "labels.json" in str(info.value)


# ---------------------------------------------------------------- bad input

def _bad_inputs(tmp_path: Path) -> dict:
    rng = np.random.default_rng(1)
    noise = rng.random((4, 5, 6)).astype(np.float32)
    cases = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "no such file")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(rng.bytes(2000))
    cases["garbage"] = (garbage, "unreadable or corrupt")
    cases["2d"] = (_write(noise[0], tmp_path / "flat.nrrd"), r"expected a 3D volume, got a 2D image of size 6x5")
    image4d = sitk.JoinSeries([sitk.GetImageFromArray(noise), sitk.GetImageFromArray(noise + 1)])
    sitk.WriteImage(image4d, str(tmp_path / "time.nii.gz"))
    cases["4d"] = (tmp_path / "time.nii.gz", r"expected a 3D volume, got a 4D image of size 6x5x4x2")
    vector = sitk.GetImageFromArray(rng.random((4, 5, 6, 3)).astype(np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.mha"))
    cases["vector"] = (tmp_path / "rgb.mha", "3 components per voxel")
    with_nan = noise.copy()
    with_nan[0, 0, :3] = np.nan
    cases["nan"] = (_write(with_nan, tmp_path / "nan.nii.gz"), r"3 of 120 voxels are not finite \(3 NaN, 0 inf\)")
    with_inf = noise.copy()
    with_inf[1, 1, 1] = -np.inf
    cases["inf"] = (_write(with_inf, tmp_path / "inf.nrrd"), r"1 of 120 voxels are not finite \(0 NaN, 1 inf\)")
    # ITK's NIfTI reader turns NaN / inf into 0, so these must be caught in the file's bytes
    cases["inf nifti"] = (_write(with_inf.astype(np.float64), tmp_path / "inf.nii"),
                          r"1 of 120 voxels are not finite \(0 NaN, 1 inf\)")
    (tmp_path / "empty.raw").write_bytes(b"")
    (tmp_path / "empty.mhd").write_text("NDims = 3\nDimSize = 4 4 0\nElementType = MET_FLOAT\n"
                                        "ElementDataFile = empty.raw\n")
    cases["zero size"] = (tmp_path / "empty.mhd", "zero voxels")
    cases["constant"] = (_write(np.full((3, 4, 5), 7, np.int16), tmp_path / "c.mha"),
                         "constant volume, all 60 voxels equal 7")
    unsupported = tmp_path / "image.png"
    unsupported.write_bytes(b"\x89PNG")
    cases["extension"] = (unsupported, "unsupported file type")
    (tmp_path / "empty_folder").mkdir()
    cases["empty folder"] = (tmp_path / "empty_folder", "no DICOM series")
    return cases


@pytest.mark.parametrize("case", ["missing", "garbage", "2d", "4d", "vector", "nan", "inf", "inf nifti", "zero size",
                                  "constant", "extension", "empty folder"])
def test_bad_image_gives_input_error(tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, dtype", [("f.nii.gz", np.float32), ("f.nii", np.float64), ("i.nii", np.int16),
                                         ("u.nii.gz", np.uint8)])
def test_truncated_nifti_is_rejected(tmp_path, io_volume, name, dtype):
    """ITK zero-fills the missing half of integer data; float data crashed the NaN check."""
    path = _write(io_volume.array.astype(dtype), tmp_path / name, io_volume)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    expected = io_volume.array.size * np.dtype(dtype).itemsize
    message = rf"truncated: its header promises {expected} bytes of voxel data, found \d+"
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match="truncated"):
        read_label(path, io_volume)


def test_nifti_gzip_stream_without_its_end_is_rejected(tmp_path, io_volume):
    path = _write(io_volume.array, tmp_path / "c.nii.gz", io_volume)
    path.write_bytes(path.read_bytes()[:-8])  # all voxel data, but no gzip trailer (CRC, size): ITK reads it
    sitk.ReadImage(str(path))
    with pytest.raises(InputError, match=r"c\.nii\.gz: the file is corrupt or truncated: its gzip stream ends"):
        read_image(path)


def test_nifti_non_finite_count_is_exact_across_chunks(tmp_path, monkeypatch, io_volume):
    array = io_volume.array.astype(np.float32)
    array.flat[[0, 15, 16, 17, 1000, array.size - 1]] = [np.nan, np.inf, np.nan, -np.inf, np.nan, np.nan]
    path = _write(array, tmp_path / "n.nii.gz", io_volume)
    monkeypatch.setattr(nifti_check, "_CHUNK", 64)  # 16 voxels a chunk: NaN / inf on both sides of chunk edges
    with pytest.raises(InputError, match=r"6 of 3840 voxels are not finite \(4 NaN, 2 inf\)"):
        read_image(path)


def test_nifti_scaling_overflow_is_rejected_with_the_file_name(tmp_path, io_volume):
    path = _write(io_volume.array.astype(np.float32), tmp_path / "slope.nii", io_volume)
    data = bytearray(path.read_bytes())
    data[112:116] = np.array(1e38, "<f4").tobytes()  # scl_slope: finite bytes, infinite voxels once scaled
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"slope\.nii: \d+ of 3840 voxels are not finite \(0 NaN, \d+ inf\)"):
        read_image(path)


def test_truncated_metaimage_says_so(tmp_path, io_volume):
    path = _write(io_volume.array, tmp_path / "t.mha", io_volume)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(InputError, match="truncated") as info:
        read_image(path)
    assert "No such file" not in str(info.value)


@pytest.mark.parametrize("path, message", [(5, "got int 5"), (None, "got NoneType None"), ("", "got an empty path"),
                                           ("  ", "got an empty path")])
def test_read_image_needs_a_path(tmp_path, monkeypatch, io_volume, path, message):
    monkeypatch.chdir(tmp_path)  # '' must not be read as the current folder
    with pytest.raises(InputError, match=f"expected the path of an image file or a DICOM folder, {message}"):
        read_image(path)
    with pytest.raises(InputError, match=message):
        read_label(path, io_volume)


def test_reads_keep_itk_warnings_off_stderr(tmp_path, capfd, io_volume):
    """ITK's multi-line warnings ("No Series were found", "Non uniform sampling") are not ours to print."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    folder, _ = _series(tmp_path, io_volume, shifts=[0, 0.03, -0.05, 0.1, 0, -0.1, 0.05, 0])  # within tolerance
    read_image(folder)
    assert "WARNING" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # restored


def test_label_of_another_size_is_rejected(tmp_path, io_volume):
    cropped = Volume(np.zeros((8, 19, 24), np.uint8), io_volume.spacing, io_volume.origin, io_volume.direction)
    path = _write(cropped.array, tmp_path / "small.nii.gz", cropped)
    with pytest.raises(InputError, match="does not cover") as info:
        read_label(path, io_volume)
    assert "size 24x19x8" in str(info.value) and "size 24x20x8" in str(info.value)
    assert "spacing 0.5x0.75x2.5" in str(info.value)


def test_label_shifted_by_one_voxel_is_rejected(tmp_path, io_volume, io_label):
    d = np.array(io_volume.direction).reshape(3, 3)
    shifted = Volume(io_label, io_volume.spacing, tuple(np.array(io_volume.origin) + d[:, 2] * io_volume.spacing[0]),
                     io_volume.direction)
    with pytest.raises(InputError, match="does not cover"):
        read_label(_write(io_label, tmp_path / "shift.nrrd", shifted), io_volume)


def test_bad_labels(tmp_path, io_volume, io_label):
    fractional = io_label.astype(np.float32)
    fractional[0, 0, 0] = 0.5
    with pytest.raises(InputError, match="whole numbers"):
        read_label(_write(fractional, tmp_path / "frac.nrrd", io_volume), io_volume)
    fractional[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="whole numbers"):
        read_label(_write(fractional, tmp_path / "nan.nii.gz", io_volume), io_volume)
    negative = io_label.astype(np.int16)
    negative[0, 0, 0] = -1
    with pytest.raises(InputError, match=r"0 \.\. 65535"):
        read_label(_write(negative, tmp_path / "neg.nrrd", io_volume), io_volume)
    with pytest.raises(InputError, match="expected a 3D volume"):
        read_label(_write(io_label[0], tmp_path / "flat.nrrd"), io_volume)


def test_bad_writes(tmp_path, io_volume, io_label):
    with pytest.raises(InputError, match="does not match"):
        write_label(tmp_path / "l.nii.gz", io_label[:-1], io_volume)
    with pytest.raises(InputError, match="integers"):
        write_label(tmp_path / "l.nii.gz", io_label.astype(float), io_volume)
    for name in ("l.png", "l.seg.nrrd"):
        with pytest.raises(InputError, match=r"\.nii\.gz"):
            write_label(tmp_path / name, io_label, io_volume)
    with pytest.raises(InputError, match=r"\.seg\.nrrd"):
        write_segmentation(tmp_path / "s.nrrd", io_label, io_volume, {1: "a", 2: "b"})
    with pytest.raises(InputError, match=r"\[2\].*no segment name"):
        write_segmentation(tmp_path / "s.seg.nrrd", io_label, io_volume, {1: "a"})
    assert list(tmp_path.iterdir()) == []


def test_nifti_output_refuses_a_sheared_direction(tmp_path, io_volume, io_label):
    """NIfTI cannot store a shear; ITK silently wrote a rotation instead. NRRD keeps it."""
    sheared = Volume(io_volume.array, io_volume.spacing, io_volume.origin,
                     (1.0, 0.7071067811865475, 0.0, 0.0, 0.7071067811865475, 0.0, 0.0, 0.0, 1.0))
    for name in ("l.nii.gz", "l.nii"):
        with pytest.raises(InputError, match=r"not orthonormal.*\.nrrd or \.seg\.nrrd"):
            write_label(tmp_path / name, io_label, sheared)
    assert list(tmp_path.iterdir()) == []
    write_label(tmp_path / "l.nrrd", io_label, sheared)
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "l.nrrd")).GetDirection(), sheared.direction, atol=1e-12)
    # an oblique rotation with a flip is orthonormal: NIfTI keeps it
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = Volume(io_volume.array, io_volume.spacing, io_volume.origin, (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    write_label(tmp_path / "o.nii.gz", io_label, oblique)
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "o.nii.gz")).GetDirection(), oblique.direction, atol=1e-6)


@pytest.mark.parametrize("segments, message", [
    ("liver", r"a dict \{label value: name\} or a list of names, got the string 'liver'; "
              r"for one segment use \['liver'\]"),
    ({1: ""}, "must be a non-empty string"),
    ({1: "  "}, "must be a non-empty string"),
    ({1: 5}, "must be a non-empty string"),
    ({True: "a"}, "label value True"),
    ({1: "a\nb: c"}, r"'a\\nb: c' has control characters"),
    ({1: "tab\there"}, "control characters"),
    ({1: "L\u00e9ber"}, r"'L\u00e9ber' has non-ASCII characters; a \.seg\.nrrd segment name must be printable ASCII, "
                        r"e\.g\. 'Leber'"),
    (["spleen", "\u809d\u81d3"], r"segment 2: name '\u809d\u81d3' has non-ASCII characters; .* ASCII$"),
])
def test_bad_segment_names(tmp_path, io_volume, io_label, segments, message):
    with pytest.raises(InputError, match=message):
        check_segment_names(segments)
    with pytest.raises(InputError, match=message):
        write_segmentation(tmp_path / "s.seg.nrrd", (io_label > 0).astype(np.uint8), io_volume, segments)
    assert list(tmp_path.iterdir()) == []


def test_check_segment_names_normalises():
    assert check_segment_names({2: " liver ", 1: "spleen"}) == {1: "spleen", 2: "liver"}
    assert check_segment_names(("a b", "c-d (e)")) == {1: "a b", 2: "c-d (e)"}


# ---------------------------------------------------------------- atomic writes

def _fail_after_writing(real):
    def write(*args, **kwargs):
        real(*args, **kwargs)  # the temp file now exists, partly or fully written
        raise OSError("disk full")
    return write


@pytest.mark.parametrize("name", ["label.nii.gz", "seg.seg.nrrd"])
def test_failed_write_leaves_target_untouched(tmp_path, monkeypatch, io_volume, io_label, name):
    target = tmp_path / name
    target.write_bytes(b"previous contents")
    monkeypatch.setattr(writers.sitk, "WriteImage", _fail_after_writing(sitk.WriteImage))
    # slicerio itself: the writer imports it when it writes (lazily, for Slicer's first use)
    monkeypatch.setattr(slicerio, "write_segmentation", _fail_after_writing(slicerio.write_segmentation))
    with pytest.raises(OSError, match="disk full"):
        if name.endswith(".seg.nrrd"):
            write_segmentation(target, io_label, io_volume, {1: "a", 2: "b"})
        else:
            write_label(target, io_label, io_volume)
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch, io_volume, io_label):
    monkeypatch.setattr(writers.sitk, "WriteImage", _fail_after_writing(sitk.WriteImage))
    with pytest.raises(OSError):
        write_label(tmp_path / "new" / "label.nrrd", io_label, io_volume)
    assert list((tmp_path / "new").iterdir()) == []


# ---------------------------------------------------------------- .seg.nrrd

def test_segmentation_round_trip_through_slicerio(tmp_path, io_volume, io_label):
    path = tmp_path / "out" / "case.seg.nrrd"
    write_segmentation(path, io_label, io_volume, {1: "ellipsoid", 2: "box", 3: "nothing here"},
                       colors={2: (255, 128, 0)})
    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), io_label)  # slicerio voxels are (I, J, K)
    np.testing.assert_array_equal(seg["ijkToLPS"], ijk_to_lps(io_volume))
    segments = {s["labelValue"]: s for s in seg["segments"]}
    assert {v: s["name"] for v, s in segments.items()} == {1: "ellipsoid", 2: "box", 3: "nothing here"}
    assert {v: s["id"] for v, s in segments.items()} == {1: "Segment_1", 2: "Segment_2", 3: "Segment_3"}
    np.testing.assert_allclose(segments[2]["color"], (1.0, 128 / 255, 0.0))
    assert segments[1]["colorAutoGenerated"] and not segments[2]["colorAutoGenerated"]
    assert segments[1]["color"] != segments[3]["color"]
    k, j, i = np.nonzero(io_label == 2)
    assert segments[2]["extent"] == [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]
    # the geometry SimpleITK reads from the same file is the reference's, too
    image = sitk.ReadImage(str(path))
    assert image.GetDirection() == io_volume.direction and image.GetOrigin() == io_volume.origin
    np.testing.assert_allclose(image.GetSpacing(), io_volume.spacing_xyz, rtol=1e-12)


def test_segmentation_from_list_of_names_on_oblique_grid(tmp_path, io_volume, io_label):
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = Volume(io_volume.array, (0.1 + 0.2, 1 / 3, 0.7), (-100.123456789, 20.25, 7.1),
                     (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    write_segmentation(tmp_path / "l.seg.nrrd", io_label, oblique, ["ellipsoid", "box"])
    seg = slicerio.read_segmentation(str(tmp_path / "l.seg.nrrd"))
    np.testing.assert_array_equal(seg["ijkToLPS"], ijk_to_lps(oblique))
    assert [(s["labelValue"], s["name"]) for s in seg["segments"]] == [(1, "ellipsoid"), (2, "box")]


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through a private temp file; the result must not stay owner-only (0600)."""
    from IMISSegmentLib.io.atomic import write_text
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


# ---------------------------------------------------------------- NIfTI-2

def _as_nifti2(nifti1: bytes) -> bytes:
    """A NIfTI-1 single file (.nii bytes, little-endian) rewritten with a NIfTI-2 header, as nibabel writes one
    (e.g. its example_nifti2.nii.gz): the same fields, 64-bit, and the voxels after a 544-byte start."""
    import struct

    def get(form, offset):
        return struct.unpack_from("<" + form, nifti1, offset)

    header = bytearray(544)
    struct.pack_into("<i8s", header, 0, 540, b"n+2\0\r\n\x1a\n")
    struct.pack_into("<2h", header, 12, *get("2h", 70))                    # datatype, bitpix
    struct.pack_into("<8q", header, 16, *get("8h", 40))                    # dim
    struct.pack_into("<3d", header, 80, *get("3f", 56))                    # intent_p1..3
    struct.pack_into("<8d", header, 104, *get("8f", 76))                   # pixdim
    struct.pack_into("<q", header, 168, 544)                               # vox_offset
    struct.pack_into("<2d", header, 176, *get("2f", 112))                  # scl_slope, scl_inter
    header[240:320] = nifti1[148:228]                                      # descrip
    struct.pack_into("<2i", header, 344, *get("2h", 252))                  # qform_code, sform_code
    struct.pack_into("<6d", header, 352, *get("6f", 256))                  # quatern_b.. qoffset_z
    struct.pack_into("<12d", header, 400, *get("12f", 280))                # srow_x, srow_y, srow_z
    struct.pack_into("<i", header, 500, nifti1[123])                       # xyzt_units
    return bytes(header) + nifti1[int(get("f", 108)[0]):]


@pytest.mark.parametrize("name", ["n2.nii", "n2.nii.gz"])
def test_nifti2_is_read_like_the_same_image_in_nifti1(tmp_path, io_volume, name):
    """This SimpleITK cannot read NIfTI-2 and called a valid file "unreadable or corrupt"; it is read through a
    NIfTI-1 copy: the same voxels and geometry as the NIfTI-1 file it was made from, image and label alike."""
    import gzip

    one = _write(io_volume.array, tmp_path / "n1.nii", io_volume)
    two = _as_nifti2(one.read_bytes())
    (tmp_path / name).write_bytes(gzip.compress(two) if name.endswith(".gz") else two)
    reference, image = read_image(one), read_image(tmp_path / name)
    np.testing.assert_array_equal(image.array, reference.array)
    assert image.array.dtype == reference.array.dtype
    _assert_geometry(image, reference)
    label = (io_volume.array > 500).astype(np.uint8)
    (tmp_path / "l2.nii").write_bytes(_as_nifti2(_write(label, tmp_path / "l1.nii", io_volume).read_bytes()))
    np.testing.assert_array_equal(read_label(tmp_path / "l2.nii", image), label)


def test_nifti2_that_is_4d_or_truncated_says_what_is_wrong(tmp_path, io_volume):
    """nibabel's example_nifti2.nii.gz is 4D (32 x 20 x 12 x 2): refused for that, not as unreadable; a
    truncated NIfTI-2 file is refused as truncated."""
    import struct

    two = bytearray(_as_nifti2(_write(io_volume.array, tmp_path / "n1.nii", io_volume).read_bytes()))
    (tmp_path / "cut.nii").write_bytes(bytes(two[:len(two) - 100]))
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "cut.nii")
    dims = struct.unpack_from("<8q", two, 16)
    struct.pack_into("<8q", two, 16, 4, dims[1], dims[2], dims[3] // 2, 2, 1, 1, 1)   # 3D -> two 3D volumes
    (tmp_path / "4d.nii").write_bytes(bytes(two))
    with pytest.raises(InputError, match=r"expected a 3D volume, got a 4D image of size 24x20x4x2"):
        read_image(tmp_path / "4d.nii")
