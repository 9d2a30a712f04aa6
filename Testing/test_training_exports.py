"""The export commands (training.export.click_net and the stage exporters) never destroy what they were not asked to
replace: --out that is a run folder, another folder or a file; a full bundle's other stages; a bundle's
settings; and they check their input (settings, the checkpoint's network) before writing anything."""
import hashlib
import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from IMISSegmentLib.models import default_bundle_dir, read_bundle_info  # noqa: E402
from training.loops.run import _merge  # noqa: E402

CLICK = {"name": "tiny", "network": {"widths": [8, 8, 16, 16, 16], "blocks": [0, 1, 1, 1, 1], "patch": 2},
         "input_size": 64, "data": {"roots": [], "phantom_fraction": 1.0, "augment": False, "phantom_pool": 4},
         "validation": {"phantoms": 0, "every": 0}, "interaction": {"max_rounds": 1},
         "batchnorm": {"freeze_from": None}, "optimizer": {"lr": 0.001, "warmup_steps": 1},
         "steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "seed": 0, "num_threads": 1}
PROP = {"name": "prop_tiny",
        "network": {"input_size": 32, "widths": [4, 8, 8], "blocks": [0, 0, 1], "key_dim": 4, "value_dim": 8,
                    "sensory_dim": 4, "mask_widths": [4, 4, 4], "top_k": 5},
        "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 4, "length": 3}, "validation": {"every": 0},
        "optimizer": {"lr": 0.001, "warmup_steps": 1}, "steps": 1, "batch_size": 2, "checkpoint_every": 1,
        "log_every": 1, "seed": 0, "num_threads": 1}
MRF = {"name": "mrf_tiny", "network": {"input_size": 32, "stem": 4, "widths": [8, 8, 8], "blocks": [1, 1, 1], "hidden": 8},
       "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 4, "synthetic_pairs": 16, "round_pairs": [],
                "round_fraction": 0.0},
       "validation": {"share": 0.25, "every": 0}, "optimizer": {"lr": 0.002, "warmup_steps": 1}, "steps": 1,
       "batch_size": 4, "checkpoint_every": 1, "log_every": 1, "seed": 0, "num_threads": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs of the click, propagation and MRF loops (phantoms only, one or two steps)."""
    from training.loops import click_net as train, mrf as train_mrf, propagation as train_propagation
    root = tmp_path_factory.mktemp("runs")
    train.train(_merge(train.DEFAULTS, CLICK), root / "click", progress=False)
    train_propagation.train(_merge(train_propagation.DEFAULTS, PROP), root / "prop", progress=False)
    train_mrf.train(_merge(train_mrf.DEFAULTS, MRF), root / "mrf", progress=False)
    return root


def _tree(folder):
    """{relative path: sha256} of every file under ``folder`` (what a user would lose)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _full_bundle(tmp_path, name="bundle"):
    out = tmp_path / name
    shutil.copytree(default_bundle_dir(), out)
    return out


def test_export_refuses_a_run_folder_another_folder_and_a_file(runs, tmp_path, capsys):
    from training.export.click_net import main
    run = tmp_path / "run"
    shutil.copytree(runs / "click", run)
    other = tmp_path / "somedir"
    (other / "sub").mkdir(parents=True)
    (other / "data.csv").write_text("precious\n")
    afile = tmp_path / "notabundle.txt"
    afile.write_text("hello\n")
    before = {path: _tree(path) for path in (run, other)}
    for target, message in ((run, "not a model bundle"), (other, "not a model bundle"), (afile, "is a file")):
        assert main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(target) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        # --replace-bundle is about bundles: it does not make a folder that is no bundle replaceable
        assert main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(target), "--replace-bundle"]) == 2
        assert message in capsys.readouterr().err
    assert {path: _tree(path) for path in (run, other)} == before
    assert afile.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notabundle.txt", "run", "somedir"]   # nothing beside
    # a new path and an empty folder are written
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "new", tmp_path / "empty"):
        assert main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(target)]) == 0
        assert read_bundle_info(target)["stages"].keys() == {"slice"}


def test_export_onto_a_full_bundle_lists_what_it_would_drop_unless_asked(runs, tmp_path, capsys):
    from training.export.click_net import main
    bundle = _full_bundle(tmp_path)
    before = _tree(bundle)
    checkpoint = str(runs / "click" / "checkpoint.pt")
    assert main(["--checkpoint", checkpoint, "--out", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--replace-bundle" in err
    for part in ("prop_key", "mrf_quality", "fusion", "zoom", "text_vocabulary.json", "training/"):
        assert part in err, part
    assert _tree(bundle) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    # asked: the bundle is replaced as a whole
    assert main(["--checkpoint", checkpoint, "--out", str(bundle), "--replace-bundle"]) == 0
    info = read_bundle_info(bundle)
    assert set(info["stages"]) == {"slice"} and "fusion" not in info
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    # a bundle that holds only what the export writes is replaced without the flag; one with other runs'
    # records is not (they would be lost)
    assert main(["--checkpoint", checkpoint, "--out", str(bundle)]) == 0
    assert main(["--checkpoint", checkpoint, "--out", str(bundle), "--runs", str(runs / "click")]) == 0
    assert "training/click/train.log" in read_bundle_info(bundle)["training_records"]
    assert main(["--checkpoint", checkpoint, "--out", str(bundle), "--runs", str(runs / "click")]) == 0
    assert main(["--checkpoint", checkpoint, "--out", str(bundle)]) == 2
    assert "training/click/" in capsys.readouterr().err


def test_export_mrf_settings_apply_over_the_bundles_settings(runs, tmp_path, capsys):
    from training.export.mrf import main
    bundle = _full_bundle(tmp_path)
    shipped = json.loads((bundle / "inference_info.json").read_text())["fusion"]["settings"]
    assert shipped["network"] is False and shipped["direction_margin"] == 0.5
    checkpoint = str(runs / "mrf" / "checkpoint.pt")
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--settings", '{"threshold": 0.4}']) == 0
    out = capsys.readouterr().out
    assert out.startswith("replaced multi-round fusion") and "network off" in out
    settings = read_bundle_info(bundle)["fusion"]["settings"]
    assert settings == {"extend": "always", **shipped, "threshold": 0.4}   # a setting newer than the bundle: its default
    # without --settings the bundle's settings stay as they are
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle)]) == 0
    assert read_bundle_info(bundle)["fusion"]["settings"] == {"extend": "always", **shipped, "threshold": 0.4}
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--settings", '{"network": true}']) == 0
    assert read_bundle_info(bundle)["fusion"]["settings"]["network"] is True
    capsys.readouterr()
    before = _tree(bundle)
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--settings", '{"threshold": "x"}']) == 2
    assert "threshold" in capsys.readouterr().err
    assert _tree(bundle) == before


def test_export_propagation_checks_settings_before_writing(runs, tmp_path, capsys):
    from training.export.propagation import main
    bundle = _full_bundle(tmp_path)
    before = _tree(bundle)
    checkpoint = str(runs / "prop" / "checkpoint.pt")
    for bad, message in (('{"working_max": -3}', "working_max"), ('{"working_max": "abc"}', "working_max"),
                         ('{"working_min": 12}', "working_min < working_max"), ('{"roi_scale": 0}', "roi_scale"),
                         ('{"empty_stop": 1.5}', "empty_stop"), ('{"containment": "x"}', "containment"),
                         ('{"top_k": 3}', "unknown propagation")):
        assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--settings", bad]) == 2, bad
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _tree(bundle) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    # good values apply over the bundle's settings
    shipped = json.loads((bundle / "inference_info.json").read_text())["propagation"]["settings"]
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--settings", '{"working_max": 12}']) == 0
    assert capsys.readouterr().out.startswith("replaced propagation")
    assert read_bundle_info(bundle)["propagation"]["settings"] == {**shipped, "working_max": 12}
    # --bundle-version sets the version; an empty one is refused before anything is written
    before = _tree(bundle)
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--bundle-version", " "]) == 2
    assert "--bundle-version" in capsys.readouterr().err and _tree(bundle) == before
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--bundle-version", "9.8.7"]) == 0
    assert read_bundle_info(bundle)["version"] == "9.8.7"


def test_a_checkpoint_of_another_network_is_named(runs, tmp_path, capsys):
    from training.export.click_net import main as export
    from training.export.correction import main as export_correction
    from training.export.mrf import main as export_mrf
    from training.export.propagation import main as export_propagation
    bundle = _full_bundle(tmp_path)
    before = _tree(bundle)
    cases = ((export, "prop", "--out", str(tmp_path / "new"), "holds a PropNet", "expects a ClickNet"),
             (export_propagation, "click", "--bundle", str(bundle), "holds a ClickNet", "expects a PropNet"),
             (export_mrf, "click", "--bundle", str(bundle), "holds a ClickNet", "expects a MrfNet"),
             (export_correction, "mrf", "--bundle", str(bundle), "holds a MrfNet", "expects a ClickNet"))
    for command, run, option, target, held, expected in cases:
        assert command(["--checkpoint", str(runs / run / "checkpoint.pt"), option, target]) == 2
        err = capsys.readouterr().err
        assert held in err and expected in err and len(err) < 400, err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_text("garbage\n")
    assert export(["--checkpoint", str(corrupt), "--out", str(tmp_path / "new")]) == 2
    assert str(corrupt) in capsys.readouterr().err
    assert _tree(bundle) == before and not (tmp_path / "new").exists()


def test_stale_staging_folders_of_killed_exports_are_removed(runs, tmp_path):
    from training.export.correction import main
    bundle = tmp_path / "bundle"
    from training.export.click_net import main as export
    assert export(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--out", str(bundle)]) == 0
    dead = 2 ** 22 + 12345   # above Linux's default pid_max: no such process
    while True:
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        dead += 1
    stale = tmp_path / f".bundle.staging-{dead}-abc123"
    (stale / "sub").mkdir(parents=True)
    live = tmp_path / f".bundle.staging-{os.getpid()}-abc123"   # a running export's: kept
    live.mkdir()
    users = tmp_path / ".bundle.mine"   # not an export's: kept
    users.mkdir()
    assert main(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--bundle", str(bundle)]) == 0
    assert not stale.exists() and live.is_dir() and users.is_dir()
    assert "slice_propagated" in read_bundle_info(bundle)["stages"]


def test_the_model_card_is_read_from_the_bundles_records(runs, tmp_path, capsys):
    """training.export.model_card writes MODEL_CARD.md from what the bundle and its records say: the run and the
    command that makes it, its steps and time, the split's counts, and the evaluations' mean Dice."""
    from IMISSegmentLib.evaluation.report import write_report
    from training.export.click_net import main as export_main
    from training.export.model_card import CARD_FILE, main
    bundle = tmp_path / "bundle"
    assert export_main(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--out", str(bundle),
                        "--runs", str(runs / "click")]) == 0
    steps = [{"step": i, "dice": d, "nsd": d, "seconds": 0.1} for i, d in enumerate((0.25, 0.5, 0.75, 0.8, 0.9))]
    record = {"case": "set/a", "structure": "liver", "label": 1, "method": "clicknet", "prompt": "click",
              "protocol": "2d", "final_dice": 0.9, "final_nsd": 0.9, "dsc_auc": None, "nsd_auc": None, "noc85": 4,
              "noc90": 5, "seconds_per_step": 0.1, "steps": steps}
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    write_report(evaluation, {"config": {"data_dir": "DATA", "methods": ["clicknet"], "split": "split.json"},
                              "cases": ["set/a"], "records": [record, dict(record, label=2, steps=steps[::-1])]})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"command": "python -m training.data.splits --write",
                                 "sets": {"set": {"training": ["b", "c", "d"], "validation": ["a"]}},
                                 "case_folders": {"training": [], "reported": ["scan_x"]}}))
    capsys.readouterr()
    assert main(["--bundle", str(bundle), "--evaluation", str(evaluation), "--split", str(split)]) == 0
    card = (bundle / CARD_FILE).read_text()
    assert "| 2D network: click, box and previous mask to the slice's mask | tiny | 2 |" in card
    assert "python -m training.loops.click_net --config CONFIG --out runs/tiny" in card   # no training/configs/tiny.json
    assert "Pretrained weights: none" in card
    assert "| set | 3 | 1 |" in card and "reported (never trained on, never used to choose) scan_x" in card
    # the mean of the two structures after 1 / 3 / 5 interactions: (0.25 + 0.9) / 2, (0.75 + 0.75) / 2, (0.9 + 0.25) / 2
    assert "| 2d | clicknet | click | 2 | 0.575 | 0.750 | 0.575 |" in card
    # a folder that is no bundle: one line, nothing written
    (tmp_path / "empty").mkdir()
    assert main(["--bundle", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("training.export.model_card: error:") and err.count("\n") == 1
    assert not (tmp_path / "empty" / CARD_FILE).exists()


def test_carry_keeps_an_earlier_bundles_stages_beside_a_new_2d_network(runs, tmp_path, capsys):
    """training.export.carry copies the propagation / fusion stages and settings of one bundle into another as
    they are (same files, same checksums, their run records), and a part the source lacks changes nothing."""
    import numpy as np
    from IMISSegmentLib.engines.onnx_engine import OnnxClickEngine
    from IMISSegmentLib.session import InteractiveSession
    from training.export.carry import main
    from training.export.click_net import main as export_main
    bundle = tmp_path / "bundle"
    assert export_main(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--out", str(bundle)]) == 0
    assert "prop_key" not in read_bundle_info(bundle)["stages"] and "fuse" not in read_bundle_info(bundle)["capabilities"]
    before = _tree(bundle)
    capsys.readouterr()
    # the tiny bundle has no propagation to give: one line, the target as it was
    assert main(["--from", str(bundle), "--to", str(_full_bundle(tmp_path, "other")), "--parts", "propagation"]) == 2
    assert "has no propagation" in capsys.readouterr().err
    assert main(["--from", str(default_bundle_dir()), "--to", str(bundle), "--parts", "propagation,warp"]) == 2
    assert "unknown parts warp" in capsys.readouterr().err and _tree(bundle) == before
    # a 2D correction network of another input size than the target's 2D network cannot be carried: the tiny
    # bundle's (64, added here) into the shipped one (256)
    from training.export.correction import main as export_correction
    with_correction = tmp_path / "with_correction"
    shutil.copytree(bundle, with_correction)
    assert export_correction(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--bundle",
                              str(with_correction)]) == 0
    capsys.readouterr()
    target = _full_bundle(tmp_path, "target")
    untouched = _tree(target)
    assert main(["--from", str(with_correction), "--to", str(target), "--parts", "propagated_correction"]) == 2
    assert "differ in input_size" in capsys.readouterr().err and _tree(target) == untouched
    assert main(["--from", str(default_bundle_dir()), "--to", str(bundle),
                 "--parts", "propagation,fusion,growth_check"]) == 0
    info, shipped = read_bundle_info(bundle), read_bundle_info(default_bundle_dir())
    assert {"propagate", "fuse"} <= set(info["capabilities"])
    for stage in ("prop_key", "prop_value", "prop_decoder", "mrf_quality"):
        assert info["stages"][stage] == shipped["stages"][stage]
    assert info["growth_check"] == shipped["growth_check"] and info["propagation"] == shipped["propagation"]
    assert info["stages"]["slice"] != shipped["stages"]["slice"]            # the new 2D network stays
    run = shipped["propagation"]["training"]["run_name"]
    assert f"training/{run}/config.json" in info["training_records"] and (bundle / "training" / run).is_dir()
    # the runs it started from (init_from) come along when the source holds their records
    parent = json.loads((default_bundle_dir() / "training" / run / "config.json").read_text()).get("init_from", "")
    parent_run = os.path.basename(os.path.dirname(parent))
    assert (default_bundle_dir() / "training" / parent_run).is_dir(), "the shipped bundle keeps its runs' records"
    assert (bundle / "training" / parent_run / "config.json").is_file()
    assert f"training/{parent_run}/config.json" in info["training_records"]
    # --records: further record folders by name; one the source lacks is refused, the target as it was
    kept = _tree(bundle)
    assert main(["--from", str(default_bundle_dir()), "--to", str(bundle), "--parts", "zoom", "--records", "nosuch"]) == 2
    assert "no run records nosuch" in capsys.readouterr().err and _tree(bundle) == kept
    # and it runs: a box, then propagation through the volume
    session = InteractiveSession(OnnxClickEngine(bundle))
    volume = np.zeros((6, 48, 48), np.int16)
    volume[:, 16:32, 16:32] = 200
    session.set_volume(volume, (2.0, 1.0, 1.0))
    session.add_box(3, (14, 14), (34, 34))
    session.propagate()
    assert session.result.shape == volume.shape and session.can_propagate


def test_the_propagated_correction_stage_can_be_removed_again(runs, tmp_path, capsys):
    from IMISSegmentLib.models import load_model
    from training.export.click_net import main as export
    from training.export.correction import main
    import torch
    bundle = tmp_path / "bundle"
    assert export(["--checkpoint", str(runs / "click" / "checkpoint.pt"), "--out", str(bundle)]) == 0
    # the correction network's run: a folder named unlike its config ("click" holding run "click_ft_run")
    correction = tmp_path / "click"
    shutil.copytree(runs / "click", correction)
    state = torch.load(correction / "checkpoint.pt", weights_only=False)
    state["config"]["name"] = "click_ft_run"
    torch.save(state, correction / "checkpoint.pt")
    (correction / "config.json").write_text(json.dumps(state["config"]))
    checkpoint = str(correction / "checkpoint.pt")
    assert main(["--checkpoint", checkpoint, "--bundle", str(bundle), "--runs", str(correction)]) == 0
    capsys.readouterr()
    info = read_bundle_info(bundle)
    assert "slice_propagated" in info["stages"] and (bundle / "training" / "click").is_dir()
    assert main(["--remove", "--bundle", str(bundle), "--records", "no_such_run"]) == 2
    assert "training/no_such_run" in capsys.readouterr().err
    for bad in ("", ".", "..", "a/b"):
        assert main(["--remove", "--bundle", str(bundle), "--records", bad]) == 2
        assert "not the name of a run folder" in capsys.readouterr().err
    assert read_bundle_info(bundle) == info          # a failure leaves the bundle as it was
    # by default the records of the run the stage names go with it (found by their config's name)
    assert main(["--remove", "--bundle", str(bundle)]) == 0
    assert capsys.readouterr().out.startswith("removed the propagated-slice correction network")
    after = read_bundle_info(bundle)
    assert "slice_propagated" not in after["stages"] and "propagated_correction" not in after
    assert not (bundle / "click_net_propagated.onnx").exists() and not (bundle / "training" / "click").exists()
    assert not any(r.startswith("training/click/") for r in after.get("training_records", []))
    engine = load_model(str(bundle))
    assert not engine.corrects_propagated
    if "growth_check" in after:    # the neighbour mode is written down: "auto" would now mean "off"
        assert after["growth_check"]["neighbour"] == "prior" and engine.growth_check.neighbour_mode(False) == "prior"
    assert main(["--remove", "--bundle", str(bundle)]) == 2
    assert "no propagated-slice correction network" in capsys.readouterr().err
    # the records of a run another entry still names stay (here the 2D network came from the same run)
    again, same = tmp_path / "again", str(runs / "click" / "checkpoint.pt")
    assert export(["--checkpoint", same, "--out", str(again)]) == 0
    assert main(["--checkpoint", same, "--bundle", str(again), "--runs", str(runs / "click")]) == 0
    assert main(["--remove", "--bundle", str(again)]) == 0
    assert (again / "training" / "click").is_dir() and "slice_propagated" not in read_bundle_info(again)["stages"]


def test_the_model_cards_time_adds_up_the_sittings_of_a_resumed_run(tmp_path):
    """A run interrupted and resumed hours later (or re-run once finished) took the time of its sittings."""
    from training.export.model_card import _log_times
    log = tmp_path / "train.log"
    log.write_text("2026-12-06 10:00:00,000 started: 10 parameters\n"
                   "2026-12-06 10:20:00,000 step 100/300 loss 1.0\n"
                   "a line without a time\n"
                   "2026-12-06 15:00:00,000 resumed at step 100: 10 parameters\n"
                   "2026-12-06 15:30:00,000 finished at step 300\n"
                   "2026-12-07 09:00:00,000 resumed at step 300: 10 parameters\n"
                   "2026-12-07 09:00:30,000 finished at step 300\n")
    first, spent = _log_times(log)
    assert first.hour == 10 and spent.total_seconds() == 50 * 60 + 30
    (tmp_path / "empty.log").write_text("no times here\n")
    assert _log_times(tmp_path / "empty.log") == (None, None)


def test_weight_averaging_makes_a_run_the_export_and_model_card_read(runs, tmp_path, capsys):
    """training.loops.average: weight x init_from + (1 - weight) x average_with, parameter by parameter, written as a
    run folder that the export takes and whose model-card row names the averaging command and both parents; bad
    configs, another network and half-frozen batch norm are refused with one line and nothing written."""
    from training.export.click_net import main as export_main
    from training.export.model_card import CARD_FILE, main as card_main
    from training.loops.average import main
    from training.loops.checkpoints import read_checkpoint
    fine = runs / "click" / "checkpoint.pt"
    base = tmp_path / "base" / "checkpoint.pt"
    state = read_checkpoint(fine)
    halved = {k: (v * 0.5 if v.is_floating_point() and "running" not in k else v) for k, v in state["model"].items()}
    base.parent.mkdir()
    torch.save(dict(state, model=halved), base)
    config = {"name": "tiny_avg", "init_from": str(fine), "average_with": str(base), "weight": 0.25,
              "bundle_name": "tiny-avg", "bundle_version": "1.2.3"}
    (tmp_path / "avg.json").write_text(json.dumps(config))
    out = tmp_path / "tiny_avg"
    assert main(["--config", str(tmp_path / "avg.json"), "--out", str(out)]) == 0
    averaged = read_checkpoint(out / "checkpoint.pt")
    for name, value in state["model"].items():
        if value.is_floating_point():   # 0.25 x w + 0.75 x w / 2 = 0.625 w (batch-norm statistics: the same in both)
            factor = 1.0 if "running" in name else 0.625
            assert torch.allclose(averaged["model"][name], value * factor, atol=1e-6), name
    assert averaged["config"]["loop"] == "average" and averaged["config"]["steps"] == 0
    assert "data" not in averaged["config"] and averaged["config"]["network"] == state["config"]["network"]
    assert averaged["network_config"] == state["network_config"]
    bundle = tmp_path / "bundle"
    assert export_main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(bundle), "--runs", str(runs / "click"),
                        str(out)]) == 0
    assert read_bundle_info(bundle)["version"] == "1.2.3"
    assert card_main(["--bundle", str(bundle)]) == 0
    card = (bundle / CARD_FILE).read_text()
    assert "python -m training.loops.average --config CONFIG --out runs/tiny_avg" in card
    assert "| tiny_avg | 0 |" in card and f"weights averaged with {base} (0.25 : 0.75)" in card
    assert "| click | 2 |" in card                 # the chain goes on through init_from's run (its folder)
    capsys.readouterr()
    other = tmp_path / "other" / "checkpoint.pt"
    other.parent.mkdir()
    torch.save(dict(state, model={k: v for k, v in list(state["model"].items())[1:]}), other)
    frozen = tmp_path / "frozen" / "checkpoint.pt"
    frozen.parent.mkdir()
    torch.save(dict(state, batchnorm_frozen=not state.get("batchnorm_frozen", False)), frozen)
    # --out that holds one of the inputs, or a training run: refused, the run untouched
    before = _tree(runs / "click")
    assert main(["--config", str(tmp_path / "avg.json"), "--out", str(runs / "click")]) == 2
    assert "holds one of the checkpoints" in capsys.readouterr().err and _tree(runs / "click") == before
    shutil.copytree(runs / "click", tmp_path / "trained")
    assert main(["--config", str(tmp_path / "avg.json"), "--out", str(tmp_path / "trained")]) == 2
    assert "holds a training run" in capsys.readouterr().err
    (tmp_path / "trained" / "checkpoint.pt").unlink()     # a training run that has not saved yet: refused too
    assert main(["--config", str(tmp_path / "avg.json"), "--out", str(tmp_path / "trained")]) == 2
    assert "another run's config.json" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "avg.json"), "--out", str(out)]) == 0   # an earlier average: replaced
    capsys.readouterr()
    restat = tmp_path / "restat" / "checkpoint.pt"
    restat.parent.mkdir()
    torch.save(dict(state, model={k: (v + 1.0 if "running_mean" in k else v) for k, v in state["model"].items()}),
               restat)
    for change, message in (({"weight": 1.5}, "weight"), ({"average_with": str(fine)}, "same checkpoint"),
                            ({"loop": "click_net"}, "loop"), ({"average_with": str(restat)}, "batch-norm statistics"), ({"weight": True}, "weight"), ({"stepz": 1}, "unknown keys"),
                            ({"average_with": str(tmp_path / "none.pt")}, "does not exist"),
                            ({"average_with": str(other)}, "different networks"),
                            ({"average_with": str(frozen)}, "frozen batch-norm")):
        (tmp_path / "bad.json").write_text(json.dumps(dict(config, **change)))
        assert main(["--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "bad_run")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("training.loops.average: error:") and message in err and err.count("\n") == 1
        assert not (tmp_path / "bad_run").exists()
