"""Text prompts: the offline vocabulary, the network's text stage, the bundle export, session / CLI / evaluation."""
import json
from pathlib import Path
import shutil
import socket

import numpy as np
import pytest

from IMISSegmentLib.errors import InputError, UnknownTextError
from IMISSegmentLib.text import Vocabulary

VOCABULARY = Vocabulary.default().with_training({8: True, 44: False, 17: False})


@pytest.mark.parametrize("text", ["left kidney", "Left Kidney", "kidney_left", "L kidney", "kidneys, left",
                                  "KIDNEY LT", "A segmentation area of a left kidney."])
def test_spellings_of_one_name_resolve_to_one_code(text):
    code = VOCABULARY.resolve(text)
    assert code.name == "left kidney" and code.category == VOCABULARY.resolve("kidney").category
    assert not code.trained


def test_finer_names_fall_back_to_their_category_and_report_the_detail():
    lobe = VOCABULARY.resolve("lung_lower_lobe_right")
    assert (lobe.category, lobe.side, lobe.name, lobe.detail, lobe.trained) == (8, 2, "right lung", "lower lobe", True)
    assert VOCABULARY.resolve("Right lung").as_input == (8, 2)
    assert VOCABULARY.resolve("lungs").as_input == (8, 0)
    vertebra = VOCABULARY.resolve("vertebrae_L1")
    assert (vertebra.name, vertebra.detail) == ("vertebra", "l1")
    rib = VOCABULARY.resolve("rib_left_7")
    assert rib.category == 44 and rib.side == 0   # ribs were trained without sides: the side is not fed
    # names that share words stay apart
    assert VOCABULARY.resolve("inferior vena cava").name != VOCABULARY.resolve("superior_vena_cava").name
    assert VOCABULARY.resolve("IVC").name == "inferior vena cava"
    assert VOCABULARY.resolve("tumour").name == "lesion"


def test_unknown_text_gives_the_closest_known_names():
    with pytest.raises(UnknownTextError) as caught:
        VOCABULARY.resolve("livr")
    assert "liver" in caught.value.suggestions and "liver" in str(caught.value)
    with pytest.raises(UnknownTextError) as caught:
        VOCABULARY.resolve("kidny")
    assert caught.value.suggestions[:2] == ["left kidney", "right kidney"]
    with pytest.raises(UnknownTextError):
        VOCABULARY.resolve("zzzz qqqq")
    with pytest.raises(InputError, match="both sides"):
        VOCABULARY.resolve("left right kidney")
    with pytest.raises(InputError, match="non-empty"):
        VOCABULARY.resolve("  ")


def test_vocabulary_round_trips_and_bad_files_fail_clearly(tmp_path):
    copy = Vocabulary.from_dict(json.loads(json.dumps(VOCABULARY.to_dict())))
    assert copy.resolve("lung_upper_lobe_left") == VOCABULARY.resolve("lung_upper_lobe_left")
    assert copy.names(trained_only=True) == ["lung", "rib", "vertebra"]
    path = tmp_path / "v.json"
    path.write_text('{"format_version": 1, "categories": [{"name": "x"}]}')
    with pytest.raises(InputError, match="malformed"):
        Vocabulary.load(path)
    path.write_text("not json")
    with pytest.raises(InputError, match="cannot read"):
        Vocabulary.load(path)


def test_rib_unions_become_one_sample_per_rib_cross_section(tmp_path):
    import SimpleITK as sitk
    from training.data.text_data import TextSliceDataset
    case = tmp_path / "chest"
    case.mkdir()
    label = np.zeros((6, 40, 40), np.uint8)
    label[1:5, 2:6, 2:6] = 1       # two separate rib cross-sections under one "ribs" label
    label[1:5, 30:34, 30:34] = 1
    label[1:5, 12:28, 8:20] = 2    # a lung
    image = np.random.default_rng(0).normal(0, 50, label.shape).astype(np.int16)
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(case / name))
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "ribs", "2": "right lung"}}))
    data = TextSliceDataset(str(tmp_path), Vocabulary.default(), axes=(0,), min_area=16, size=64)
    ribs, lungs = data.by_category[44], data.by_category[8]
    assert len(ribs) == 8 and len(lungs) == 4 and data.trained_categories() == {44: False, 8: False}
    sample = data.get(*ribs[0])
    assert sample["label"].sum() < sample["union"].sum()              # one rib; the text alone: both
    assert tuple(sample["text"]) == (44, 0)
    assert tuple(data.get(*lungs[0])["text"]) == (8, 0)               # sides are not trained by default
    sided = TextSliceDataset(str(tmp_path), Vocabulary.default(), axes=(0,), size=64, sides=True)
    assert sided.trained_categories()[8] is True and tuple(sided.get(*sided.by_category[8][0])["text"]) == (8, 2)



@pytest.mark.parametrize("name, category, side", [
    ("heart_ventricle_left", "heart ventricle", "left"), ("right ventricle", "heart ventricle", "right"),
    ("heart_myocardium", "heart myocardium", ""), ("myocardium", "heart myocardium", ""),
    ("LV myocardium", "heart myocardium", ""), ("heart_atrium_left", "heart atrium", "left"),
    ("heart", "heart", "")])
def test_the_cardiac_sets_names_resolve_to_their_own_categories(name, category, side):
    """The label names of ACDC, MS-CMRSeg and LA (``dataset.json``) are structures the text stage can learn:
    the ventricles, the myocardium and the atrium are categories of their own, not the whole heart."""
    code = Vocabulary.default().with_training({c: True for c in Vocabulary.default().categories}).resolve(name)
    assert (code.category_name, code.name) == (category, f"{side} {category}".strip())


def test_sides_can_be_trained_for_named_categories_only(tmp_path):
    import SimpleITK as sitk
    from training.data.text_data import TextSliceDataset
    case = tmp_path / "heart"
    case.mkdir()
    label = np.zeros((4, 40, 40), np.uint8)
    label[1:3, 4:14, 4:14], label[1:3, 20:30, 4:14] = 1, 2        # the two ventricles
    label[1:3, 4:14, 24:34], label[1:3, 20:30, 24:34] = 3, 4      # the two kidneys
    image = np.random.default_rng(0).normal(0, 50, label.shape).astype(np.int16)
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(case / name))
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "heart_ventricle_left", "2": "heart_ventricle_right",
                                                             "3": "kidney_left", "4": "kidney_right"}}))
    data = TextSliceDataset(str(tmp_path), Vocabulary.default(), axes=(0,), size=64, sides=["heart ventricle"])
    assert data.trained_categories() == {54: True, 2: False}
    codes = {data.get(*entry)["source"].rsplit("/", 1)[-1]: tuple(data.get(*entry)["text"])
             for category in (54, 2) for entry in data.by_category[category]}
    assert codes == {"left heart ventricle": (54, 1), "right heart ventricle": (54, 2),
                     "left kidney": (2, 0), "right kidney": (2, 0)}
    # the text alone of "left ventricle" is the left ventricle only; of "kidney" both kidneys
    left = next(e for e in data.by_category[54] if e[3] == 1)
    assert data.get(*left)["union"].sum() == data.get(*left)["label"].sum()
    with pytest.raises(ValueError, match="heart ventrikel"):
        TextSliceDataset(str(tmp_path), Vocabulary.default(), axes=(0,), size=64, sides=["heart ventrikel"])


torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import IMISSegmentLib as imis  # noqa: E402
from IMISSegmentLib.networks.click_net import ClickNet, build_click_net  # noqa: E402

SMALL = {"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}


def _randomise_text(network, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.startswith("text."):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return network


def test_the_text_stage_changes_nothing_without_text_and_keeps_alone_and_prompted_apart():
    base = build_click_net(SMALL, seed=0).eval()
    network = ClickNet({**SMALL, "text": {"categories": 10, "dim": 8}})
    assert network.load_state_dict(base.state_dict(), strict=False).unexpected_keys == []
    network = _randomise_text(network).eval()
    image = torch.rand(2, 1, 64, 64)
    empty = torch.zeros(2, 4, 64, 64)
    clicked = empty.clone()
    clicked[:, 0, 30:35, 30:35] = 1
    text = torch.tensor([[3, 1], [0, 0]])
    with torch.no_grad():
        assert torch.equal(network(image, clicked), base(image, clicked))
        with_text = network(image, clicked, text)
        assert torch.equal(with_text[1], base(image, clicked)[1])          # (0, 0) is no text
        assert not torch.allclose(with_text[0], base(image, clicked)[0])
        # the projections for text alone do not touch a prompted slice, and the reverse
        alone_before = network(image, empty, text)
        for layer in [*network.text.encoder_film, *network.text.decoder_film, network.text.logit_term]:
            layer.weight[:, :8] = 0
        assert torch.equal(network(image, clicked, text), with_text)
        assert not torch.allclose(network(image, empty, text)[0], alone_before[0])


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """A tiny click bundle, then the same network with a (random) text stage added by training.export.text."""
    from training.export.click_net import export_bundle
    from training.export.text import add_text
    from training.loops.text import text_network
    out = tmp_path_factory.mktemp("text") / "bundle"
    export_bundle(build_click_net(SMALL, seed=0).eval(), out, name="tiny-text", version="0.0.1")
    before = out.parent / "before"
    shutil.copytree(out, before)
    network = _randomise_text(text_network({"init_bundle": str(out), "text": {"dim": 8}}, Vocabulary.default()))
    assert all(not p.requires_grad for n, p in network.named_parameters() if not n.startswith("text."))
    add_text(network.eval(), out, {8: True, 44: False})
    return out, before


def _volume(shape=(3, 64, 80)):
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 10, shape).astype(np.float32)
    volume[:, 20:40, 30:60] += 300
    return volume


def test_export_adds_text_without_changing_clicks(text_bundle):
    bundle, before = text_bundle
    info = json.loads((bundle / "inference_info.json").read_text())
    assert "text" in info["capabilities"] and info["text"]["trained_categories"] == ["lung", "rib"]
    assert info["export_check"]["no_text_vs_previous"] < 1e-5
    sessions = []
    for folder in (bundle, before):
        session = imis.InteractiveSession(imis.load_model(str(folder), device="cpu"))
        session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
        session.add_click((1, 30, 45))
        session.add_click((1, 22, 35), positive=False)
        sessions.append(session)
    assert np.array_equal(sessions[0].result, sessions[1].result)
    assert "text" not in imis.load_model(str(before), device="cpu").capabilities


def test_text_through_the_session_onnx_matches_torch_and_undo(text_bundle):
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine
    bundle, _ = text_bundle
    results = []
    for engine in (imis.load_model(str(bundle), device="cpu"), TorchClickEngine(bundle, device="cpu")):
        session = imis.InteractiveSession(engine)
        session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
        session.add_click((1, 30, 45))
        clicked = session.result.copy()
        update = session.add_text("Lung_Lower_Lobe_Right", 1)
        assert update.axis == 0 and update.index == 1
        results.append(session.result.copy())
        alone = session.add_text("lung", 2)   # text alone on another slice
        assert alone.mask.shape == (64, 80)
        assert session.undo() and session.undo()
        assert np.array_equal(session.result, clicked)
    # the same masks from onnxruntime and torch (allowing a handful of boundary pixels at logit 0)
    assert np.count_nonzero(results[0] != results[1]) <= 3


def test_unknown_or_untrained_text_fails_clearly_and_changes_nothing(text_bundle):
    bundle, _ = text_bundle
    session = imis.InteractiveSession(imis.load_model(str(bundle), device="cpu"))
    session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    session.add_click((1, 30, 45))
    before = session.result.copy()
    with pytest.raises(UnknownTextError, match="closest known names: liver"):
        session.add_text("livr", 1)
    with pytest.raises(InputError, match="not trained to find it from text.*lung, rib"):
        session.add_text("liver", 1)
    assert np.array_equal(session.result, before) and len(session.prompts) == 1


def test_text_works_offline(text_bundle, monkeypatch):
    """Loading the model, resolving names and predicting from text never touch the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    bundle, _ = text_bundle
    session = imis.InteractiveSession(imis.load_model(str(bundle), device="cpu"))
    session.set_volume(_volume(), spacing=(3.0, 1.0, 1.0))
    session.add_text("left lung", 1)
    session.add_click((1, 30, 45))
    session.propagate()


def test_evaluate_runs_text_prompts_and_skips_names_it_cannot_take(text_bundle, tmp_path):
    import SimpleITK as sitk
    from IMISSegmentLib.evaluation.runner import evaluate
    bundle, _ = text_bundle
    case = tmp_path / "data" / "case1"
    case.mkdir(parents=True)
    volume = _volume((6, 64, 80)).astype(np.int16)
    label = np.zeros(volume.shape, np.uint8)
    label[1:5, 20:40, 30:45] = 1
    label[1:5, 20:40, 50:60] = 2
    for array, name in ((volume, "image.nii.gz"), (label, "label.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(image, str(case / name), True)
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "lung_lower_lobe_left", "2": "liver"}}))
    engine = imis.load_model(str(bundle), device="cpu")
    results = evaluate(tmp_path / "data", ["tiny"], tmp_path / "out", protocols=("2d",),
                       prompts=("click", "text", "text+click"), clicks_2d=3, save_masks=False, progress=False,
                       engine_factory=lambda name: engine)
    records = {(r["structure"], r["prompt"]): r for r in results["records"]}
    assert set(records) == {("lung_lower_lobe_left", p) for p in ("click", "text", "text+click")} | {("liver", "click")}
    assert records[("lung_lower_lobe_left", "text")]["steps"][0]["action"] == "text"
    assert records[("lung_lower_lobe_left", "text+click")]["steps"][0]["action"] == "text+click+"
    assert any("liver" in s and "not trained" in s for s in results["skipped"])
    assert not results["errors"]


def test_cli_segment_with_text(text_bundle, tmp_path, capsys):
    import SimpleITK as sitk
    from helpers import run_cli
    bundle, _ = text_bundle
    path = tmp_path / "volume.nii.gz"
    image = sitk.GetImageFromArray(_volume((4, 64, 80)).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(path))
    out = tmp_path / "lung.nii.gz"
    code, _, err = run_cli(["segment", str(path), "--engine", str(bundle), "--text", "left lung", "--out", str(out)],
                           capsys)
    assert code == 2 and "--slice" in err and not out.exists()
    code, _, err = run_cli(["segment", str(path), "--engine", str(bundle), "--text", "livr", "--slice", "1",
                            "--out", str(out)], capsys)
    assert code == 2 and "closest known names: liver" in err and not out.exists()
    code, text, err = run_cli(["segment", str(path), "--engine", str(bundle), "--text", "left lung", "--click",
                               "1,30,45", "--no-propagate", "--out", str(out)], capsys)
    assert code == 0, err
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    session = imis.InteractiveSession(imis.load_model(str(bundle), device="cpu"))
    session.set_volume(sitk.GetArrayFromImage(image), spacing=(3.0, 1.0, 1.0))
    session.add_text("left lung", 1)
    session.add_click((1, 30, 45))
    assert np.array_equal(written, session.result)   # --text goes on the click's slice, before the click


def test_text_training_learns_only_the_text_stage_resumes_and_exports(text_bundle, tmp_path):
    from training.export.text import main as export_main
    from training.loops.run import _merge
    from training.loops.text import DEFAULTS, TEXT_DEFAULTS, train_text
    _, before = text_bundle
    config = _merge(_merge(DEFAULTS, TEXT_DEFAULTS), {
        "init_bundle": str(before), "text": {"dim": 8}, "input_size": 64, "steps": 4, "batch_size": 2,
        "log_every": 1, "checkpoint_every": 1, "data": {"roots": [], "phantom_pool": 6, "min_area": 8}})
    run = tmp_path / "run"
    train_text(config, run, progress=False, stop_at=2)
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    train_text(config, run, progress=False)   # resumes at step 2
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and len(state["history"]) == 4
    base = torch.load(before / "click_net.pt", weights_only=True)
    for name, value in state["model"].items():
        if name.startswith("text."):
            continue
        assert torch.equal(value, base[name]), f"{name} changed: the click weights must stay frozen"
    moved = [n for n in state["model"] if n.startswith("text.") and "film" in n
             and not torch.equal(state["model"][n], first["model"][n])]
    assert moved, "the text stage did not learn"
    assert set(state["config"]["trained_categories"]) == {"17", "44", "47", "49", "51", "53"}   # the phantoms' kinds
    log = (run / "train.log").read_text()
    assert "text categories trained: vertebra, rib, lesion, blood vessel, body, organ" in log and "without text" in log
    bundle = tmp_path / "bundle"
    shutil.copytree(before, bundle)
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--bundle", str(bundle), "--runs", str(run)]) == 0
    engine = imis.load_model(str(bundle), device="cpu")
    assert engine.vocabulary.names(trained_only=True) == ["blood vessel", "body", "lesion", "organ", "rib", "vertebra"]
    assert (bundle / "training" / "run" / "train.log").is_file()
    # a checkpoint trained on another bundle's click weights is refused, the bundle left as it was
    from training.export.click_net import export_bundle
    other = tmp_path / "other"
    export_bundle(build_click_net(SMALL, seed=5).eval(), other)
    info_before = (other / "inference_info.json").read_text()
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--bundle", str(other)]) == 2
    assert (other / "inference_info.json").read_text() == info_before


def test_slicer_logic_text_field_path(text_bundle):
    """What the effect's text field calls (logic.add_text_ijk on the red slice), against real MRML."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "IMISSegment"))
    from IMISSegmentSlicer import IMISSegmentMRMLLogic, volume_node_from_volume
    from IMISSegmentLib.io.volume import Volume
    bundle, _ = text_bundle
    scene = slicer.vtkMRMLScene()
    node = volume_node_from_volume(Volume(_volume(), (3.0, 1.0, 1.0)), scene, "ct")
    logic = IMISSegmentMRMLLogic(scene, model=imis.load_model(str(bundle), device="cpu"))
    try:
        logic.setup(node, segment_name="lung")
        assert "text" in logic.engine.capabilities
        logic.add_click((1, 30, 45), positive=True, axis=0)
        clicked = logic.segment_array().copy()
        with pytest.raises(UnknownTextError, match="closest known names"):
            logic.add_text_ijk("lnug", 1, normal_axis_ijk=2)
        assert np.array_equal(logic.segment_array(), clicked)
        logic.add_text_ijk("left lung", 1, normal_axis_ijk=2)   # k-slice 1, seen in the red (axial) view
        assert np.array_equal(logic.segment_array(), logic.result)
        assert logic.session.prompts[-1].text == "left lung"
    finally:
        logic.shutdown()


def test_cli_names_lists_what_text_finds(text_bundle, capsys):
    from helpers import run_cli
    code, out, _ = run_cli(["names", "--engine", str(text_bundle[0])], capsys)
    assert code == 0 and out.strip().endswith("text prompts find lung, rib")
    code, out, _ = run_cli(["names", "--engine", str(text_bundle[0]), "--all"], capsys)
    assert "* lung (left / right): pulmonary" in out and "  liver: hepar" in out
    code, _, err = run_cli(["names", "--engine", str(text_bundle[1])], capsys)
    assert code == 2 and "takes no text prompts" in err


def test_text_with_a_click_keeps_the_parts_the_user_pointed_at():
    from IMISSegmentLib.engines.onnx_engine import prompted_components
    mask = np.zeros((30, 30), bool)
    mask[2:6, 2:6] = True          # the clicked rib
    mask[20:24, 20:24] = True      # another rib the text lit up
    mask[2:6, 20:24] = True        # a third, inside the box below
    kept = prompted_components(mask, [(3, 3, True), (21, 21, False)], None)
    assert kept.sum() == 16 and kept[3, 3] and not kept[21, 21] and not kept[3, 21]
    near = prompted_components(mask, [(7, 7, True)], None)        # a click beside the part still picks it
    assert near.sum() == 16 and near[3, 3]
    boxed = prompted_components(mask, [(3, 3, True)], (0, 18, 8, 28))
    assert boxed.sum() == 32 and not boxed[21, 21]
    assert prompted_components(mask, [], None) is mask                 # text alone: everything
    assert prompted_components(mask, [(15, 15, True)], None) is mask   # nothing pointed at: nothing dropped


SHIPPED = Path(__file__).resolve().parents[1] / "Resources" / "models" / "default"


def test_the_shipped_model_takes_text_and_without_it_is_the_click_network():
    info = json.loads((SHIPPED / "inference_info.json").read_text())
    if "text" not in info:
        pytest.skip("the shipped bundle has no text stage (training/recipes/text_net_cpu.sh)")
    engine = imis.load_model(str(SHIPPED), device="cpu")
    assert "text" in engine.capabilities and info["export_check"]["no_text_vs_previous"] < 1e-4
    assert {"lung", "rib", "vertebra", "lesion", "liver", "heart myocardium"} <= set(
        engine.vocabulary.names(trained_only=True))
    code = engine.resolve_text("Lung_Lower_Lobe_Left")
    assert (code.name, code.side) == ("left lung", 0)   # sides are not trained: the network gets none
    assert engine.resolve_text("heart_ventricle_right").side == 2   # the ventricles' sides are
    with pytest.raises(InputError, match="not trained"):
        engine.resolve_text("femur")
