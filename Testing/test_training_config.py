"""training/: config checks, resume rules, one-line errors, reproducible starts, fresh / trimmed run records."""
import json

import pytest

torch = pytest.importorskip("torch")

from training.loops import click_net as train_module  # noqa: E402
from training.loops.run import _merge  # noqa: E402
from training.loops.click_net import main as train_main  # noqa: E402

TINY = {"name": "tiny", "network": {"widths": [8, 8, 16, 16, 16], "blocks": [0, 1, 1, 1, 1]}, "input_size": 64,
        "data": {"roots": [], "phantom_fraction": 1.0, "augment": False, "phantom_pool": 2},
        "validation": {"phantoms": 0, "every": 0}, "interaction": {"max_rounds": 1},
        "optimizer": {"lr": 0.001, "warmup_steps": 1}, "steps": 2, "batch_size": 2, "checkpoint_every": 1,
        "log_every": 1, "num_threads": 1}


def _config_file(tmp_path, values=None, name="tiny.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values or TINY))
    return path


def _run(main, capsys, *argv):
    code = main([*map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize("override, named", [
    ("stpes=5", "stpes"), ("optimizer.learning_rate=0.1", "learning_rate"), ("data.foo=1", "data"),
    ("validation.foo=1", "validation"), ("batchnorm.foo=1", "batchnorm"), ("network.foo=1", "network"),
    ("steps=0", "steps"), ("steps=abc", "steps"), ("batch_size=0", "batch_size"), ("optimizer.lr=-1", "optimizer.lr"),
("optimizer.lr=NaN", "optimizer.lr"), ("optimizer.lr=1e-3x", "optimizer.lr"),
    ("data.phantom_fraction=2", "data.phantom_fraction"), ("checkpoint_every=0", "checkpoint_every"),
    ("log_every=0", "log_every"), ("input_size=50", "input_size"), ("seed=-1", "seed"), ("num_threads=0", "num_threads"),
    ('device="gpu"', "device"), ("data=5", "data"), ("interaction=[1]", "interaction"), ("steps.x=1", "steps"),
    ("data.axes=[3]", "data.axes"), ('data.roots=["/nonexistent/imis"]', "/nonexistent/imis"), ("=5", "key"),
    ('init_from="/nonexistent/imis.pt"', "/nonexistent/imis.pt"), ('data.balance="cases"', "data.balance"),
    ('validation.held_out="all"', "validation.held_out"), ('network.encoder="resnet"', "encoder"),
    ("pretrained_encoder=1", "pretrained_encoder"), ("data.zoom.fraction=2", "data.zoom.fraction"),
    ("data.zoom.expansion=[4, 2]", "data.zoom.expansion"), ("data.zoom.min_crop_mm=40", "data.zoom.min_crop_mm"),
    ("data.zoom.scale=2", "data.zoom"), ('data.structure_weights={"liver": 0}', "structure_weights"),
    ('data.structure_weights={"liver": 2}', "structure_weights need balance"),
    ("data.structure_weights=[2]", "data.structure_weights"), ("input_gamma=0", "input_gamma"),
    ("interaction.confirm_click_prob=2", "interaction.confirm_click_prob"),
    ("data.propagated_offset_mm=[20, 2]", "data.propagated_offset_mm"),
    ("data.propagated_offset_mm=[-1, 2]", "data.propagated_offset_mm")])
def test_bad_config_values_give_one_line_naming_the_key_and_touch_nothing(tmp_path, capsys, override, named):
    out = tmp_path / "run"
    code, err = _run(train_main, capsys, "--config", _config_file(tmp_path), "--out", out, "--set", override)
    assert code == 2 and err.startswith("training.loops.click_net: error: ") and named in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists(), "nothing may be written before the config is checked"


def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    code, err = _run(train_main, capsys, "--config", _config_file(tmp_path), "--out", tmp_path / "run",
                     "--set", 'device="cuda"')
    assert code == 2 and "device" in err and "cuda" in err.lower()


def test_the_other_loops_check_their_sections(tmp_path, capsys):
    from training.loops.mrf import main as mrf_main
    from training.loops.propagation import main as prop_main
    from training.loops.text import main as text_main
    config = _config_file(tmp_path, {"steps": 1})
    code, err = _run(prop_main, capsys, "--config", config, "--out", tmp_path / "p", "--set", "network.foo=1")
    assert code == 2 and "network" in err and "foo" in err
    code, err = _run(prop_main, capsys, "--config", config, "--out", tmp_path / "p", "--set", "data.length=1")
    assert code == 2 and "data.length" in err
    code, err = _run(mrf_main, capsys, "--config", config, "--out", tmp_path / "m",
                     "--set", 'data.round_pairs="/nonexistent/pairs.npz"')
    assert code == 2 and "/nonexistent/pairs.npz" in err
    (tmp_path / "notpairs.npz").write_text("not an npz")
    code, err = _run(mrf_main, capsys, "--config", config, "--out", tmp_path / "m",
                     "--set", f'data.round_pairs="{tmp_path / "notpairs.npz"}"')
    assert code == 2 and "notpairs.npz" in err and "Traceback" not in err
    code, err = _run(text_main, capsys, "--config", config, "--out", tmp_path / "t", "--set", 'modes={"txt": 1}')
    assert code == 2 and "txt" in err
    code, err = _run(text_main, capsys, "--config", config, "--out", tmp_path / "t",
                     "--set", 'modes={"text": 0, "text+click": 0}')
    assert code == 2 and "modes" in err
    code, err = _run(text_main, capsys, "--config", config, "--out", tmp_path / "t", "--set", "init_bundle=/nonexistent/b")
    assert code == 2 and "/nonexistent/b" in err
    for override, named in (('data.sides="yes"', "data.sides"), ('data.sides=["heart ventrikel"]', "heart ventrikel"),
                            ('data.zoom={"fraction": 0.5}', "data.zoom")):
        code, err = _run(text_main, capsys, "--config", config, "--out", tmp_path / "t", "--set", override)
        assert code == 2 and named in err and "\n" not in err.strip(), err
    code, err = _run(prop_main, capsys, "--config", config, "--out", tmp_path / "p", "--set", 'validation.held_out="all"')
    assert code == 2 and "validation.held_out" in err
    assert not any((tmp_path / name).exists() for name in "pmt")


def test_text_modes_given_replace_the_defaults(tmp_path):
    from training.loops.text import load_text_config
    config = load_text_config(_config_file(tmp_path, {"modes": {"text": 1.0}}))
    assert config["modes"] == {"text": 1.0}
    assert set(load_text_config(_config_file(tmp_path, {}, "empty.json"))["modes"]) == {"text", "text+click", "text+box"}


def test_shipped_configs_pass_the_checks():
    from helpers import REPO
    from training.loops.mrf import DEFAULTS as MRF_DEFAULTS, check_mrf_config
    from training.loops.propagation import DEFAULTS as PROP_DEFAULTS, check_prop_config
    from training.loops.text import DEFAULTS, TEXT_DEFAULTS
    for path in sorted((REPO / "training" / "configs").glob("*.json")):
        values = json.loads(path.read_text())
        if values.get("loop") == "average":      # training/loops/average.py: two checkpoints, no data
            from training.loops.average import check_average_config
            check_average_config(values)
            continue
        for section in ("data", "validation"):   # the data folders and round pairs are not needed here
            if "roots" in values.get(section, {}):
                values[section]["roots"] = []
        if "round_pairs" in values["data"]:
            values["data"]["round_pairs"] = None
        if path.name.startswith("prop"):
            check_prop_config(_merge(PROP_DEFAULTS, values))
        elif path.name.startswith("mrf"):
            check_mrf_config(_merge(MRF_DEFAULTS, values))
        elif path.name.startswith("text"):
            from training.loops.text_localiser import LOCALISER_DEFAULTS
            defaults = _merge(DEFAULTS, LOCALISER_DEFAULTS if path.name.startswith("text_localiser") else TEXT_DEFAULTS)
            train_module.check_config(_merge(defaults, values), defaults)
        else:
            train_module.check_train_config(_merge(train_module.DEFAULTS, values))


def test_resume_refuses_another_config_and_lets_the_step_budget_grow(tmp_path, capsys):
    config, out = _config_file(tmp_path), tmp_path / "run"
    assert _run(train_main, capsys, "--config", config, "--out", out)[0] == 0
    saved_config = (out / "config.json").read_text()
    code, err = _run(train_main, capsys, "--config", config, "--out", out, "--steps", "3",
                     "--set", "batch_size=1", "--set", "optimizer.lr=0.5")
    assert code == 2 and "batch_size" in err and "optimizer.lr" in err and "--no-resume" in err
    code, err = _run(train_main, capsys, "--config", config, "--out", out, "--steps", "3",
                     "--set", 'network={"widths": [8, 16, 16, 16, 16], "blocks": [0, 1, 1, 1, 1]}')
    assert code == 2 and "network" in err
    assert (out / "config.json").read_text() == saved_config, "a refused resume leaves the run folder as it was"
    code, err = _run(train_main, capsys, "--config", config, "--out", out, "--steps", "1")
    assert code == 2 and "steps 1" in err and "step 2" in err
    # the allowed settings may change: steps grows, the log cadence changes
    assert _run(train_main, capsys, "--config", config, "--out", out, "--steps", "3", "--set", "log_every=2")[0] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    written = json.loads((out / "config.json").read_text())
    assert written["steps"] == 3 and written["log_every"] == 2
    assert "resuming with steps 2 -> 3" in (out / "train.log").read_text()
    # the propagation loop refuses a click-net run folder with one line
    from training.loops.propagation import main as prop_main
    code, err = _run(prop_main, capsys, "--config", _config_file(tmp_path, {"steps": 4}, "p.json"), "--out", out)
    assert code == 2 and "another training loop" in err


def test_bad_run_folders_and_checkpoints_give_one_line(tmp_path, capsys):
    config = _config_file(tmp_path)
    (tmp_path / "afile").write_text("x")
    code, err = _run(train_main, capsys, "--config", config, "--out", tmp_path / "afile")
    assert code == 2 and "afile" in err and (tmp_path / "afile").read_text() == "x"
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_text("garbage\n")
    code, err = _run(train_main, capsys, "--config", config, "--out", corrupt)
    assert code == 2 and str(corrupt / "checkpoint.pt") in err and "Traceback" not in err
    assert (corrupt / "checkpoint.pt").read_text() == "garbage\n"
    code, err = _run(train_main, capsys, "--config", config, "--out", tmp_path / "x", "--stop-at", "-1")
    assert code == 2 and "--stop-at" in err


def _first_step(tmp_path, name, torch_seed):
    from training.loops.click_net import load_config, train
    torch.manual_seed(torch_seed)   # whatever state torch's generator is in, the run's seed decides the weights
    result = train(load_config(_config_file(tmp_path)) | {"steps": 1}, tmp_path / name, progress=False)
    return result["history"][0]["loss"], torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]


def test_identical_click_runs_give_identical_weights(tmp_path):
    loss_a, model_a = _first_step(tmp_path, "a", 1)
    loss_b, model_b = _first_step(tmp_path, "b", 2)
    assert loss_a == loss_b
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_identical_text_runs_give_identical_weights(tmp_path):
    from IMISSegmentLib.models import default_bundle_dir
    from training.loops.run import _merge
    from training.loops.text import DEFAULTS, TEXT_DEFAULTS, train_text
    config = _merge(_merge(DEFAULTS, TEXT_DEFAULTS), {
        "init_bundle": str(default_bundle_dir()), "text": {"dim": 8}, "input_size": 64, "steps": 1, "batch_size": 1,
        "num_threads": 1, "data": {"roots": [], "phantom_pool": 2, "min_area": 8}})
    runs = []
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        result = train_text(config, tmp_path / name, progress=False)
        runs.append((result["history"][0]["loss"], torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1]["model"][k], runs[1][1]["model"][k]) for k in runs[0][1]["model"])


def test_metrics_start_afresh_and_a_resume_drops_the_redone_steps(tmp_path, capsys):
    config, out = _config_file(tmp_path), tmp_path / "run"
    assert _run(train_main, capsys, "--config", config, "--out", out, "--steps", "3", "--set", "checkpoint_every=2")[0] == 0
    # as after a kill at step 3 with the checkpoint at step 2: records 1..3, the checkpoint's step 2
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state["step"] = 2
    torch.save(state, out / "checkpoint.pt")
    assert _run(train_main, capsys, "--config", config, "--out", out, "--steps", "3", "--set", "checkpoint_every=2")[0] == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert _run(train_main, capsys, "--config", config, "--out", out, "--no-resume")[0] == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    log = (out / "train.log").read_text()
    assert "resumed" not in log and log.count("started") == 1


def test_a_packed_npz_root_passes_the_check_and_a_stray_file_does_not(tmp_path, write_block_case):
    """training.data.pack_data's .npz is a data root like a folder (the GPU recipe trains from them)."""
    from IMISSegmentLib.errors import InputError
    from training.data.pack_data import pack_cases
    write_block_case(tmp_path / "data" / "case_a", 0)
    packed = tmp_path / "train.npz"
    pack_cases([tmp_path / "data"], packed)
    config = {**TINY, "data": {**TINY["data"], "roots": [str(packed)]}}
    assert train_module.check_train_config(config) is config
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder of cases nor a .npz"):
        train_module.check_train_config({**TINY, "data": {**TINY["data"], "roots": [str(tmp_path / "notes.txt")]}})


def test_resuming_with_fewer_text_modes_is_refused(tmp_path):
    """``modes`` replaces the defaults as a whole, so it is compared whole: a mode dropped is a change."""
    from IMISSegmentLib.errors import InputError
    from training.loops.config_check import check_resume
    saved = {"step": 3, "config": {"steps": 10, "modes": {"text": 0.4, "text+click": 0.4, "text+box": 0.2}}}
    with pytest.raises(InputError, match="modes"):
        check_resume(saved, {"steps": 10, "modes": {"text": 0.4}}, tmp_path / "checkpoint.pt")
    assert check_resume(saved, {"steps": 12, "modes": dict(saved["config"]["modes"])}, tmp_path / "c.pt") == ["steps"]


def test_a_validation_set_the_split_leaves_empty_is_one_line(tmp_path, capsys):
    """validation.held_out "only" over a folder without any of the split's validation cases: one line, exit 2."""
    from helpers import REPO
    code, err = _run(train_main, capsys, "--config", _config_file(tmp_path), "--out", tmp_path / "run",
                     "--set", f'validation.roots=["{REPO / "Resources" / "Data"}"]', "--set", 'validation.held_out="only"')
    assert code == 2 and "no cases to read" in err and "only the split's validation cases" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
