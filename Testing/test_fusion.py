"""Multi-round fusion (issue #5): the defective-mask generator, the MRF network and its export, fusion in the
session (rounds, the user's slices, undo of a whole round, switching it off), and the evaluation's ablation."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from IMISSegmentLib import InteractiveSession  # noqa: E402
from IMISSegmentLib.errors import InputError  # noqa: E402
from IMISSegmentLib.fusion import FusionSettings, fuse_rounds, round_direction  # noqa: E402
from IMISSegmentLib.fusion.quality import FUSION_STAGE, fusion_inputs  # noqa: E402
from IMISSegmentLib.models import default_bundle_dir, load_model  # noqa: E402
from IMISSegmentLib.networks.mrf_net import build_mrf_net, make_config  # noqa: E402
from training.data import defects  # noqa: E402
from training.export.mrf import add_fusion  # noqa: E402
from training.data.mrf_data import pair_target  # noqa: E402

TINY = {"input_size": 32, "stem": 8, "widths": [8, 16], "blocks": [0, 1], "hidden": 8}


def _disk(shape=(128, 128), centre=(64, 60), radii=(25, 18)):
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    return ((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2 <= 1


def _biased_network(bias: float, config=TINY):
    """A real MRF network whose output is pinned by its last bias: +20 -> "previous better" everywhere."""
    network = build_mrf_net(config, seed=0).eval()
    with torch.no_grad():
        network.head[-1].weight.zero_()
        network.head[-1].bias.fill_(bias)
    return network


def _bundle(tmp_path, bias=None, network=None, settings=None):
    """The shipped bundle (click + propagation networks) with an MRF stage added."""
    out = tmp_path / f"bundle_{bias}"
    if bias is not None and out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(default_bundle_dir(), out)
    add_fusion(network if network is not None else _biased_network(bias), out, settings)
    return out


def _tube_volume():
    """(volume, truth): a bright tube through 24 slices of 64 x 64, 2 mm slices."""
    rng = np.random.default_rng(0)
    k, j, i = np.indices((24, 64, 64))
    truth = ((j - 32 - 0.3 * (k - 12)) ** 2 + (i - 30) ** 2 <= 10 ** 2) & (k >= 3) & (k <= 20)
    volume = rng.normal(40, 12, truth.shape).astype(np.float32) + 380 * truth
    volume[:, :2] = -1000
    return volume, truth


# -- defective masks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,relation", [("dilated", "superset"), ("eroded", "subset"),
                                           ("shapes_removed", "subset"), ("shapes_merged", "superset"),
                                           ("shapes_added", "superset"), ("boundary_moved", "changed"),
                                           ("smoothed", "changed")])
def test_each_corruption_spoils_the_mask_its_own_way(name, relation):
    mask, rng = _disk(), np.random.default_rng(1)
    config = defects.DefectConfig(probabilities={name: 1.0}, reference_px=128)
    changed = 0
    for _ in range(5):
        out = defects.corrupt_mask(mask, rng, config)
        assert out.shape == mask.shape and out.dtype == bool
        if relation == "superset":
            assert not (mask & ~out).any()
        elif relation == "subset":
            assert not (out & ~mask).any()
        changed += int(not np.array_equal(out, mask))
    assert changed >= 4


def test_dilation_follows_lim_net_amounts_scaled_to_the_canvas():
    mask = _disk()
    grown = defects.corrupt_mask(mask, np.random.default_rng(0),
                                 defects.DefectConfig(probabilities={"dilated": 1.0}, dilation_px=(20, 20),
                                                      reference_px=256))
    # 20 px on a 256 px reference = 10 px on this 128 px canvas: the vertical radius grows 25 -> 35
    rows = np.flatnonzero(grown[:, 60])
    assert rows[-1] - rows[0] + 1 == pytest.approx(2 * 35 + 1, abs=2)


def test_defect_config_rejects_unknown_corruptions_and_empty_masks():
    with pytest.raises(ValueError, match="unknown corruptions"):
        defects.DefectConfig.from_dict({"probabilities": {"melted": 1.0}})
    with pytest.raises(ValueError, match="non-empty"):
        defects.corrupt_mask(np.zeros((8, 8), bool), np.random.default_rng(0))


def test_pair_target_prefers_fewer_wrong_pixels_and_drops_ties():
    truth = _disk()
    worse = truth | _disk(centre=(64, 100), radii=(10, 10))
    assert pair_target(truth, worse, truth)[0] == 1.0 and pair_target(worse, truth, truth)[0] == 0.0
    assert pair_target(truth, truth.copy(), truth)[1] == 0.0
    # a slice past the structure's end: nothing is right, a leaked mask is wrong
    empty = np.zeros_like(truth)
    assert pair_target(empty, truth, empty) == (1.0, 1.0)


# -- network, inputs, export --------------------------------------------------------------------------
def test_network_config_inputs_and_output_shape():
    with pytest.raises(ValueError, match="multiple of"):
        make_config({"input_size": 50})
    previous, current = _disk(), _disk(centre=(64, 70))
    inputs = fusion_inputs(np.random.default_rng(0).random((128, 128)), previous, current, (0.8, 0.8), 32)
    assert inputs.shape == (3, 32, 32) and inputs.dtype == np.float32
    assert inputs[1].max() > 0.9 and inputs[2].max() > 0.9 and not np.allclose(inputs[1], inputs[2])
    network = build_mrf_net(TINY, seed=0).eval()
    assert set(dict(network.named_children())) == {"stem", "levels", "head"}
    with torch.inference_mode():
        assert network(torch.from_numpy(np.stack([inputs, inputs])), torch.zeros(2, 2)).shape == (2, 1)


def test_slice_context_measures_distances_to_new_and_older_prompts_in_mm():
    from IMISSegmentLib.fusion.quality import CONTEXT_CAP, CONTEXT_SCALE_MM, slice_context
    context = slice_context(10, new_indices=[14], other_indices=[2, 30], spacing_mm=3.0)
    np.testing.assert_allclose(context, [12.0 / CONTEXT_SCALE_MM, 24.0 / CONTEXT_SCALE_MM])
    assert list(slice_context(10, [], [500], 3.0)) == [CONTEXT_CAP, CONTEXT_CAP]


def test_the_request_names_the_slices_prompted_in_this_round(growcut_engine):
    from conftest import synthetic_ct_volume
    session = InteractiveSession(growcut_engine)
    session.set_volume(synthetic_ct_volume(), (3.0, 1.0, 1.0))
    session.add_click((6, 32, 30), positive=True)
    session.add_click((5, 32, 30), positive=True)
    assert session.propagation_request().new_prompted == ((0, 6), (0, 5))
    session.propagate()
    assert session.propagation_request().new_prompted == ()
    session.add_click((7, 32, 30), positive=False)
    request = session.propagation_request()
    assert request.new_prompted == ((0, 7),)
    assert [(c.point, c.positive) for c in request.new_prompts] == [((7, 32, 30), False)]


def test_the_request_names_this_rounds_slices_that_had_no_mask_before_it(growcut_engine):
    """new_empty (fusion extend "clicked"): the slices of this round that were empty before their first prompt
    of the round, however many prompts followed there; an undone prompt no longer counts."""
    from conftest import synthetic_ct_volume
    session = InteractiveSession(growcut_engine)
    session.set_volume(synthetic_ct_volume(), (3.0, 1.0, 1.0))
    session.add_click((6, 32, 30), positive=True)
    assert session.propagation_request().new_empty == ((0, 6),)
    session.propagate()
    assert session.result[5].any() and not session.result[0].any()
    session.add_click((5, 32, 30), positive=True)      # had a propagated mask
    session.add_click((0, 32, 30), positive=True)      # was empty
    assert session.result[0].any()                     # the first click there gave it a mask
    session.add_click((0, 30, 30), positive=True)      # second click there: still empty before the round
    assert session.propagation_request().new_empty == ((0, 0),)
    session.undo()
    session.undo()
    assert session.propagation_request().new_empty == ()


def test_a_rounds_direction_comes_from_clicks_of_one_kind_alone():
    from IMISSegmentLib.prompts import Box, Click, TextPrompt
    plus, minus = Click((3, 4, 5), True), Click((4, 4, 5), False)
    assert round_direction([plus, Click((5, 1, 1), True)]) == 1
    assert round_direction([minus]) == -1
    for prompts in ([], [plus, minus], [plus, Box(0, 3, (1, 1), (5, 5))], [minus, TextPrompt("liver", 0, 3)]):
        assert round_direction(prompts) == 0


def test_export_matches_torch_and_a_corrupt_stage_fails_to_load(tmp_path):
    network = build_mrf_net(TINY, seed=3).eval()
    bundle = _bundle(tmp_path, network=network, settings=FusionSettings(threshold=0.6))
    info = json.loads((bundle / "inference_info.json").read_text())
    assert info["fusion"]["settings"]["threshold"] == 0.6 and "fuse" in info["capabilities"]
    assert info["fusion"]["export_check"]["max_abs_logit_difference"] < 1e-4
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine
    onnx_engine, torch_engine = load_model(str(bundle)), TorchClickEngine(bundle, device="cpu")
    inputs = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    context = np.random.default_rng(1).uniform(0, 3, (6, 2)).astype(np.float32)
    np.testing.assert_allclose(onnx_engine.fusion_scorer.score(inputs, context),
                               torch_engine.fusion_scorer.score(inputs, context), atol=1e-5)
    # the context reaches the output
    assert not np.allclose(onnx_engine.fusion_scorer.score(inputs, context),
                           onnx_engine.fusion_scorer.score(inputs, np.zeros_like(context)))
    path = bundle / f"{FUSION_STAGE}.onnx"
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(InputError, match="sha256|checksum"):
        load_model(str(bundle))


def test_the_session_follows_the_bundles_default_unless_told(tmp_path):
    for enabled in (True, False):
        engine = load_model(str(_bundle(tmp_path / str(enabled), network=_biased_network(0.0),
                                        settings=FusionSettings(enabled=enabled))))
        assert "fuse" in engine.capabilities
        assert InteractiveSession(engine).fusion is enabled
        assert InteractiveSession(engine, fusion=not enabled).fusion is (not enabled)


def test_fusion_settings_are_checked():
    with pytest.raises(InputError, match="threshold"):
        FusionSettings.from_dict({"threshold": 1.5})
    with pytest.raises(InputError, match="unknown fusion settings"):
        FusionSettings.from_dict({"treshold": 0.5})


# -- fuse_rounds and the session ----------------------------------------------------------------------
def test_fuse_rounds_keeps_what_the_network_prefers_except_on_the_users_slices(tmp_path):
    volume, truth = _tube_volume()
    engine = load_model(str(_bundle(tmp_path, bias=20.0)))
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.normalize import intensity_window
    context = VolumeContext(volume, (2.0, 1.0, 1.0), intensity_window(volume))
    previous = truth.astype(np.uint8)
    current = np.zeros_like(previous)
    current[5:15, 20:40, 20:40] = 1
    fused, report = fuse_rounds(context, previous, current, 0, engine.fusion_scorer,
                                FusionSettings(batch_size=4), protected=[7])
    differing = [k for k in range(24) if not np.array_equal(previous[k], current[k])]
    assert report["differing"] == report["scored"] == len(differing) - 1
    assert report["kept_previous"] == [k for k in differing if k != 7]
    np.testing.assert_array_equal(fused[7], current[7])
    np.testing.assert_array_equal(np.delete(fused, 7, 0), np.delete(previous, 7, 0))


def test_contiguous_spread_keeps_the_new_masks_only_next_to_this_rounds_slice(tmp_path):
    volume, truth = _tube_volume()
    engine = load_model(str(_bundle(tmp_path, bias=-20.0)))     # the network always prefers the new mask
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.normalize import intensity_window
    context = VolumeContext(volume, (2.0, 1.0, 1.0), intensity_window(volume))
    previous = truth.astype(np.uint8)
    current = previous.copy()
    current[6:11, 20:40, 20:40] = 1          # changed next to the corrected slice 8 (and on it)
    current[16:19, 0:5, 0:5] = 1             # changed far away, with unchanged slices in between
    settings = FusionSettings(batch_size=4, spread="contiguous")
    fused, report = fuse_rounds(context, previous, current, 0, engine.fusion_scorer, settings, protected=[8, 12],
                                new_prompted=[8])
    np.testing.assert_array_equal(fused[6:11], current[6:11])
    np.testing.assert_array_equal(fused[16:19], previous[16:19])
    assert report["kept_previous"] == [16, 17, 18]
    # "all" takes every new mask the network prefers; without a slice prompted this round nothing spreads
    for kwargs in ({"settings": FusionSettings(batch_size=4)}, {"settings": settings, "new_prompted": []}):
        fused, report = fuse_rounds(context, previous, current, 0, engine.fusion_scorer, protected=[8], **kwargs)
        np.testing.assert_array_equal(fused, current)
    with pytest.raises(InputError, match="spread"):
        FusionSettings.from_dict({"spread": "far"})


def test_agree_spread_stops_where_the_new_masks_agree_with_the_previous_ones(tmp_path):
    """A correction on slice 8 reaches its neighbours until a slice whose new mask already agrees with the
    previous one; the re-propagation's drift beyond it (slices 3-4, 13-15) is dropped; another user's slice (11)
    ends the reach too."""
    volume, truth = _tube_volume()
    context = _volume_context(volume)
    previous = truth.astype(np.uint8)
    current = previous.copy()
    current[6:11, 20:40, 20:40] = 1          # the correction's neighbourhood: far from the previous masks
    current[5, 22:24, 22:24] = 1             # slice 5 changed a little: it agrees (Dice >= 0.9) and ends the reach
    current[3:5, 20:40, 20:40] = 1           # drift beyond the agreeing slice
    current[13:16, 20:40, 20:40] = 1         # beyond the user's older slice 11
    settings = FusionSettings(batch_size=4, spread="agree", agree_dice=0.9, network=False)
    fused, report = fuse_rounds(context, previous, current, 0, None, settings, protected=[8, 11], new_prompted=[8])
    np.testing.assert_array_equal(fused[6:11], current[6:11])
    np.testing.assert_array_equal(fused[11], current[11])
    for k in (3, 4, 5, 13, 14, 15):
        np.testing.assert_array_equal(fused[k], previous[k])
    assert report["kept_previous"] == [3, 4, 5, 13, 14, 15]
    # a stricter agreement (1.0) lets the reach run on through slice 5's small change to the drift beyond it
    fused, _ = fuse_rounds(context, previous, current, 0, None, FusionSettings(spread="agree", agree_dice=1.0,
                                                                               network=False),
                           protected=[8, 11], new_prompted=[8])
    np.testing.assert_array_equal(fused[3:11], current[3:11])
    np.testing.assert_array_equal(fused[13:16], previous[13:16])
    for bad in (0.0, 1.5, "0.9", True, None):
        with pytest.raises(InputError, match="agree_dice"):
            FusionSettings.from_dict({"agree_dice": bad})


def test_extend_clicked_keeps_slices_past_the_ends_empty_unless_the_user_extends_the_structure():
    """extend "clicked": a correction on slice 18 (it had a mask) whose re-propagation runs on past the tube's
    end (slices 21-23, empty in the previous round) keeps them empty; the changed slices inside the ends
    (19-20) take the new masks. A click on slice 21, empty before the round, extends the structure: the new
    masks past it are taken. "always" takes them in both cases; a bad name is an error naming it."""
    volume, truth = _tube_volume()
    context = _volume_context(volume)
    previous = truth.astype(np.uint8)
    current = previous.copy()
    current[18:24, 46:60, 46:60] = 1          # the correction (18) and its neighbours, then on past the end (20)
    clicked = FusionSettings(spread="agree", agree_dice=0.9, network=False, extend="clicked")
    fused, report = fuse_rounds(context, previous, current, 0, None, clicked, protected=[18], new_prompted=[18])
    np.testing.assert_array_equal(fused[18:21], current[18:21])
    np.testing.assert_array_equal(fused[21:], previous[21:])
    assert report["kept_previous"] == [21, 22, 23]
    fused, _ = fuse_rounds(context, previous, current, 0, None, clicked, protected=[21], new_prompted=[21],
                           extending=[21])
    np.testing.assert_array_equal(fused[18:], current[18:])
    always = FusionSettings(spread="agree", agree_dice=0.9, network=False)
    assert always.extend == "always"
    fused, _ = fuse_rounds(context, previous, current, 0, None, always, protected=[18], new_prompted=[18])
    np.testing.assert_array_equal(fused[18:], current[18:])
    with pytest.raises(InputError, match="fusion extend must be one of always, clicked"):
        FusionSettings.from_dict({"extend": "sometimes"})


def _volume_context(volume):
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.normalize import intensity_window
    return VolumeContext(volume, (2.0, 1.0, 1.0), intensity_window(volume))


def test_direction_check_keeps_slices_that_moved_against_the_round(tmp_path):
    volume, truth = _tube_volume()
    context = _volume_context(volume)
    previous = truth.astype(np.uint8)
    current = previous.copy()
    current[6, 20:30] = 0                    # shrinks by 45 %
    current[7, 20:25] = 0                    # shrinks by 15 %: within the margin
    current[14, 38:50, 22:38] = 1            # grows by about a third
    current[16, 5:8, 5:8] = 1                # grows by 3 %: within the margin
    settings = FusionSettings(direction_margin=0.2, network=False)
    expected = {1: [6], -1: [14], 0: []}     # positive clicks: less is wrong; negative clicks: more is wrong
    for direction, kept in expected.items():
        fused, report = fuse_rounds(context, previous, current, 0, None, settings, protected=[10],
                                    direction=direction)
        assert report["kept_previous"] == report["against_direction"] == kept and report["scored"] == 0
        expect = current.copy()
        expect[kept] = previous[kept]
        np.testing.assert_array_equal(fused, expect)
    # the network decides the rest: "previous better" everywhere keeps all four, its scores only on three
    engine = load_model(str(_bundle(tmp_path, bias=20.0)))
    fused, report = fuse_rounds(context, previous, current, 0, engine.fusion_scorer,
                                FusionSettings(direction_margin=0.2), protected=[10], direction=1)
    assert report["kept_previous"] == [6, 7, 14, 16] and report["against_direction"] == [6]
    assert report["scored"] == 3
    np.testing.assert_array_equal(fused, previous)


def _settings_only_bundle(tmp_path, settings: dict):
    """The shipped bundle without the MRF network, its fusion entry set by the settings command."""
    from training.export.fusion_settings import set_fusion_settings
    plain = tmp_path / "settings_only"
    shutil.copytree(default_bundle_dir(), plain)
    info = json.loads((plain / "inference_info.json").read_text())
    info.pop("fusion")
    info["stages"].pop(FUSION_STAGE)
    (plain / "inference_info.json").write_text(json.dumps(info))
    (plain / f"{FUSION_STAGE}.onnx").unlink()
    (plain / "mrf_net.pt").unlink()
    set_fusion_settings(plain, settings)
    return plain


@pytest.mark.parametrize("with_network", [True, False])
def test_the_engine_takes_the_direction_from_the_rounds_prompts(tmp_path, with_network):
    from IMISSegmentLib.engines.base import PropagationRequest
    from IMISSegmentLib.prompts import Click
    volume, truth = _tube_volume()
    if with_network:   # the network would take every new mask; the check alone decides
        bundle = _bundle(tmp_path / "direction", network=_biased_network(-20.0),
                         settings=FusionSettings(direction_margin=0.2, network=False))
    else:              # a bundle without the MRF network: the direction check works from the settings alone
        bundle = _settings_only_bundle(tmp_path, {"direction_margin": 0.2})
    engine = load_model(str(bundle))
    assert "fuse" in engine.capabilities and (engine.fusion_scorer is None) != with_network
    engine.set_volume(_volume_context(volume))
    previous = truth.astype(np.uint8)
    current = previous.copy()
    current[6, 20:30] = 0
    click = Click((10, 30, 30), positive=True)
    for prompts, kept in (((click,), [6]), ((Click((10, 30, 30), positive=False),), [])):
        request = PropagationRequest(clicks=list(prompts), boxes=[], texts=[],
                                     prompted={(0, 10): previous[10].astype(bool)}, result=previous,
                                     new_prompted=((0, 10),), new_prompts=prompts)
        fused = engine.fuse_rounds(request, previous, current)
        assert engine.last_fusion["kept_previous"] == kept and engine.last_fusion["scored"] == 0
        np.testing.assert_array_equal(fused[6], (previous if kept else current)[6])


def test_a_bundle_without_the_network_fuses_rounds_in_a_session_and_cannot_ask_for_it(tmp_path):
    from training.export.fusion_settings import set_fusion_settings
    bundle = _settings_only_bundle(tmp_path, {"enabled": True, "direction_margin": 0.5})
    info = json.loads((bundle / "inference_info.json").read_text())
    assert "network" not in info["fusion"] and info["fusion"]["settings"]["network"] is False
    assert "fuse" in info["capabilities"]
    volume, truth = _tube_volume()
    session = InteractiveSession(load_model(str(bundle)))
    assert session.fusion and session.can_fuse
    session.set_volume(volume, (2.0, 1.0, 1.0))
    session.add_box(12, (20, 18), (46, 42))
    assert session.propagate().fusion is None            # the first round has nothing to fuse with
    session.add_click((18, 36, 30), positive=False)
    report = session.propagate().fusion
    assert report is not None and report["scored"] == 0 and "against_direction" in report
    # asking for the network it does not have: a clear error, from the command and from the engine
    before = (bundle / "inference_info.json").read_bytes()
    with pytest.raises(InputError, match="no MRF quality network"):
        set_fusion_settings(bundle, {"network": True})
    assert (bundle / "inference_info.json").read_bytes() == before
    engine = load_model(str(bundle))
    with pytest.raises(InputError, match="has none"):
        engine.configure_fusion({"network": True})
    info["fusion"]["settings"]["network"] = True
    (bundle / "inference_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="has none"):
        load_model(str(bundle))
    with pytest.raises(InputError, match="there is none"):
        fuse_rounds(_volume_context(volume), truth.astype(np.uint8), truth.astype(np.uint8), 0, None,
                    FusionSettings(network=True))


def test_direction_margin_is_checked():
    assert FusionSettings.from_dict({"direction_margin": 0.25}).direction_margin == 0.25
    for bad in (-0.1, "large", True):
        with pytest.raises(InputError, match="direction_margin"):
            FusionSettings.from_dict({"direction_margin": bad})
    for name in ("network", "enabled"):
        with pytest.raises(InputError, match=f"fusion {name} must be true or false"):
            FusionSettings.from_dict({name: "false"})


def _two_rounds(session, truth):
    session.add_box(12, (20, 18), (46, 42))
    session.propagate()
    first = session.result.copy()
    session.add_click((18, 36, 30), positive=False)
    update = session.propagate()
    return first, update


def test_session_fuses_from_the_second_round_and_keeps_the_users_slices(tmp_path):
    volume, truth = _tube_volume()
    results = {}
    for name, bias, fusion in (("keep", 20.0, True), ("take", -20.0, True), ("off", 20.0, False)):
        session = InteractiveSession(load_model(str(_bundle(tmp_path, bias=bias))), fusion=fusion)
        session.set_volume(volume, (2.0, 1.0, 1.0))
        first, update = _two_rounds(session, truth)
        results[name] = (first, session.result.copy(), update, session)
    first, keep, update, session = results["keep"]
    assert session.can_fuse and session.rounds == 2
    assert update.fusion is not None and update.fusion["scored"] >= 1
    # "previous better" everywhere: only the clicked slice differs from round one
    changed = [k for k in range(24) if not np.array_equal(first[k], keep[k])]
    assert changed in ([], [18])
    np.testing.assert_array_equal(keep[18], session.propagation_request().prompted[(0, 18)].astype(np.uint8))
    # "current better" everywhere is the same as fusion off
    np.testing.assert_array_equal(results["take"][1], results["off"][1])
    assert results["off"][2].fusion is None and results["take"][2].fusion["kept_previous"] == []


def test_undo_round_reverts_the_prompts_and_the_propagation_of_a_round(tmp_path):
    volume, truth = _tube_volume()
    session = InteractiveSession(load_model(str(_bundle(tmp_path, bias=-20.0))))
    session.set_volume(volume, (2.0, 1.0, 1.0))
    session.add_box(12, (20, 18), (46, 42))
    session.propagate()
    after_round_one, prompts = session.result.copy(), session.prompts
    session.add_click((18, 36, 30), positive=False)
    session.add_click((6, 30, 30), positive=True)
    session.propagate()
    assert session.rounds == 2 and len(session.prompts) == 3
    assert session.undo_round()
    np.testing.assert_array_equal(session.result, after_round_one)
    assert session.prompts == prompts and session.rounds == 1
    # before the round is propagated, undo_round drops its prompts so far
    session.add_click((18, 36, 30), positive=False)
    assert session.undo_round() and session.prompts == prompts
    np.testing.assert_array_equal(session.result, after_round_one)
    assert session.undo_round() and session.rounds == 0 and not session.result.any()
    assert not session.undo_round()


def test_propagating_again_without_a_new_prompt_keeps_the_last_rounds_fusion(tmp_path):
    """The second round is fused (its direction from its click); pressing propagate again with no new prompt
    must not re-run it unfused (it has no prompts to take a direction from): nothing changes, no round is
    added. With fusion switched off since, it re-runs: the plain re-propagation."""
    volume, truth = _tube_volume()
    session = InteractiveSession(load_model(str(_bundle(tmp_path, bias=-20.0))))
    session.set_volume(volume, (2.0, 1.0, 1.0))
    session.add_box(12, (20, 18), (46, 42))
    session.propagate()
    session.add_click((6, 30, 30), positive=True)
    session.propagate()
    fused, history = session.result.copy(), session.history_bytes
    calls = []
    update = session.propagate(progress=lambda done, total: calls.append((done, total)))
    assert update.changed_voxels == 0 and session.rounds == 2 and session.history_bytes == history
    np.testing.assert_array_equal(session.result, fused)
    assert calls and calls[-1][0] == calls[-1][1]
    session.fusion = False
    session.propagate()
    assert session.rounds == 3
    plain = InteractiveSession(load_model(str(_bundle(tmp_path, bias=-20.0))), fusion=False)
    plain.set_volume(volume, (2.0, 1.0, 1.0))
    plain.add_box(12, (20, 18), (46, 42))
    plain.propagate()
    plain.add_click((6, 30, 30), positive=True)
    plain.propagate()
    np.testing.assert_array_equal(session.result, plain.result)


# -- evaluation: the ablation in one run --------------------------------------------------------------
def test_evaluate_runs_with_and_without_fusion_and_counts_drops(tmp_path):
    from IMISSegmentLib.engines.onnx_engine import OnnxClickEngine
    from IMISSegmentLib.evaluation.runner import evaluate
    _write_case(tmp_path / "data", *_tube_volume())
    bundle = _bundle(tmp_path, bias=20.0)
    results = evaluate(tmp_path / "data", ["clicknet"], tmp_path / "eval", protocols=["3d"], prompts=["box"],
                       rounds_3d=2, save_masks=False, progress=False, fusion="both",
                       engine_factory=lambda name: OnnxClickEngine(bundle))
    assert sorted(r["method"] for r in results["records"]) == ["clicknet", "clicknet-nomrf"]
    for record in results["records"]:
        assert record["corrections"] == 2 and 0 <= record["drops_clicked_slice"] <= record["drops"] <= 2
        rounds = record["rounds"]   # each correction round, as results.json keeps it
        dice = [step["dice"] for step in record["steps"]]
        assert len(rounds) == sum(step["action"] != "none" for step in record["steps"][1:])
        for n, r in enumerate(rounds, start=1):
            assert r["dice_before"] == pytest.approx(dice[n - 1]) and r["dice_after"] == pytest.approx(dice[n])
            assert r["positive"] in (True, False) and r["wrong_before"] >= 0 and r["wrong_after"] >= 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["rounds"] for r in saved["records"]] == [r["rounds"] for r in results["records"]]
    fused = next(r for r in results["records"] if not r["method"].endswith("-nomrf"))
    assert any(step["fusion_seconds"] > 0 for step in fused["steps"][1:] if step["action"] != "none") or \
        all(step["action"] == "none" for step in fused["steps"][1:])
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "-nomrf" in summary and "drops" in summary
    with pytest.raises(InputError, match="fusion"):
        evaluate(tmp_path / "data", ["clicknet"], tmp_path / "e2", fusion="sometimes",
                 engine_factory=lambda name: OnnxClickEngine(bundle))


# -- training: round pairs from the session, the loop, resume, export ----------------------------------
def _write_case(root, volume, truth):
    import SimpleITK as sitk
    case = root / "tube"
    case.mkdir(parents=True)
    for name, array in (("image", volume.astype(np.int16)), ("label", truth.astype(np.uint8))):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(case / f"{name}.nii.gz"))
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "tube"}}))
    return case


def test_round_pairs_training_resume_and_export(tmp_path):
    from training.export.mrf import main as export_main
    from training.data.mrf_data import collect_round_pairs, load_round_pairs
    from training.loops.run import _merge
    from training.loops.mrf import DEFAULTS, train
    volume, truth = _tube_volume()
    _write_case(tmp_path / "data", volume, truth)
    arrays = collect_round_pairs(tmp_path / "data", axes=(0, 2), prompts=("box",), rounds=2, size=32,
                                 engine=load_model(str(default_bundle_dir())), log=lambda *a: None)
    n = len(arrays["target"])
    assert n > 0 and arrays["inputs"].shape == (n, 3, 32, 32) and arrays["context"].shape == (n, 2)
    assert arrays["inputs"].dtype == np.uint8 and set(np.unique(arrays["target"])) <= {0.0, 1.0}
    # the target agrees with the recorded wrong-pixel counts
    errors = arrays["errors"]
    assert np.array_equal(arrays["target"] > 0.5, errors[:, 0] < errors[:, 1])
    np.savez(tmp_path / "pairs.npz", **arrays)
    assert len(load_round_pairs([tmp_path / "pairs.npz"] * 2)["meta"]) == 2 * n

    config = _merge(DEFAULTS, {"network": TINY, "steps": 5, "batch_size": 8, "log_every": 1, "checkpoint_every": 1,
                               "data": {"roots": [str(tmp_path / "data")], "phantom_fraction": 0.0, "synthetic_pairs": 16,
                                        "round_pairs": str(tmp_path / "pairs.npz"), "round_fraction": 0.5},
                               "validation": {"share": 1.0, "every": 2}, "num_threads": 1})
    first = train(dict(config, steps=5), tmp_path / "run", progress=False, stop_at=3)
    assert first["step"] == 3
    resumed = train(config, tmp_path / "run", progress=False)
    assert resumed["step"] == 5 and resumed["validation"]["pairs"] == n
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resumed at step 3" in log and "threshold sweep" in log
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), bundle)
    assert export_main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--bundle", str(bundle),
                        "--settings", '{"threshold": 0.4}', "--runs", str(tmp_path / "run")]) == 0
    info = json.loads((bundle / "inference_info.json").read_text())
    assert info["fusion"]["settings"]["threshold"] == 0.4 and "training/run/train.log" in info["training_records"]
    assert "fuse" in load_model(str(bundle)).capabilities
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--bundle", str(bundle)]) == 2


def test_cli_takes_the_fusion_switch():
    from IMISSegmentLib.cli import build_parser
    parser = build_parser()
    assert parser.parse_args(["evaluate", "data", "--out", "o"]).mrf == "default"
    assert parser.parse_args(["evaluate", "data", "--out", "o", "--mrf", "both"]).mrf == "both"
    assert parser.parse_args(["demo", "--mrf", "off"]).mrf == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "data", "--out", "o", "--mrf", "sometimes"])


def test_the_round_pair_command_runs_along_the_axes_it_is_given(tmp_path, monkeypatch):
    """python -m training.data.mrf_data --axes: only those propagation axes (the 512-slice axes of a thin-slab
    volume are what make a collection slow)."""
    from training.data.mrf_data import load_round_pairs, main
    volume, truth = _tube_volume()
    _write_case(tmp_path / "data", volume, truth)
    monkeypatch.setenv("IMIS_SEGMENT_MODEL", str(default_bundle_dir()))
    out = tmp_path / "pairs.npz"
    arguments = ["--roots", str(tmp_path / "data"), "--exclude", "--axes", "2", "--rounds", "1", "--out", str(out)]
    assert main(arguments) == 0
    assert {m["axis"] for m in load_round_pairs(out)["meta"]} == {2}
    # --include: only the named cases (a second copy of the case is left out); --prompts: only those first prompts
    shutil.copytree(tmp_path / "data" / "tube", tmp_path / "data" / "tube_copy")
    chosen = tmp_path / "chosen.npz"
    assert main(["--roots", str(tmp_path / "data"), "--exclude", "--include", "tube_copy", "--prompts", "click",
                 "--axes", "0", "--rounds", "1", "--out", str(chosen)]) == 0
    meta = load_round_pairs(chosen)["meta"]
    assert {m["case"] for m in meta} == {"tube_copy"} and {m["prompt"] for m in meta} == {"click"}
    with pytest.raises(SystemExit):
        main(["--roots", str(tmp_path / "data"), "--axes", "3", "--out", str(tmp_path / "bad.npz")])
    # a misspelt root and an --out that cannot be written are said before the collection, not skipped or after
    assert main(["--roots", str(tmp_path / "data"), str(tmp_path / "dta"), "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["--roots", str(tmp_path / "data"), "--out", str(out / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob("*.partial.npz"))


def test_fusion_settings_command_replaces_the_settings_and_keeps_the_network(tmp_path, capsys):
    from training.export.fusion_settings import main as set_settings
    bundle = _bundle(tmp_path, network=_biased_network(20.0), settings=FusionSettings(threshold=0.6))
    onnx_before = (bundle / f"{FUSION_STAGE}.onnx").read_bytes()
    run = tmp_path / "fusion_choice"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "train.log").write_text("table\n")
    (run / "metrics.jsonl").write_text("{}\n")
    assert set_settings(["--bundle", str(bundle), "--settings", '{"enabled": true, "direction_margin": 0.5}',
                         "--runs", str(run)]) == 0, capsys.readouterr().err
    engine = load_model(str(bundle))
    assert (engine.fusion_settings.enabled, engine.fusion_settings.direction_margin,
            engine.fusion_settings.threshold) == (True, 0.5, 0.6)
    assert (bundle / f"{FUSION_STAGE}.onnx").read_bytes() == onnx_before
    info = json.loads((bundle / "inference_info.json").read_text())
    assert {"training/fusion_choice/config.json", "training/fusion_choice/train.log"} <= set(info["training_records"])
    assert not (bundle / "training" / "fusion_choice" / "metrics.jsonl").exists()   # large: left in the run folder
    # a bad value or name leaves the bundle as it was
    before = (bundle / "inference_info.json").read_bytes()
    for bad, message in (('{"direction_margin": -2}', "direction_margin"), ('{"margin": 1}', "unknown fusion"),
                         ("{}", "non-empty"), ("0.5", "JSON object"), ("{enabled}", "not JSON")):
        assert set_settings(["--bundle", str(bundle), "--settings", bad]) == 2
        assert message in capsys.readouterr().err
    assert (bundle / "inference_info.json").read_bytes() == before
    # the export command reads its --settings the same way
    from training.export.mrf import main as export_mrf
    assert export_mrf(["--checkpoint", str(tmp_path / "none.pt"), "--bundle", str(bundle), "--settings", "0.5"]) == 2
    assert "--settings must be a JSON object" in capsys.readouterr().err
