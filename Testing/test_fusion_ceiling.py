"""training/analysis/fusion_ceiling.py: the reference-guided fusion rules that bound what the MRF network could do."""
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from IMISSegmentLib.engines.base import PropagationRequest  # noqa: E402
from IMISSegmentLib.evaluation.simulated_user import SimulatedClick  # noqa: E402
from IMISSegmentLib.evaluation.protocol import clicked_slice_drops, round_record  # noqa: E402
from training.analysis.fusion_ceiling import ReferenceFusion, drop_causes, main  # noqa: E402


def _request(prompted):
    return PropagationRequest(clicks=[], boxes=[], texts=[], prompted=prompted, result=None)


def test_the_oracle_keeps_per_slice_the_mask_with_fewer_wrong_pixels_and_never_touches_the_users_slice():
    reference = np.zeros((5, 10, 10), bool)
    reference[:, 2:8, 2:8] = True
    previous = reference.astype(np.uint8).copy()
    current = previous.copy()
    previous[1, 2:8, 2:4] = 0        # slice 1: the previous round was worse
    current[3, 0:10, 0:10] = 1       # slice 3: the new round ran over
    current[2, 2:8, 2:8] = 0         # slice 2 is the user's: its new (here empty) mask stays
    oracle = ReferenceFusion("oracle")
    oracle.reference = reference
    fused = oracle(_request({(0, 2): current[2] > 0}), previous, current)
    assert np.array_equal(fused[1], current[1]) and np.array_equal(fused[3], previous[3])
    assert not fused[2].any()
    assert [(index, keep) for index, keep, _, _ in oracle.decisions] == [(1, False), (3, True)]
    freeze = ReferenceFusion("freeze")
    freeze.reference = reference
    fused = freeze(_request({(0, 2): current[2] > 0}), previous, current)
    assert np.array_equal(np.delete(fused, 2, axis=0), np.delete(previous, 2, axis=0)) and not fused[2].any()
    with pytest.raises(ValueError):
        ReferenceFusion("always")


def test_the_command_runs_each_rule_through_the_3d_protocol_and_writes_the_table(tmp_path, capsys, write_block_case):
    data = tmp_path / "data"
    write_block_case(data / "case_a", 0)
    write_block_case(data / "held_out", 1)
    out = tmp_path / "ceiling"
    assert main(["--data", str(data), "--exclude-cases", "held_out", "--rounds", "2", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())
    assert sorted((r["method"], r["prompt"]) for r in rows) == sorted(
        (rule, prompt) for rule in ("off", "oracle", "freeze", "network") for prompt in ("box", "click"))
    assert all(r["structures"] == 1 and len(r["dice_by_step"]) == 3 and r["drop_share"] is not None for r in rows)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["case"] for r in records} == {"case_a"}
    fused = {rule: any(step["fusion_seconds"] > 0 for r in records if r["method"] == rule for step in r["steps"])
             for rule in ("off", "network")}
    assert fused["network"] and not fused["off"]   # the bundle's own quality network ran on the network rule
    log = (out / "train.log").read_text()
    assert "drops" in log and "the clicked slice worse in" in log
    for record in records:   # one round record per correction, its Dice the protocol's
        pairs = [(a["dice"], b["dice"]) for a, b in zip(record["steps"], record["steps"][1:]) if b["action"] != "none"]
        assert len(record["rounds"]) == len(pairs)
        assert all((r["dice_before"], r["dice_after"]) == pytest.approx(p) for r, p in zip(record["rounds"], pairs))
    assert main(["--data", str(data), "--rules", "magic", "--out", str(tmp_path / "bad")]) == 2
    assert "--rules" in capsys.readouterr().err
    assert main(["--data", str(data), "--rules", "network", "--threshold", "1.5", "--out", str(tmp_path / "t")]) == 2
    assert "--threshold" in capsys.readouterr().err
    for bad, message in (('{"direction_margin": -1}', "direction_margin"), ('{"treshold": 0.5}', "unknown fusion"),
                         ("[0.5]", "JSON object"), ("{network: 0}", "not JSON")):
        assert main(["--data", str(data), "--fusion-settings", bad, "--out", str(tmp_path / "t")]) == 2
        assert message in capsys.readouterr().err


def test_fusion_settings_replace_the_bundles_for_the_network_rule(tmp_path, capsys, write_block_case):
    """The network rule with the quality network off is no fusion; with threshold 0 it keeps every previous mask
    (the freeze rule); the two differ on this case, so the settings reached the engine both times."""
    data = tmp_path / "data"
    write_block_case(data / "case_a", 0)

    def dice(settings, rules):
        out = tmp_path / f"run_{len(list(tmp_path.iterdir()))}"
        assert main(["--data", str(data), "--rules", rules, "--rounds", "3", "--out", str(out),
                     "--fusion-settings", settings]) == 0, capsys.readouterr().err
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {(r["method"], r["prompt"]): [s["dice"] for s in r["steps"]] for r in records}

    # "spread": "all": every slice the rule leaves takes the new mask (the shipped "agree" keeps some previous ones)
    none = dice('{"network": false, "direction_margin": null, "spread": "all"}', "off,freeze,network")
    keep_all = dice('{"network": true, "threshold": 0.0, "direction_margin": null, "spread": "all"}', "network")
    assert any(none[("off", p)] != pytest.approx(none[("freeze", p)]) for p in ("box", "click"))
    for prompt in ("box", "click"):
        assert none[("network", prompt)] == pytest.approx(none[("off", prompt)])
        assert keep_all[("network", prompt)] == pytest.approx(none[("freeze", prompt)])


def test_a_bundle_without_fusion_fails_the_network_rule_before_any_rule_runs(tmp_path, capsys, write_block_case):
    """The network rule needs the bundle's fusion entry: said at once, before the other rules spend their time
    (nothing written); fusion settings without the network rule are refused too, not ignored."""
    import shutil

    from IMISSegmentLib.models import default_bundle_dir
    data = tmp_path / "data"
    write_block_case(data / "case_a", 0)
    plain = tmp_path / "plain"
    shutil.copytree(default_bundle_dir(), plain)
    info = json.loads((plain / "inference_info.json").read_text())
    info.pop("fusion")
    info["stages"].pop("mrf_quality")
    (plain / "inference_info.json").write_text(json.dumps(info))
    out = tmp_path / "run"
    assert main(["--bundle", str(plain), "--data", str(data), "--rules", "off,network", "--out", str(out)]) == 2
    assert "no multi-round fusion entry" in capsys.readouterr().err and not out.exists()
    assert main(["--data", str(data), "--rules", "off", "--threshold", "0.5", "--out", str(out)]) == 2
    assert "network rule's" in capsys.readouterr().err and not out.exists()


def test_a_round_record_tells_the_clicked_slice_from_the_other_slices():
    """round_record: the clicked slice's wrong pixels before / after the click, and the Dice had only that slice
    or only the others changed; drop_causes counts the drops of each kind."""
    reference = np.zeros((4, 6, 6), bool)
    reference[:, 1:5, 1:5] = True
    before = reference.astype(np.uint8)
    before[0] = 0                                   # slice 0 missed
    after = before.copy()
    after[0, 1:5, 1:5] = 1                          # the click on slice 0 fixed it...
    after[3] = 0                                    # ...and the re-propagation lost slice 3
    answered = after[0].copy()
    record = round_record(SimulatedClick((0, 2, 2), True), before, answered, after, reference)
    assert (record["slice"], record["positive"], record["reference_px"], record["mask_px"]) == (0, True, 16, 0)
    assert (record["wrong_before"], record["wrong_after"], record["answer_px"]) == (16, 0, 16)
    assert record["dice_before"] == pytest.approx(2 * 48 / (48 + 64))
    assert record["dice_after"] == pytest.approx(record["dice_before"])          # one slice won, one lost
    assert record["dice_slice_only"] == pytest.approx(1.0)
    assert record["dice_others_only"] == pytest.approx(2 * 32 / (32 + 64))
    worse = dict(record, dice_after=0.5, wrong_after=20)
    causes = drop_causes([{"rounds": [record, worse]}, {"rounds": []}])
    assert causes == {"rounds": 2, "drops": 1, "clicked_slice_worse": 1, "other_slices_drop": 1}
    # the evaluation counts the same drops (a drop whose clicked slice improved is not one of them)
    better_slice = dict(worse, wrong_after=0)
    assert clicked_slice_drops([record, worse, better_slice]) == 1
