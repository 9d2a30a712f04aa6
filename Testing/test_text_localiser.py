"""The text localiser: a typed name alone -> the structure's map (networks/text_localiser.py, its training loop,
export and the engines' use of it), against real ONNX graphs in onnxruntime."""
import json
import shutil

import numpy as np
import pytest

from IMISSegmentLib.engines.shrink_check import ShrinkCheckSettings
from IMISSegmentLib.engines.text_localiser import LocaliserSettings, code_logits
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.text import Vocabulary


def test_settings_check_their_fields_and_find_the_maps_of_a_name():
    settings = LocaliserSettings.from_entry({"codes": [[4, 0], [54, 1], [54, 2], [8, 0]]})
    assert settings.threshold == 0.0 and settings.min_part_share == 0.0
    assert settings.channels((4, 0)) == [0]
    assert settings.channels((54, 2)) == [2]
    assert settings.channels((54, 0)) == [1, 2]      # "heart ventricle" without a side: both sides' maps
    assert settings.channels((8, 1)) == [3]          # "left lung" on a map of both lungs
    assert settings.channels((1, 0)) == [] and settings.channels((1, 2)) == []
    for entry, message in (({"codes": []}, "non-empty list of distinct"), ({"codes": [[4, 0], [4, 0]]}, "distinct"),
                           ({"codes": "liver"}, "non-empty list"), ({"codes": [[4, 3]]}, "side 0..2"),
                           ({"codes": [[4.5, 0]]}, "whole numbers"), ({"codes": [[True, 0]]}, "whole numbers"),
                           ({"codes": [[0, 0]]}, "category >= 1"),
                           ({"codes": [[4, 0]], "threshold": "high"}, "threshold must be a number"),
                           ({"codes": [[4, 0]], "threshold": float("nan")}, "threshold must be a number"),
                           ({"codes": [[4, 0]], "min_part_share": 2}, "min_part_share must be a number in 0..1"),
                           ({"codes": [[4, 0]], "with_prompts": "prior"}, "unknown keys \\['with_prompts'\\]"),
                           ({"codes": [[4, 0]], "keep_confirmed": 1}, "keep_confirmed must be true or false"),
                           ("x", "must be an object")):
        with pytest.raises(InputError, match=message):
            LocaliserSettings.from_entry(entry, "bundle")
    settings.check_maps(4, "graph")
    settings.check_maps([[4, 0], [54, 1], [54, 2], [8, 0]], "network")
    with pytest.raises(InputError, match="gives 3 maps, but the bundle's text.localiser names 4 codes"):
        settings.check_maps(3, "graph")
    with pytest.raises(InputError, match="re-export it"):   # the same maps in another order: "liver" would get lung
        settings.check_maps([[8, 0], [54, 1], [54, 2], [4, 0]], "network")
    logits = np.stack([np.full((2, 2), v, np.float32) for v in (-1.0, 2.0, -3.0)])
    assert np.array_equal(code_logits(logits, [0, 2]), np.full((2, 2), -1.0, np.float32))


def test_a_name_alone_can_drop_the_small_stray_parts_of_its_map():
    from IMISSegmentLib.engines.text_localiser import main_parts
    mask = np.zeros((40, 40), bool)
    mask[2:12, 2:12] = True        # 100 pixels: one kidney
    mask[2:12, 25:34] = True       # 90: the other
    mask[30:33, 30:33] = True      # 9: a stray blob
    assert main_parts(mask, 0.0) is mask
    kept = main_parts(mask, 0.2)
    assert kept.sum() == 190 and not kept[31, 31]
    assert main_parts(mask, 0.95).sum() == 100
    assert main_parts(mask, 0.05) is mask


torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import IMISSegmentLib as imis  # noqa: E402
from IMISSegmentLib.networks.click_net import build_click_net  # noqa: E402
from IMISSegmentLib.networks.text_localiser import TextLocaliser, from_click_net  # noqa: E402

SMALL = {"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}
LIVER, LUNG = 4, 8


def test_the_localiser_body_starts_from_the_click_weights_and_maps_every_code():
    click = build_click_net(SMALL, seed=0).eval()
    localiser = from_click_net(click, [[LIVER, 0], [LUNG, 0], [54, 1]]).eval()
    state = localiser.body.state_dict()
    for name, value in click.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(state[name], value), name
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = localiser(image)
        # the body computes the click network's features for empty prompts
        features = click.decode(click.encode(image, torch.zeros(2, 4, 64, 64)))
    assert logits.shape == (2, 3, 64, 64) and features.shape == (2, 1, 64, 64)
    assert float(logits.mean()) < -3   # a new head starts at "nothing here"
    for bad, message in (({"codes": []}, "non-empty"), ({"codes": [[0, 0]]}, "distinct"),
                         ({"codes": [[4, 0]], "colour": 1}, "unknown keys")):
        with pytest.raises(ValueError, match=message):
            TextLocaliser({"body": SMALL, **bad})


def _case(folder, names: dict, seed: int):
    """A small labelled volume: a bright block (label 1) and a dark block (label 2), named by ``names``."""
    import SimpleITK as sitk
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    label = np.zeros((6, 48, 48), np.uint8)
    label[1:5, 6:22, 6:30] = 1
    label[1:5, 28:42, 20:40] = 2
    image = rng.normal(0, 20, label.shape)
    image[label == 1] += 300
    image[label == 2] -= 300
    for array, name in ((image.astype(np.int16), "image.nii.gz"), (label, "label.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / name))
    (folder / "labels.json").write_text(json.dumps({"labels": names}))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("localiser_cases")
    _case(root / "both", {"1": "liver", "2": "right lung"}, 0)
    _case(root / "liver_only", {"1": "liver"}, 1)   # its dark block is unlabelled, not background
    return root


def test_samples_hold_every_labelled_map_and_leave_unlabelled_ones_out(cases):
    from training.data.localiser_data import LocaliserSlices
    from training.data.text_data import TextSliceDataset
    slices = LocaliserSlices(TextSliceDataset(str(cases), Vocabulary.default(), axes=(0,), size=64),
                             augment_samples=False)
    assert slices.codes == [(LIVER, 0), (LUNG, 0)]
    numbers = {case.name: n for n, case in enumerate(slices.text.volumes.cases)}
    both, only = slices.get(numbers["both"], 0, 2), slices.get(numbers["liver_only"], 0, 2)
    assert both["label"].shape == (2, 64, 64) and list(both["known"]) == [1.0, 1.0]
    assert both["label"][0].sum() > 0 and both["label"][1].sum() > 0
    assert not (both["label"][0] * both["label"][1]).any()
    assert list(only["known"]) == [1.0, 0.0] and only["label"][1].sum() == 0
    batch = LocaliserSlices(slices.text).batch(np.random.default_rng(0), 3)   # augmented: maps move with the image
    assert batch["label"].shape == (3, 2, 64, 64) and batch["known"].shape == (3, 2)


def test_the_loss_ignores_the_maps_a_case_does_not_label():
    from training.loops.text_localiser import localiser_loss
    target = np.zeros((1, 2, 16, 16), np.float32)
    target[0, 0, 4:8, 4:8] = 1
    batch = {"label": target, "valid": np.ones((1, 1, 16, 16), np.float32), "known": np.array([[1.0, 0.0]], np.float32)}
    logits = torch.full((1, 2, 16, 16), -5.0)
    logits[0, 0, 4:8, 4:8] = 5.0
    loss, _, _, scores = localiser_loss(logits, batch, 1.0)
    wild = logits.clone()
    wild[0, 1] = 5.0   # the unlabelled map says "everywhere": no penalty
    assert float(localiser_loss(wild, batch, 1.0)[0]) == pytest.approx(float(loss))
    batch["known"][0, 1] = 1.0   # once the case labels it, the same map is wrong everywhere
    assert float(localiser_loss(wild, batch, 1.0)[0]) > float(loss) + 1.0
    assert list(scores) == [1.0]


@pytest.fixture(scope="module")
def localiser_bundle(cases, tmp_path_factory):
    """A tiny text bundle (training.export.text) with a localiser trained 4 steps (stopped at 2, resumed) and
    exported by the command line."""
    from training.export.click_net import export_bundle
    from training.export.text import add_text
    from training.export.text_localiser import main as export_main
    from training.loops.run import _merge
    from training.loops.text import text_network
    from training.loops.text_localiser import DEFAULTS, LOCALISER_DEFAULTS, train_localiser
    folder = tmp_path_factory.mktemp("localiser")
    bundle = folder / "bundle"
    export_bundle(build_click_net(SMALL, seed=0).eval(), bundle, name="tiny-localiser", version="0.0.1")
    add_text(text_network({"init_bundle": str(bundle), "text": {"dim": 8}}, Vocabulary.default()).eval(), bundle,
             {LIVER: False, LUNG: False})
    text_only = folder / "text_only"
    shutil.copytree(bundle, text_only)
    config = _merge(_merge(DEFAULTS, LOCALISER_DEFAULTS), {
        "init_bundle": str(bundle), "input_size": 256, "steps": 4, "batch_size": 2, "log_every": 1,
        "checkpoint_every": 1, "data": {"roots": [str(cases)], "axes": [0], "min_area": 8}})
    run = folder / "run"
    train_localiser(config, run, progress=False, stop_at=2)
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    train_localiser(config, run, progress=False)
    code = export_main(["--checkpoint", str(run / "checkpoint.pt"), "--bundle", str(bundle), "--runs", str(run),
                        "--settings", '{"threshold": -2.0}'])
    assert code == 0
    return {"bundle": bundle, "text_only": text_only, "run": run, "first": first}


def test_training_resumes_and_the_export_records_maps_and_settings(localiser_bundle):
    run = localiser_bundle["run"]
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert localiser_bundle["first"]["step"] == 2 and state["step"] == 4 and len(state["history"]) == 4
    assert state["config"]["codes"] == [[LIVER, 0], [LUNG, 0]]
    assert "maps: liver, lung" in (run / "train.log").read_text()
    moved = [n for n, v in state["model"].items() if not torch.equal(v, localiser_bundle["first"]["model"][n])]
    assert any(n.startswith("body.encoder") for n in moved), "the body must learn, not only the head"
    info = json.loads((localiser_bundle["bundle"] / "inference_info.json").read_text())
    assert info["text"]["localiser"] == {"codes": [[LIVER, 0], [LUNG, 0]], "threshold": -2.0, "min_part_share": 0.0,
                                         "keep_confirmed": False}
    assert info["text"]["localised_names"] == ["liver", "lung"]
    assert info["stages"]["text_localiser"]["export_check"]["max_abs_logit_difference"] < 1e-3
    assert (localiser_bundle["bundle"] / "training" / "run" / "train.log").is_file()


def test_a_fine_tune_starts_from_the_bundle_localiser_and_sees_other_sources(localiser_bundle, cases, tmp_path):
    from IMISSegmentLib.engines.torch_engine import localiser_from_bundle
    from IMISSegmentLib.models import read_bundle_info
    from training.loops.run import _merge
    from training.loops.text_localiser import DEFAULTS, LOCALISER_DEFAULTS, starting_localiser, train_localiser
    bundle = localiser_bundle["bundle"]
    config = _merge(_merge(DEFAULTS, LOCALISER_DEFAULTS), {
        "init_bundle": str(bundle), "init_localiser": True, "input_size": 256, "steps": 2, "batch_size": 2,
        "log_every": 1, "checkpoint_every": 1, "data": {"roots": [str(cases)], "axes": [0], "min_area": 8,
                                                         "source_shift": {"fov": 1.0, "blur": 0.5, "contrast": 1.0}}})
    shipped = localiser_from_bundle(bundle, read_bundle_info(bundle)).state_dict()
    start = starting_localiser(dict(config, codes=[[LIVER, 0], [LUNG, 0]])).state_dict()
    assert all(torch.equal(start[n], shipped[n]) for n in shipped)
    fresh = starting_localiser(dict(config, init_localiser=False, codes=[[LIVER, 0], [LUNG, 0]])).state_dict()
    assert not torch.equal(fresh["body.head.conv.weight"], shipped["body.head.conv.weight"])   # a new head
    with pytest.raises(InputError, match="the same maps"):
        starting_localiser(dict(config, codes=[[LIVER, 0]]))
    with pytest.raises(InputError, match="holds no text localiser"):
        starting_localiser(dict(config, init_bundle=str(localiser_bundle["text_only"]), codes=[[LIVER, 0]]))
    run = tmp_path / "run"
    train_localiser(config, run, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["config"]["data"]["source_shift"]["fov"] == 1.0
    # the run the fixture exported is recorded as the one this run fine-tunes
    assert json.loads((run / "config.json").read_text())["init_localiser_run"] == "text_localiser"
    assert any(not torch.equal(state["model"][n], shipped[n]) for n in shipped)


def test_the_text_stage_fine_tunes_on_the_localisers_answers(localiser_bundle, cases, tmp_path):
    """Mode localised+click: the previous mask is the localiser's answer to the name alone, as the engine gives it;
    init_text starts from the bundle's text stage; the click network sees the bundle's input gamma."""
    from IMISSegmentLib.engines.torch_engine import network_from_bundle
    from IMISSegmentLib.models import read_bundle_info
    from IMISSegmentLib.networks.geometry import SliceGeometry
    from IMISSegmentLib.normalize import apply_window, intensity_window
    from training.loops.localised_prior import LocalisedPrior
    from training.loops.run import _merge
    from training.loops.text import DEFAULTS, TEXT_DEFAULTS, check_text_config, localised_first_click, text_network, \
        train_text
    from training.loops.interaction import InteractionConfig
    bundle = tmp_path / "bundle"
    shutil.copytree(localiser_bundle["bundle"], bundle)
    # the localiser's answer is the engine's name-alone mask (a 256 x 256 slice: the network grid is the slice's)
    volume = np.repeat(np.kron(_volume()[1], np.ones((4, 4)))[None, :64, :64], 3, 0)
    volume = np.tile(volume, (1, 4, 4)).astype(np.float32)
    image = apply_window(volume[1], intensity_window(volume)).astype(np.float32)
    prior = LocalisedPrior(bundle)
    net_image = SliceGeometry(image.shape, 256, (1.0, 1.0)).to_network(image)[None, None]
    answers, localised = prior.answers(torch.from_numpy(np.repeat(net_image, 2, 0)), np.array([[LIVER, 0], [17, 0]]))
    assert list(localised) == [True, False] and not answers[1].any()
    session = imis.InteractiveSession(imis.load_model(str(bundle), device="cpu"))
    session.set_volume(volume, spacing=(3.0, 1.0, 1.0))
    engine_mask = session.add_text("liver", 1).mask
    assert np.count_nonzero((answers[0] > 0.5) != engine_mask) <= 3
    # the click after it: half the time the correction of the answer (here a negative click on a stray part)
    label, valid = np.zeros((32, 32), bool), np.ones((32, 32), bool)
    label[4:14, 4:14] = True
    stray = label.astype(np.float32)
    stray[20:30, 20:30] = 1.0
    clicks = {localised_first_click(label, valid, stray, True, np.random.default_rng(seed), InteractionConfig(box_prob=0.0)).clicks[0]
              for seed in range(12)}
    assert any(not positive and r >= 20 and c >= 20 for r, c, positive in clicks)
    assert any(positive and label[r, c] for r, c, positive in clicks)
    assert all(positive for r, c, positive in {localised_first_click(label, valid, stray, False, np.random.default_rng(s),
                                                                     InteractionConfig(box_prob=0.0)).clicks[0] for s in range(6)})
    # init_text: the bundle's text stage; the run records the bundle's input gamma and keeps the click weights
    info = json.loads((bundle / "inference_info.json").read_text())
    info["input_gamma"] = 0.6
    (bundle / "inference_info.json").write_text(json.dumps(info))
    config = _merge(_merge(DEFAULTS, TEXT_DEFAULTS), {
        "init_bundle": str(bundle), "init_text": True, "text": {"dim": 8}, "input_size": 256, "steps": 2,
        "batch_size": 2, "log_every": 1, "checkpoint_every": 1,
        "data": {"roots": [str(cases)], "axes": [0], "min_area": 8, "phantom_fraction": 0.0}})
    config["modes"] = {"localised+click": 1.0}   # replacing the default modes, as a config file's modes do
    shipped = network_from_bundle(bundle, read_bundle_info(bundle)).state_dict()
    start = text_network(config, Vocabulary.default())
    assert all(torch.equal(v, shipped[n]) for n, v in start.state_dict().items() if n.startswith("text."))
    fresh = text_network(dict(config, init_text=False), Vocabulary.default()).state_dict()
    assert not all(torch.equal(v, shipped[n]) for n, v in fresh.items() if n.startswith("text."))
    run = tmp_path / "run"
    train_text(config, run, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and json.loads((run / "config.json").read_text())["input_gamma"] == 0.6
    assert [h["mode"] for h in state["history"]] == ["localised+click"] * 2
    assert all(torch.equal(v, shipped[n]) for n, v in state["model"].items() if not n.startswith("text."))
    assert any(not torch.equal(v, shipped[n]) for n, v in state["model"].items() if n.startswith("text."))
    # a bundle without a localiser cannot train the mode; without a text stage, init_text has nothing to start from;
    # a text stage of another shape is named, before anything is written
    with pytest.raises(InputError, match="localised\\+click needs a bundle with a text localiser"):
        check_text_config(dict(config, init_bundle=str(localiser_bundle["text_only"])))
    from training.export.click_net import export_bundle
    export_bundle(build_click_net(SMALL, seed=1).eval(), tmp_path / "bare")
    with pytest.raises(InputError, match="init_text needs a bundle with a text stage"):
        check_text_config(dict(config, init_bundle=str(tmp_path / "bare"), modes={"text": 1.0}))
    with pytest.raises(InputError, match="differs from this run's in dim 8 \\(run: 16\\)"):
        check_text_config(dict(config, text={"dim": 16}))
    # a run resumed on a bundle whose input gamma changed since it began is refused
    info["input_gamma"] = 0.8
    (bundle / "inference_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="began with input_gamma 0.6"):
        train_text(dict(config, steps=3), run, progress=False)


def test_carry_puts_the_localiser_beside_another_text_stage(localiser_bundle, tmp_path, capsys):
    """training.export.carry --parts text_localiser: a retrained 2D network (and its text stage) keeps the localiser."""
    from training.export.carry import main as carry_main
    from training.export.click_net import export_bundle
    source = localiser_bundle["bundle"]
    target = tmp_path / "target"
    shutil.copytree(localiser_bundle["text_only"], target)
    assert imis.load_model(str(target), device="cpu").localiser is None
    assert carry_main(["--from", str(source), "--to", str(target), "--parts", "text_localiser"]) == 0
    info, old = (json.loads((b / "inference_info.json").read_text()) for b in (target, source))
    assert info["text"]["localiser"] == old["text"]["localiser"]
    assert info["text"]["localised_names"] == ["liver", "lung"]
    assert info["text"]["vocabulary"] == json.loads((localiser_bundle["text_only"] / "inference_info.json")
                                                    .read_text())["text"]["vocabulary"]   # the target's own
    assert info["stages"]["text_localiser"] == old["stages"]["text_localiser"]
    assert imis.load_model(str(target), device="cpu").localiser is not None
    # a bundle without a text stage is refused, left as it was
    bare = tmp_path / "bare"
    export_bundle(build_click_net(SMALL, seed=1).eval(), bare)
    before = (bare / "inference_info.json").read_text()
    capsys.readouterr()
    assert carry_main(["--from", str(source), "--to", str(bare), "--parts", "text_localiser"]) == 2
    assert "has no text stage" in capsys.readouterr().err
    assert (bare / "inference_info.json").read_text() == before
    assert carry_main(["--from", str(localiser_bundle["text_only"]), "--to", str(target), "--parts",
                       "text_localiser"]) == 2   # a source without a localiser has none to carry
    assert "has no text_localiser to carry" in capsys.readouterr().err


def _volume():
    rng = np.random.default_rng(2)
    volume = rng.normal(40, 10, (3, 64, 80)).astype(np.float32)
    volume[:, 10:30, 10:40] += 300
    return volume


def _engines(bundle):
    """The bundle's onnx and torch engines, their localiser threshold set so that a tenth of slice 1 of _volume()
    is "liver" (the 4-step localiser is barely trained: at its own threshold it finds nothing)."""
    from dataclasses import replace
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine
    from IMISSegmentLib.networks.geometry import SliceGeometry
    from IMISSegmentLib.normalize import apply_window, intensity_window
    engines = [imis.load_model(str(bundle), device="cpu"), TorchClickEngine(bundle, device="cpu")]
    volume = _volume()
    image = apply_window(volume[1], intensity_window(volume)).astype(np.float32)
    geometry = SliceGeometry(image.shape, 256, (1.0, 1.0))
    logits = engines[0].run_localiser(geometry.to_network(image)[None, None])[0, 0]
    threshold = float(np.percentile(geometry.to_slice(logits), 90))
    for engine in engines:
        engine.localiser = replace(engine.localiser, threshold=threshold)
    return engines, image, geometry, threshold


def test_a_name_alone_is_the_localiser_map_in_onnxruntime_and_torch(localiser_bundle):
    import onnxruntime
    bundle = localiser_bundle["bundle"]
    engines, image, geometry, threshold = _engines(bundle)
    results = []
    for engine in engines:
        session = imis.InteractiveSession(engine)
        session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
        results.append(session.add_text("liver", 1).mask.copy())
    assert 0 < results[0].sum() < results[0].size
    assert np.count_nonzero(results[0] != results[1]) <= 3
    # the same map computed by hand: the whole slice through the localiser graph, cut at the threshold
    graph = onnxruntime.InferenceSession(str(bundle / "text_localiser.onnx"), providers=["CPUExecutionProvider"])
    logits = graph.run(None, {"image": geometry.to_network(image)[None, None]})[0][0, 0]
    assert np.array_equal(results[0], geometry.to_slice(logits - np.float32(threshold)) > 0.0)


def test_a_click_after_a_name_corrects_its_answer_and_keeps_what_it_points_at(localiser_bundle):
    from IMISSegmentLib.engines.onnx_engine import prompted_components
    engines, _, _, _ = _engines(localiser_bundle["bundle"])
    session = imis.InteractiveSession(engines[0])
    session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    named = session.add_text("liver", 1).mask.copy()
    rows, cols = np.nonzero(named)
    clicked = session.add_click((1, int(rows[len(rows) // 2]), int(cols[len(cols) // 2])))
    assert session.undo() and np.array_equal(session.result[1], named)
    # a click alone on the same slice answers differently: the name's answer was fed back
    plain = imis.InteractiveSession(engines[0])
    plain.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    alone = plain.add_click((1, int(rows[len(rows) // 2]), int(cols[len(cols) // 2])))
    assert not np.array_equal(clicked.mask, alone.mask) or clicked.mask.sum() == 0
    assert np.array_equal(prompted_components(clicked.mask, [(int(rows[len(rows) // 2]), int(cols[len(cols) // 2]),
                                                             True)], None), clicked.mask)


def test_confirmed_parts_of_a_names_answer_stay_until_a_negative_click_lands_in_them(localiser_bundle):
    """keep_confirmed: a positive click in a part of the name's answer keeps that part in the answers that follow
    (the click network alone would answer the click alone), a negative click in it gives it up; undo restores."""
    from dataclasses import replace
    from IMISSegmentLib.engines.text_localiser import label_parts
    engines, _, _, _ = _engines(localiser_bundle["bundle"])
    keeping = imis.load_model(str(localiser_bundle["bundle"]), device="cpu")
    keeping.localiser = replace(engines[0].localiser, keep_confirmed=True)
    answers = {}
    for name, engine in (("plain", engines[0]), ("keep", keeping)):
        session = imis.InteractiveSession(engine)
        session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
        named = session.add_text("liver", 1).mask.copy()
        parts, _ = label_parts(named)
        r, c = map(int, np.argwhere(parts == np.bincount(parts.ravel())[1:].argmax() + 1)[0])   # in the largest part
        part = parts == parts[r, c]
        first = session.add_click((1, r, c)).mask.copy()
        answers[name] = {"named": named, "part": part, "first": first}
        if name == "keep":
            assert session.undo() and np.array_equal(session.result[1], named)
            assert np.array_equal(session.add_click((1, r, c)).mask, first)   # redone: the same answer
            outside = np.argwhere(~first)
            second = session.add_click((1, *map(int, outside[len(outside) // 2])), positive=True).mask
            assert np.all(second[part])   # still kept after another click
            rejected = session.add_click((1, r, c), positive=False).mask   # a negative click in the part
            answers[name]["rejected"] = rejected
    keep, plain = answers["keep"], answers["plain"]
    assert np.array_equal(keep["first"], plain["first"] | keep["part"])   # the network's answer and the part
    assert not plain["first"][plain["part"]].all(), "the click network alone drops part of the name's answer here"
    assert not np.all(keep["rejected"][keep["part"]]), "a rejected part is no longer kept"


def test_settings_are_set_on_a_bundle_checked_and_staged(localiser_bundle, tmp_path, capsys):
    """training.export.settings: settings that need no training, checked as the engines read them."""
    from training.export.settings import main as settings_main
    bundle = tmp_path / "bundle"
    shutil.copytree(localiser_bundle["bundle"], bundle)
    assert settings_main(["--bundle", str(bundle), "--set", "text.localiser.keep_confirmed=true",
                          "--bundle-version", "9.9.9"]) == 0
    info = json.loads((bundle / "inference_info.json").read_text())
    assert info["text"]["localiser"]["keep_confirmed"] is True and info["version"] == "9.9.9"
    assert imis.load_model(str(bundle), device="cpu").localiser.keep_confirmed
    assert settings_main(["--bundle", str(bundle), "--set", 'shrink_check={"enabled": true, "min_share": 0.4}']) == 0
    assert imis.load_model(str(bundle), device="cpu").shrink_check == ShrinkCheckSettings(True, 0.4)
    before = (bundle / "inference_info.json").read_text()
    capsys.readouterr()
    for argv, message in ((["--set", "text.localiser.keep_confirmed=1"], "keep_confirmed must be true or false"),
                          (["--set", "zoom.enabled=false"], "KEY one of"),
                          (["--set", "input_gamma=abc"], "must be JSON"), (["--set", "input_gamma=9"], "input_gamma"),
                          (["--set", 'shrink_check={"min_share": 2}'], "min_share"),
                          ([], "nothing to set")):
        assert settings_main(["--bundle", str(bundle), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert (bundle / "inference_info.json").read_text() == before
    bare = tmp_path / "bare"
    shutil.copytree(localiser_bundle["text_only"], bare)
    assert settings_main(["--bundle", str(bare), "--set", "text.localiser.keep_confirmed=true"]) == 2
    assert "no text.localiser entry" in capsys.readouterr().err


def test_names_the_localiser_cannot_answer_go_to_the_text_stage(localiser_bundle):
    from dataclasses import replace
    from IMISSegmentLib.engines.base import SliceRequest
    engines, image, _, _ = _engines(localiser_bundle["bundle"])
    engine = engines[0]
    engine.localiser = replace(engine.localiser, threshold=-100.0)   # the localiser would answer the whole slice
    reference = imis.load_model(str(localiser_bundle["text_only"]), device="cpu")
    request = SliceRequest(axis=0, index=1, image=image, raw=_volume()[1], spacing=(1.0, 1.0), text="lung")
    assert engine.predict_slice(request).mask.all()
    unmapped = replace(engine.localiser, codes=((LIVER, 0), (1, 0)))   # as if it had no lung map
    engine.localiser = unmapped
    assert np.array_equal(engine.predict_slice(request).mask, reference.predict_slice(request).mask)
    engine.localiser = replace(unmapped, codes=((LIVER, 0), (LUNG, 0)))
    held = np.zeros(image.shape, bool)
    held[20:30, 20:30] = True   # a slice that already holds a mask: the text stage, with it as the previous mask
    with_mask = replace(request, previous_mask=held)
    assert np.array_equal(engine.predict_slice(with_mask).mask, reference.predict_slice(with_mask).mask)
    clicked = replace(request, clicks=[(25, 25, True)])   # a name with a click: the text stage too
    assert np.array_equal(engine.predict_slice(clicked).mask, reference.predict_slice(clicked).mask)


def test_a_bundle_whose_maps_do_not_fit_its_codes_is_refused(localiser_bundle, tmp_path):
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine
    from IMISSegmentLib.models import sha256_of
    bundle = tmp_path / "bundle"
    shutil.copytree(localiser_bundle["bundle"], bundle)
    info = json.loads((bundle / "inference_info.json").read_text())
    info["text"]["localiser"]["codes"] = [[LUNG, 0], [LIVER, 0]]
    (bundle / "inference_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="re-export it"):
        TorchClickEngine(bundle, device="cpu")
    info["text"]["localiser"]["codes"] = [[LUNG, 0], [LIVER, 0], [1, 0]]
    (bundle / "inference_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="gives 2 maps, but the bundle's text.localiser names 3 codes"):
        imis.load_model(str(bundle), device="cpu")
    assert sha256_of(bundle / "text_localiser.onnx") == info["stages"]["text_localiser"]["sha256"]


def test_the_export_refuses_bundles_it_cannot_extend_and_leaves_them_as_they_were(localiser_bundle, tmp_path):
    from training.export.click_net import export_bundle
    from training.export.text import add_text
    from training.export.text_localiser import main as export_main
    from training.loops.text import text_network
    checkpoint = localiser_bundle["run"] / "checkpoint.pt"

    def listing(folder):
        return sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())

    plain = tmp_path / "plain"
    export_bundle(build_click_net(SMALL, seed=0).eval(), plain)
    before = listing(plain)
    assert export_main(["--checkpoint", str(checkpoint), "--bundle", str(plain)]) == 2   # takes no text
    assert listing(plain) == before
    liver_only = tmp_path / "liver_only"   # a text stage trained on liver alone: the lung map could not be reached
    shutil.copytree(plain, liver_only)
    add_text(text_network({"init_bundle": str(liver_only), "text": {"dim": 8}}, Vocabulary.default()).eval(),
             liver_only, {LIVER: False})
    before = listing(liver_only)
    assert export_main(["--checkpoint", str(checkpoint), "--bundle", str(liver_only)]) == 2
    state = torch.load(checkpoint, weights_only=False)
    state["config"]["input_size"] = 64   # a run at another resolution than the bundle's
    small = tmp_path / "small.pt"
    torch.save(state, small)
    text_only = localiser_bundle["text_only"]
    assert export_main(["--checkpoint", str(small), "--bundle", str(text_only)]) == 2
    for settings in ('{"codes": [[1, 0]]}', '{"min_part_share": 5}', '{"with_prompts": "prior"}'):
        assert export_main(["--checkpoint", str(checkpoint), "--bundle", str(text_only), "--settings", settings]) == 2
    assert listing(liver_only) == before and not (text_only / "text_localiser.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging folder left


def test_re_exporting_the_text_stage_keeps_the_localiser_it_can_still_reach(localiser_bundle, tmp_path):
    from training.export.text import add_text
    from training.loops.text import text_network
    bundle = tmp_path / "bundle"
    shutil.copytree(localiser_bundle["bundle"], bundle)
    network = text_network({"init_bundle": str(bundle), "text": {"dim": 8}}, Vocabulary.default()).eval()
    add_text(network, bundle, {LIVER: False, LUNG: False})
    engine = imis.load_model(str(bundle), device="cpu")
    assert engine.localiser is not None and engine.localiser.threshold == -2.0
    info = (bundle / "inference_info.json").read_text()
    with pytest.raises(ValueError, match="lung, which this text stage was not trained on"):
        add_text(network, bundle, {LIVER: False})
    assert (bundle / "inference_info.json").read_text() == info


def test_cli_names_says_which_names_work_alone(localiser_bundle, capsys):
    from helpers import run_cli
    code, out, _ = run_cli(["names", "--engine", str(localiser_bundle["bundle"])], capsys)
    assert code == 0 and "a name alone (no click or box) finds liver, lung;" in out
    code, out, _ = run_cli(["names", "--engine", str(localiser_bundle["text_only"])], capsys)
    assert code == 0 and "a name alone" not in out


def test_bench_times_a_name_alone(localiser_bundle):
    from IMISSegmentLib.bench import run_bench
    report = run_bench(str(localiser_bundle["bundle"]), size=64, repeats=2, slices=2, litemedsam_repeats=0)
    assert report["name_alone_ms"]["name"] == "liver" and report["name_alone_ms"]["n"] == 2
    assert report["name_alone_ms"]["median"] > 0


@pytest.mark.parametrize("settings, message", [
    ({"loss": {"dice_weight": -1}}, "loss.dice_weight must be a finite number >= 0"),
    ({"data": {"roots": []}}, "data.roots must name the labelled volumes"),
    ({"data": {"zoom": {"fraction": 0.5}}}, "data.zoom is not used by the text localiser"),
    ({"network": {"widths": [8]}}, "network is not used by the text localiser"),
    ({"data": {"sides": ["wing"]}}, "data.sides names no category"),
    ({"init_bundle": "no/such/bundle"}, "not a model bundle"),
    ({"data": {"source_shift": {"fov": 2.0}}}, "source_shift.fov is a probability"),
    ({"data": {"source_shift": {"blur_range": [3, 1]}}}, "0 < low <= high"),
    ({"init_localiser": "yes"}, "init_localiser must be true or false"),
])
def test_a_bad_localiser_config_stops_before_anything_runs(cases, tmp_path, capsys, settings, message):
    from helpers import REPO
    from training.loops.run import _merge
    from training.loops.text_localiser import main
    config = _merge({"init_bundle": str(REPO / "Resources" / "models" / "default"),
                     "data": {"roots": [str(cases)], "axes": [0]}}, settings)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_shipped_model_finds_the_liver_of_the_example_ct_from_its_name_alone():
    """The example CT of Resources/Data (not trained on): "liver" typed on its largest liver slice."""
    import SimpleITK as sitk
    from helpers import REPO
    shipped = REPO / "Resources" / "models" / "default"
    if "text_localiser" not in json.loads((shipped / "inference_info.json").read_text())["stages"]:
        pytest.skip("the shipped bundle has no text localiser (training/recipes/text_localiser_cpu.sh)")
    case = REPO / "Resources" / "Data" / "ct_abdomen"
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "label.nii.gz"))) == 5
    assert json.loads((case / "labels.json").read_text())["labels"]["5"] == "liver"
    session = imis.InteractiveSession(imis.load_model(str(shipped), device="cpu"))
    session.set_volume(sitk.GetArrayFromImage(image).astype(np.float32), spacing=image.GetSpacing()[::-1])
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    mask = session.add_text("liver", k).mask
    assert 2 * (mask & liver[k]).sum() / (mask.sum() + liver[k].sum()) > 0.7
    assert "heart myocardium" in imis.load_model(str(shipped), device="cpu").vocabulary.names(trained_only=True)
