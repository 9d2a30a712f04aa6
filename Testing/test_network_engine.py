"""The click network end to end: export to a bundle, onnxruntime vs torch parity, load_model, session, state."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import IMISSegmentLib as imis  # noqa: E402
from IMISSegmentLib.engines.onnx_engine import ClickNetState, OnnxClickEngine  # noqa: E402
from IMISSegmentLib.engines.torch_engine import TorchClickEngine  # noqa: E402
from IMISSegmentLib.networks.click_net import ClickNet, build_click_net, count_parameters  # noqa: E402

SMALL = {"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}


def _randomise_norms(network, seed=1):
    """Non-trivial batch-norm statistics, so parity also covers the folded normalisation."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return network


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from training.export.click_net import export_bundle
    network = _randomise_norms(build_click_net(SMALL, seed=0)).eval()
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(network, out, name="tiny-test", version="0.0.1")
    return out


def _volume(shape=(3, 101, 122)):
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 10, shape).astype(np.float32)
    volume[:, 30:70, 40:90] += 300
    volume[:, :2] = -1000
    return volume


def test_network_shapes_stride_and_config():
    network = build_click_net(seed=0).eval()
    assert network.stride == 32
    assert 0.5e6 < count_parameters(network) < 2e6
    with torch.inference_mode():
        out = network(torch.rand(2, 1, 256, 256), torch.rand(2, 4, 256, 256))
    assert out.shape == (2, 1, 256, 256)
    assert set(dict(network.named_children())) >= {"stem", "encoder", "context", "decoder", "head"}
    assert ClickNet(network.config).config == network.config
    with pytest.raises(ValueError):
        ClickNet({"widths": [8, 16], "blocks": [0]})


def test_bundle_layout_and_checksums(bundle):
    info = json.loads((bundle / "inference_info.json").read_text())
    assert info["format_version"] == 1 and info["engine"] == "onnx"
    assert info["capabilities"] == ["click", "box", "propagate"] and info["input_size"] == [256, 256]
    assert info["network"]["config"]["widths"] == SMALL["widths"]
    stage = info["stages"]["slice"]
    assert stage["file"] == "click_net.onnx" and len(stage["sha256"]) == 64
    assert stage["state_dict"]["file"] == "click_net.pt"


def test_onnxruntime_matches_torch(bundle):
    onnx_engine = OnnxClickEngine(bundle, device="cpu")
    torch_engine = TorchClickEngine(bundle, device="cpu")
    rng = np.random.default_rng(3)
    image = rng.random((3, 1, 256, 256), dtype=np.float32)
    prompts = (rng.random((3, 4, 256, 256)) > 0.95).astype(np.float32)
    prompts[:, 3] = rng.random((3, 256, 256))
    a, b = onnx_engine.run_network(image, prompts), torch_engine.run_network(image, prompts)
    assert a.shape == (3, 1, 256, 256)
    assert np.max(np.abs(a - b)) < 1e-4
    # and the whole slice pipeline gives the same mask
    for engine in (onnx_engine, torch_engine):
        session = imis.InteractiveSession(engine)
        session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
        session.add_box(1, (30, 40), (69, 89))
        session.add_click((1, 50, 60), positive=True)
        engine.result_copy = session.result.copy()
    assert np.array_equal(onnx_engine.result_copy, torch_engine.result_copy)


def test_load_model_drives_a_session_with_undo(bundle):
    model = imis.load_model(str(bundle), device="cpu")
    assert isinstance(model, OnnxClickEngine) and model.capabilities == {"click", "box", "propagate"}
    session = imis.InteractiveSession(model)
    session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    first = session.add_click((1, 50, 60), positive=True)
    assert first.mask.shape == (101, 122)
    after_click = session.result.copy()
    session.add_box(1, (30, 40), (69, 89))
    session.add_click((1, 35, 45), positive=False)
    session.add_click((2, 60, 0), positive=True, axis=2)   # another view: a (3, 101) slice
    assert session.undo() and session.undo() and session.undo()
    assert np.array_equal(session.result, after_click)
    assert len(session.prompts) == 1
    assert session.undo() and not session.result.any()


def test_a_corrupted_onnx_file_fails_the_checksum(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "click_net.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "click_net.onnx").write_bytes(bytes(data))
    with pytest.raises(imis.InputError, match="checksum mismatch"):
        imis.load_model(str(copy))
    shutil.copy(bundle / "click_net.onnx", copy / "click_net.onnx")
    (copy / "click_net.pt").write_bytes(b"not a state dict")
    with pytest.raises(imis.InputError, match="click_net.pt: checksum mismatch"):
        imis.load_model(str(copy))


def test_feedback_state_is_used_on_the_second_click(bundle):
    engine = OnnxClickEngine(bundle, device="cpu")
    engine.keep_inputs = True
    session = imis.InteractiveSession(engine)
    session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    session.add_click((1, 50, 60), positive=True)
    first_inputs = engine.last_inputs
    state = session._slices[(0, 1)].engine_state
    assert isinstance(state, ClickNetState) and state.probabilities.shape == (256, 256)
    assert not first_inputs[1][0, 3].any()          # nothing before the first click
    session.add_click((1, 35, 45), positive=False)
    fed_back = engine.last_inputs[1][0, 3]
    assert np.array_equal(fed_back, state.probabilities)
    assert 0 < fed_back.max() and fed_back.min() >= 0 and not np.isin(fed_back, (0.0, 1.0)).all()
    assert engine.last_inputs[1][0, 1].any()        # the negative click's disk


def test_previous_mask_is_used_when_the_state_is_stale(bundle):
    from IMISSegmentLib.engines.base import SliceRequest
    engine = OnnxClickEngine(bundle, device="cpu")
    image = np.random.default_rng(0).random((101, 122)).astype(np.float32)
    request = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, True)],
                           previous_mask=np.zeros((101, 122), bool))
    result = engine.predict_slice(request)
    edited = np.zeros((101, 122), bool)
    edited[10:40, 10:40] = True                      # e.g. propagation rewrote the slice
    stale = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, True), (20, 20, False)],
                         previous_mask=edited, previous_state=result.state)
    _, prompts, _, _ = engine.network_inputs(stale)
    assert set(np.unique(prompts[0, 3])) == {0.0, 1.0} and prompts[0, 3].sum() > 0
    fresh = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, True), (20, 20, False)],
                         previous_mask=result.mask, previous_state=result.state)
    _, prompts, _, _ = engine.network_inputs(fresh)
    assert np.array_equal(prompts[0, 3], result.state.probabilities)


def test_engine_errors_are_clear(bundle, monkeypatch):
    with pytest.raises(imis.InputError, match="num_threads"):
        OnnxClickEngine(bundle, device="cpu", num_threads=0)
    with pytest.raises(imis.InputError, match="device"):
        OnnxClickEngine(bundle, device="tpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(imis.EngineUnavailableError, match="onnxruntime is not installed"):
        OnnxClickEngine(bundle)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(imis.EngineUnavailableError, match="torch is not installed"):
        TorchClickEngine(bundle)


def test_importing_the_library_imports_neither_torch_nor_onnxruntime():
    code = ("import sys, IMISSegmentLib, IMISSegmentLib.models, IMISSegmentLib.engines.onnx_engine, "
            "IMISSegmentLib.networks.geometry, IMISSegmentLib.bench; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_clicknet_engine_name_uses_the_installed_bundle(bundle, monkeypatch, tmp_path):
    from IMISSegmentLib.engines.registry import available_engines, create_engine
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(tmp_path / "none"))
    with pytest.raises(imis.EngineUnavailableError, match="no click-network bundle"):
        create_engine("clicknet")
    assert available_engines()["clicknet"].startswith("no click-network bundle")
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(bundle))
    engine = create_engine("clicknet", device="cpu")
    assert isinstance(engine, OnnxClickEngine) and engine.name == "tiny-test"
    assert isinstance(imis.load_model(), OnnxClickEngine)


@pytest.mark.parametrize("method", ["walk", "growcut"])
def test_click_network_propagates_and_cancel_keeps_the_result(bundle, method):
    from IMISSegmentLib.errors import CancelledError
    if method == "growcut":
        pytest.importorskip("slicer")
    model = imis.load_model(str(bundle), device="cpu")
    model.propagation = method
    assert model.propagation_method() == method
    session = imis.InteractiveSession(model)
    session.set_volume(_volume((6, 101, 122)), spacing=(3.0, 1.0, 1.0))
    session.add_box(2, (30, 40), (69, 89))
    prompted = session.result[2].copy()
    before = session.result.copy()
    with pytest.raises(CancelledError):
        session.propagate(cancelled=lambda: True)
    assert np.array_equal(session.result, before), "a cancelled propagation leaves the result as it was"
    ticks = []
    update = session.propagate(progress=lambda done, total: ticks.append((done, total)))
    assert np.array_equal(session.result[2], prompted), "the prompted slice keeps its mask"
    assert ticks[-1][0] == ticks[-1][1], "progress ends complete"
    assert update is not None and session.undo() and np.array_equal(session.result, before)


def test_grow_from_slice_masks_follows_a_sphere_from_one_accepted_slice():
    pytest.importorskip("slicer")
    from conftest import SYNTH_CENTRE, SYNTH_SPACING, synthetic_ct_volume, synthetic_sphere_mask
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.engines.growcut import grow_from_slice_masks
    from IMISSegmentLib.normalize import intensity_window
    volume, sphere = synthetic_ct_volume(), synthetic_sphere_mask()
    context = VolumeContext(volume, SYNTH_SPACING, intensity_window(volume))
    k = SYNTH_CENTRE[0]
    grown = grow_from_slice_masks(context, {(0, k): sphere[k]}).astype(bool)
    dice = 2 * (grown & sphere).sum() / (grown.sum() + sphere.sum())
    assert dice > 0.9 and grown[0].sum() == 0 and grown[k - 3].any() and grown[k + 3].any()
    assert not grow_from_slice_masks(context, {(0, k): np.zeros_like(sphere[k])}).any()


def test_corrections_on_propagated_slices_use_the_bundles_propagated_stage(bundle, tmp_path):
    from IMISSegmentLib.engines.base import SliceRequest
    from training.export.correction import add_correction
    copy = tmp_path / "with_correction"
    shutil.copytree(bundle, copy)
    other = _randomise_norms(build_click_net(SMALL, seed=5), seed=7).eval()
    info = add_correction(other, copy, training={"run_name": "test"})
    assert "slice_propagated" in info["stages"] and info["propagated_correction"]["training"]["run_name"] == "test"
    plain, corrected = OnnxClickEngine(bundle, device="cpu"), OnnxClickEngine(copy, device="cpu")
    assert corrected.corrects_propagated and not plain.corrects_propagated
    assert "slice_propagated" in corrected.describe()["stages"]
    image = _volume()[1] / 400.0
    propagated = np.zeros((101, 122), bool)
    propagated[30:70, 40:90] = True
    first = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, True)])
    on_propagated = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, False)], previous_mask=propagated)
    # a first prompt (no mask yet): the slice network, in both bundles
    assert np.array_equal(plain.predict_slice(first).mask, corrected.predict_slice(first).mask)
    # a correction of a mask that came from propagation: the other network
    a, b = plain.predict_slice(on_propagated), corrected.predict_slice(on_propagated)
    assert not np.array_equal(a.state.probabilities, b.state.probabilities)
    # the next correction on that slice refines the engine's own answer: the slice network again
    own = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, False), (40, 50, True)],
                       previous_mask=b.mask, previous_state=b.state)
    assert corrected.is_own_answer(own) and plain.is_own_answer(own)
    assert np.array_equal(corrected.predict_slice(own).state.probabilities,
                          plain.predict_slice(own).state.probabilities)
    # torch runs the same stage
    image_in, prompts, _, _ = corrected.network_inputs(on_propagated)
    torch_engine = TorchClickEngine(copy, device="cpu")
    assert np.abs(torch_engine.run_network(image_in, prompts, on_propagated=True)
                  - corrected.run_network(image_in, prompts, on_propagated=True)).max() < 1e-3


def test_the_correction_export_refuses_another_architecture_and_leaves_the_bundle(bundle, tmp_path):
    from training.export.correction import add_correction
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    before = (copy / "inference_info.json").read_text()
    with pytest.raises(ValueError, match="differs from the bundle's slice network"):
        add_correction(build_click_net({"widths": [8, 16, 24, 32, 40], "blocks": [0, 1, 1, 1, 1]}, seed=0), copy)
    assert (copy / "inference_info.json").read_text() == before and not (copy / "click_net_propagated.onnx").exists()


def test_the_session_offers_the_nearest_masked_slice_within_reach_to_an_empty_slice():
    from pathlib import Path

    from IMISSegmentLib.engines.base import NEIGHBOUR_MM
    shipped = Path(__file__).resolve().parents[1] / "Resources" / "models" / "default"   # a network that finds the blob

    class Recording(OnnxClickEngine):   # the real engine; it only keeps the requests it was given
        def predict_slice(self, request):
            self.requests = getattr(self, "requests", []) + [request]
            return super().predict_slice(request)

    engine = Recording(shipped, device="cpu")
    session = imis.InteractiveSession(engine)
    volume = np.repeat(_volume((1, 101, 122)), 12, axis=0)
    session.set_volume(volume, spacing=(5.0, 1.0, 1.0))       # 20 mm = 4 slices
    assert NEIGHBOUR_MM == 20.0
    session.add_click((2, 50, 60), positive=True)
    assert engine.requests[-1].neighbour_mask is None          # nothing anywhere yet
    first = session.result[2].astype(bool)
    assert first.any()
    session.add_click((5, 50, 60), positive=True)              # 3 slices (15 mm) away: offered
    assert np.array_equal(engine.requests[-1].neighbour_mask, first)
    session.add_click((5, 40, 50), positive=True)              # the slice has its own mask now: not offered
    assert engine.requests[-1].neighbour_mask is None
    session.add_click((11, 50, 60), positive=True)             # 6 slices (30 mm) from slice 5: out of reach
    assert engine.requests[-1].neighbour_mask is None


def test_a_neighbour_prior_feeds_the_propagated_network_only_for_positive_clicks_on_an_empty_slice(bundle, tmp_path):
    from dataclasses import replace

    from IMISSegmentLib.engines.base import SliceRequest
    from training.export.correction import add_correction
    copy = tmp_path / "with_correction"
    shutil.copytree(bundle, copy)
    add_correction(_randomise_norms(build_click_net(SMALL, seed=5), seed=7).eval(), copy)
    corrected, plain = OnnxClickEngine(copy, device="cpu"), OnnxClickEngine(bundle, device="cpu")
    image = _volume()[1] / 400.0
    neighbour = np.zeros((101, 122), bool)
    neighbour[30:70, 40:90] = True
    empty = np.zeros((101, 122), bool)
    request = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(50, 60, True)], previous_mask=empty,
                           neighbour_mask=neighbour)
    as_propagated = replace(request, previous_mask=neighbour, neighbour_mask=None)
    with_prior = corrected.predict_slice(request)
    assert np.array_equal(with_prior.state.probabilities, corrected.predict_slice(as_propagated).state.probabilities)
    without = replace(request, neighbour_mask=None)
    assert not np.array_equal(with_prior.state.probabilities, corrected.predict_slice(without).state.probabilities)
    # ignored: a negative click, a box, or a bundle without the propagated-slice network
    for other in (replace(request, clicks=[(50, 60, True), (10, 10, False)]),
                  replace(request, box=(20, 30, 80, 100))):
        assert np.array_equal(corrected.predict_slice(other).state.probabilities,
                              corrected.predict_slice(replace(other, neighbour_mask=None)).state.probabilities)
    assert np.array_equal(plain.predict_slice(request).state.probabilities,
                          plain.predict_slice(without).state.probabilities)


def test_the_bundle_input_gamma_brightens_what_the_click_network_sees(bundle, tmp_path):
    """``input_gamma`` (inference_info.json): the click network's image is the slice's 0..1 intensities to that
    power, in onnxruntime and torch alike, on a slice normalised by percentiles (MR); a CT in Hounsfield units is
    left as it is; the canvas padding stays 0; bad values are refused at load."""
    brighter = tmp_path / "gamma"
    shutil.copytree(bundle, brighter)
    info_path = brighter / "inference_info.json"
    info = json.loads(info_path.read_text())
    mr = np.abs(_volume()) + 5.0   # no Hounsfield range: normalised by percentiles
    inputs = {}
    for name, folder in (("plain", bundle), ("gamma", brighter)):
        if name == "gamma":
            info_path.write_text(json.dumps(dict(info, input_gamma=0.5)))
        for kind, engine_class in (("onnx", OnnxClickEngine), ("torch", TorchClickEngine)):
            for modality, volume in (("mr", mr), ("ct", _volume())):
                engine = engine_class(folder, device="cpu")
                engine.keep_inputs = True
                session = imis.InteractiveSession(engine)
                session.set_volume(volume, spacing=(3.0, 1.0, 1.0))
                session.add_click((1, 50, 60), positive=True)
                inputs[name, kind, modality] = engine.last_inputs[0][0, 0]
    plain = inputs["plain", "onnx", "mr"]
    assert np.allclose(inputs["gamma", "onnx", "mr"], np.clip(plain, 0, 1) ** 0.5, atol=1e-6)
    assert not np.allclose(inputs["gamma", "onnx", "mr"], plain)
    assert np.array_equal(inputs["gamma", "onnx", "mr"], inputs["gamma", "torch", "mr"])
    assert (plain == 0).any() and np.array_equal(inputs["gamma", "onnx", "mr"] == 0, plain == 0)   # padding stays 0
    assert np.array_equal(inputs["gamma", "onnx", "ct"], inputs["plain", "onnx", "ct"])   # CT in HU: unchanged
    for value in (0.0, "0.6", True, 9):
        info_path.write_text(json.dumps(dict(info, input_gamma=value)))
        with pytest.raises(imis.InputError, match="input_gamma must be a number between 0.2 and 5"):
            imis.load_model(str(brighter))
