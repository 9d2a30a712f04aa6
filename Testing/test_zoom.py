"""Zoom-in (the network runs on a window around the object), the prompted-parts rule, and the command that
chooses both on validation cases (training/analysis/tune_inference.py)."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import IMISSegmentLib as imis  # noqa: E402
from IMISSegmentLib.engines.base import SliceRequest  # noqa: E402
from IMISSegmentLib.engines.onnx_engine import OnnxClickEngine, prompted_components  # noqa: E402
from IMISSegmentLib.engines.zoom import Crop, ZoomSettings, zoom_window  # noqa: E402
from IMISSegmentLib.networks.click_net import build_click_net  # noqa: E402
from IMISSegmentLib.networks.geometry import SliceGeometry  # noqa: E402

ZOOM = {"enabled": True, "expansion": 2.0, "min_crop_mm": 40.0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from training.export.click_net import export_bundle
    out = tmp_path_factory.mktemp("zoom") / "tiny"
    export_bundle(build_click_net({"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}, seed=0).eval(), out,
                  name="tiny-zoom", version="0.0.1")
    return out


def _engine(bundle, **settings):
    from IMISSegmentLib.models import read_bundle_info
    engine = OnnxClickEngine(bundle, {**read_bundle_info(bundle), **settings}, device="cpu")
    engine.keep_inputs = True
    return engine


def _mask(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_the_window_holds_the_object_and_clicks_is_square_in_mm_and_stays_inside():
    settings = ZoomSettings.from_dict(ZOOM)
    shape, spacing = (200, 300), (0.5, 1.0)
    mask = _mask(shape, (90, 110), (140, 150))           # 10 mm x 10 mm
    assert zoom_window(shape, spacing, [(100, 145, True)], None, mask, ZoomSettings()) is None   # off
    assert zoom_window(shape, spacing, [(100, 145, True)], None, None, settings) is None        # first click
    r0, c0, r1, c1 = zoom_window(shape, spacing, [(100, 145, True), (60, 145, True)], None, mask, settings)
    assert r0 <= 60 and r1 > 110 and c0 <= 140 and c1 >= 150          # the mask and both positive clicks
    assert (r1 - r0) * spacing[0] == pytest.approx((c1 - c0) * spacing[1], abs=1.0)   # square in mm
    assert (r1 - r0) * spacing[0] == pytest.approx(2.0 * (110 - 60) * spacing[0], abs=1.0)  # expansion 2
    small = zoom_window(shape, spacing, [], None, _mask(shape, (0, 4), (296, 300)), settings)
    assert small[:2] == (0, 260) and small[2:] == (80, 300)             # 40 mm, shifted inside the slice
    not_propagated = ZoomSettings.from_dict({**ZOOM, "propagated": False})
    assert zoom_window(shape, spacing, [(100, 145, True)], None, mask, not_propagated, own_mask=True) is not None
    assert zoom_window(shape, spacing, [(100, 145, True)], None, mask, not_propagated, own_mask=False) is None
    assert zoom_window(shape, spacing, [(100, 145, True)], None, mask, settings, own_mask=False) is not None
    boxed = zoom_window(shape, spacing, [], (90, 140, 109, 149), None, settings)
    assert boxed is not None                                            # a box alone gives a window
    assert zoom_window(shape, spacing, [], (90, 140, 109, 149), None,
                       ZoomSettings.from_dict({**ZOOM, "box_alone": False})) is None
    assert zoom_window(shape, spacing, [], None, _mask(shape, (0, 200), (0, 300)), settings) is None  # whole slice
    with pytest.raises(imis.InputError, match="unknown zoom setting"):
        ZoomSettings.from_dict({"zoom": 2})
    with pytest.raises(imis.InputError, match="expansion"):
        ZoomSettings.from_dict({"enabled": True, "expansion": 0.5})


def test_crop_moves_prompts_in_and_pastes_the_answer_back():
    crop = Crop((10, 20, 30, 50), (64, 64))
    assert crop.crop_shape == (20, 30)
    assert crop.clicks([(15, 25, True), (5, 25, False), (29, 49, False)]) == [(5, 5, True), (19, 29, False)]
    assert crop.box((0, 30, 40, 60)) == (0, 10, 19, 29)                # clipped to the window
    assert crop.box((0, 0, 5, 5)) is None                               # outside
    pasted = crop.paste(np.ones((20, 30), bool), False)
    assert pasted.shape == (64, 64) and pasted.sum() == 600 and pasted[10:30, 20:50].all()
    whole = Crop(None, (64, 64))
    array = np.arange(6).reshape(2, 3)
    assert whole.array(array) is array and whole.clicks([(1, 2, True)]) == [(1, 2, True)]


def test_zoomed_engine_runs_on_the_window_and_feeds_back_across_windows(bundle):
    engine = _engine(bundle, zoom=ZOOM)
    rng = np.random.default_rng(0)
    image = rng.random((160, 180)).astype(np.float32)
    first = engine.predict_slice(SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(80, 90, True)]))
    assert first.state.window is None                                   # the first click sees the whole slice
    previous = _mask(image.shape, (70, 90), (80, 100))                  # as if the first answer were this
    request = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(80, 90, True), (95, 90, False)],
                           previous_mask=previous)
    result = engine.predict_slice(request)
    window = result.state.window
    r0, c0, r1, c1 = window
    assert (r1 - r0, c1 - c0) == (40, 40)                               # 2 x 20 px object: 40 mm
    geometry = SliceGeometry((40, 40), 256, (1.0, 1.0))
    assert np.allclose(engine.last_inputs[0][0, 0], geometry.to_network(image[r0:r1, c0:c1]))
    assert engine.last_inputs[1][0, 1].any()                            # the negative click, inside the window
    outside = np.ones(image.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not result.mask[outside].any()
    # the next click moves the window: the fed-back probabilities go through the slice grid
    third = SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=request.clicks + [(60, 120, True)],
                         previous_mask=result.mask, previous_state=result.state)
    _, prompts, _, crop = engine.network_inputs(third)
    assert crop.window != window
    fed = prompts[0, 3]
    assert fed.min() >= 0.0 and fed.max() <= 1.0
    on_slice = np.zeros(image.shape, np.float32)
    on_slice[r0:r1, c0:c1] = geometry.to_slice(result.state.probabilities)
    new_geometry = SliceGeometry(crop.crop_shape, 256, (1.0, 1.0))
    assert np.allclose(fed, np.clip(new_geometry.to_network(crop.array(on_slice)), 0, 1), atol=1e-6)


def test_zoom_keeps_undo_exact_in_a_session(bundle):
    engine = _engine(bundle, zoom=ZOOM)
    session = imis.InteractiveSession(engine)
    rng = np.random.default_rng(1)
    volume = rng.normal(40, 10, (3, 120, 140)).astype(np.float32)
    volume[:, 50:75, 60:90] += 300
    session.set_volume(volume, spacing=(3.0, 1.0, 1.0))
    session.add_click((1, 60, 70), positive=True)
    before = session.result.copy()
    session.add_click((1, 62, 88), positive=True)
    session.add_click((1, 40, 70), positive=False)
    assert session.undo() and session.undo()
    assert np.array_equal(session.result, before)


def test_prompted_parts_always_drops_blobs_away_from_the_clicks(bundle):
    mask = _mask((40, 40), (2, 10), (2, 10)) | _mask((40, 40), (25, 35), (25, 35))
    assert prompted_components(mask, [(5, 5, True)], None).sum() == 64
    assert prompted_components(mask, [(5, 5, False)], None) is mask      # no positive click: unchanged
    assert prompted_components(mask, [], (20, 20, 39, 39)).sum() == 100
    # a part of the slice's earlier mask (e.g. propagated there) stays without a click on it
    earlier = _mask((40, 40), (26, 30), (26, 30))
    assert prompted_components(mask, [(5, 5, True)], None, earlier) is mask
    assert prompted_components(mask, [(5, 5, False)], None, earlier).sum() == 100
    assert prompted_components(mask, [(5, 5, True)], None, np.zeros((40, 40), bool)).sum() == 64
    assert _engine(bundle, prompted_parts="always").prompted_parts == "always"
    assert _engine(bundle).prompted_parts == "text"                      # the default
    with pytest.raises(imis.InputError, match="prompted_parts"):
        _engine(bundle, prompted_parts="sometimes")


def test_tune_inference_scores_the_grid_and_writes_the_best_into_the_bundle(bundle, tmp_path, capsys,
                                                                            write_block_case):
    from training.analysis.tune_inference import main
    data = tmp_path / "data"
    write_block_case(data / "case_a", 0)
    write_block_case(data / "held_out", 1)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    from IMISSegmentLib.models import read_bundle_info
    neighbour = {k: v for k, v in (read_bundle_info(copy).get("growth_check") or {}).items() if k == "neighbour"}
    out = tmp_path / "tune"
    code = main(["--bundle", str(copy), "--data", str(data), "--exclude-cases", "held_out", "--out", str(out),
                 "--expansions", "2", "--min-crop-mm", "30", "--parts", "text,always", "--clicks", "5",
                 "--rounds", "1", "--apply"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    flat = [r for r in rows if r["protocol"] == "2d"]
    assert len(flat) == 6 and [r["zoom"]["enabled"] for r in flat] == [False, False, True, True, True, True]
    assert [r["zoom"]["box_alone"] for r in flat[2:]] == [True, True, False, False]
    assert json.loads((out / "config.json").read_text())["cases"] == ["case_a"]   # held_out left out
    chosen = max(flat, key=lambda r: (round(r["score"], 4), -r["candidate"]))
    for row in rows:
        assert row["score"] == pytest.approx((row["click_dice"] + row["box_dice"]) / 2)
    checks = [r for r in rows if r["protocol"] == "3d"]
    if chosen["zoom"]["enabled"]:      # the 3D check decides zoom on propagated masks and on a box alone
        assert [(r["zoom"]["propagated"], r["zoom"]["box_alone"]) for r in checks] == [
            (True, True), (True, False), (False, True), (False, False)]
        chosen = max(checks, key=lambda r: (round(r["score"], 4), -r["candidate"]))
    else:
        assert not checks
    info = json.loads((copy / "inference_info.json").read_text())
    assert info["zoom"] == chosen["zoom"] and info["prompted_parts"] == chosen["prompted_parts"]
    assert info["box_fill"] == {"enabled": True, "min_span": 0.5, "thresholds": [0.4, 0.3, 0.2]}   # as shipped
    # the growth check as shipped, its neighbour mode kept from the bundle (it is not chosen here)
    assert info["growth_check"] == {"enabled": True, "max_growth": 2.0, "thresholds": [0.6, 0.7, 0.8, 0.9, 0.95],
                                    **neighbour}
    assert "training/tune/train.log" in info["training_records"] and info["inference_tuning"]["run"] == "tune"
    engine = imis.load_model(str(copy), device="cpu")
    assert engine.zoom == ZoomSettings(**chosen["zoom"]) and engine.prompted_parts == chosen["prompted_parts"]
    # bad input: one line, the bundle untouched
    before = (copy / "inference_info.json").read_text()
    assert main(["--bundle", str(copy), "--data", str(data), "--out", str(tmp_path / "t2"), "--parts", "never",
                 "--apply"]) == 2
    assert "--parts" in capsys.readouterr().err
    assert (copy / "inference_info.json").read_text() == before


def test_the_parts_rule_keeps_propagated_parts_but_not_the_engines_own_unclicked_ones(bundle):
    """The network's output is pinned to two blobs (run_network replaced: the rule, not the network, is tested)."""
    from IMISSegmentLib.engines.onnx_engine import ClickNetState, _mask_digest
    engine = _engine(bundle, prompted_parts="always")
    logits = np.full((1, 1, 256, 256), -10.0, np.float32)
    logits[..., 20:60, 20:60] = 10.0           # slice rows / cols 5-15
    logits[..., 160:200, 160:200] = 10.0       # slice rows / cols 40-50
    engine.run_network = lambda image, prompts, text=None, on_propagated=False: logits
    image = np.zeros((64, 64), np.float32)
    both = _mask((64, 64), (5, 15), (5, 15)) | _mask((64, 64), (40, 50), (40, 50))

    def predict(**kwargs):
        return engine.predict_slice(SliceRequest(0, 1, image, image, (1.0, 1.0), clicks=[(10, 10, True)], **kwargs))

    assert predict().mask[45, 45] == 0 and predict().mask[10, 10]                 # the unclicked blob goes
    assert predict(previous_mask=both).mask[45, 45]                                # propagated there: it stays
    own = ClickNetState(0, 1, (64, 64), np.zeros((256, 256), np.float32), _mask_digest(both))
    assert predict(previous_mask=both, previous_state=own).mask[45, 45] == 0      # the engine's own (text alone)


def test_tune_inference_can_choose_the_input_gamma_and_keeps_the_zoom(bundle, tmp_path, capsys, write_block_case,
                                                                       monkeypatch):
    from IMISSegmentLib.engines.onnx_engine import OnnxClickEngine
    from training.analysis.tune_inference import main
    seen, built = [], OnnxClickEngine.__init__

    def spy(self, *args, **kwargs):   # the engines the grid evaluates, and the gamma each was given
        built(self, *args, **kwargs)
        seen.append(self.input_gamma)
    monkeypatch.setattr(OnnxClickEngine, "__init__", spy)
    data = tmp_path / "data"
    write_block_case(data / "case_a", 0)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = json.loads((copy / "inference_info.json").read_text())
    out = tmp_path / "gamma"
    code = main(["--bundle", str(copy), "--data", str(data), "--out", str(out), "--input-gammas", "0.5,1,2",
                 "--clicks", "5", "--apply"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["input_gamma"] for r in rows] == [1.0, 2.0, 0.5] and {r["protocol"] for r in rows} == {"2d"}
    assert len({json.dumps(r["zoom"], sort_keys=True) for r in rows}) == 1   # the zoom is held, not searched
    assert sorted(set(seen)) == [0.5, 1.0, 2.0]   # each candidate's gamma reached the engine it evaluated
    chosen = max(rows, key=lambda r: (round(r["score"], 4), -r["candidate"]))
    info = json.loads((copy / "inference_info.json").read_text())
    assert info["input_gamma"] == chosen["input_gamma"] and info.get("zoom") == rows[0]["zoom"]
    assert info["prompted_parts"] == before.get("prompted_parts", "text")
    assert imis.load_model(str(copy), device="cpu").input_gamma == chosen["input_gamma"]
    assert "input_gamma" in (out / "train.log").read_text().splitlines()[-1]
    assert info["input_gamma_tuning"]["run"] == "gamma"
    assert info.get("inference_tuning") == before.get("inference_tuning")   # the zoom's own record stays
    assert main(["--bundle", str(copy), "--data", str(data), "--out", str(tmp_path / "bad"),
                 "--input-gammas", "0.1"]) == 2
    assert "--input-gammas must list numbers between 0.2 and 5" in capsys.readouterr().err
