"""The validation split: the generator (training/data/splits.py), the committed training/splits/validation.json,
split files (IMISSegmentLib.evaluation.splits), a parent folder of several sets, and ``evaluate --split``."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest

from data_tree import SETS, write_data_tree, write_split
from helpers import SHARED_DATA, SHARED_DATA_MISSING, run_cli
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.evaluation.datasets import discover_cases
from IMISSegmentLib.evaluation.splits import load_split, patient_of, select_split
from training.data.splits import CASE_FOLDER_ROLES, SPLIT_FILE, draw_split, main as splits_main, split_text

NEEDS_DATA = pytest.mark.skipif(not (SHARED_DATA / "ct_abdomen_btcv").is_dir(), reason=SHARED_DATA_MISSING)
FIVE_SETS = ("ct_abdomen_btcv", "mr_abdomen_chaos_t2", "mr_heart_mscmr_bssfp", "mr_heart_acdc_cine",
             "mr_heart_la2018_lge")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_data_tree(tmp_path_factory.mktemp("data"))


def _patient_roles(split: dict) -> dict:
    roles = defaultdict(set)
    for name, entry in split["sets"].items():
        for role in ("validation", "training", "reported"):
            for case_id in entry.get(role, []):
                roles[(name, patient_of(case_id))].add(role)
    for role, folders in split["case_folders"].items():
        for folder in folders:
            roles[("", folder)].add(role)
    return roles


# --- the committed split of ../shared/data ---------------------------------------------------------------

@NEEDS_DATA
def test_the_committed_split_is_what_the_generator_draws():
    assert SPLIT_FILE.read_text(encoding="utf-8") == split_text(draw_split(SHARED_DATA)), (
        "training/splits/validation.json differs from the generator's draw: run "
        "python -m training.data.splits --write and commit the file (or undo the generator change)")


@NEEDS_DATA
def test_the_committed_split_holds_every_case_once_and_no_patient_on_both_sides():
    split = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    load_split(SPLIT_FILE)   # the reader's own checks: one role per case and per patient
    assert set(split["sets"]) == set(FIVE_SETS)
    mixed = {patient: roles for patient, roles in _patient_roles(split).items() if len(roles) > 1}
    assert not mixed
    for name in FIVE_SETS:
        entry = split["sets"][name]
        on_disk = sorted(c.key.split("/", 1)[1] for c in discover_cases(SHARED_DATA / name))
        assert sorted(entry["validation"] + entry["training"]) == on_disk
        patients = {patient_of(c) for c in on_disk}
        chosen = {patient_of(c) for c in entry["validation"]}
        assert entry["patients"] == len(patients) and entry["validation_patients"] == len(chosen)
        assert max(2, round(0.2 * len(patients))) == len(chosen)
    acdc = split["sets"]["mr_heart_acdc_cine"]["validation"]
    assert all(f"{patient_of(c)}_frame01" in acdc and f"{patient_of(c)}_frame02" in acdc for c in acdc)
    assert split["case_folders"]["reported"] == ["ct_abdomen_multiorgan"]
    assert split["case_folders"]["validation"] == []


@NEEDS_DATA
def test_evaluate_selects_the_committed_validation_cases_of_the_shared_folder():
    split = load_split(SPLIT_FILE)
    cases = select_split(discover_cases(SHARED_DATA), split)
    assert sorted(c.key for c in cases) == split.keys("validation")
    one_set = select_split(discover_cases(SHARED_DATA / "mr_heart_la2018_lge"), split)
    assert [c.key for c in one_set] == [k for k in split.keys("validation") if k.startswith("mr_heart_la2018_lge/")]


# --- the generator on generated data ---------------------------------------------------------------------

def test_the_generator_is_deterministic_by_patient_and_per_set(tree, tmp_path):
    first, again = draw_split(tree), draw_split(tree)
    assert split_text(first) == split_text(again)
    cine = first["sets"]["set_cine"]
    assert cine["patients"] == 6 and cine["validation_patients"] == 2 and len(cine["validation"]) == 4
    assert first["sets"]["set_ct"]["validation_patients"] == 2
    assert all(len(roles) == 1 for roles in _patient_roles(first).values())
    assert first["case_folders"] == {"validation": [], "training": ["ct_lesion_a"],
                                     "reported": ["ct_abdomen_multiorgan"]}
    # another set beside them does not move their draw
    bigger = write_data_tree(tmp_path / "bigger", sets=dict(SETS, set_more=[f"m_{n}" for n in range(20)]))
    drawn = draw_split(bigger)
    assert drawn["sets"]["set_cine"] == cine and drawn["sets"]["set_ct"] == first["sets"]["set_ct"]
    assert drawn["sets"]["set_more"]["validation_patients"] == 4
    # another seed draws other cases
    assert draw_split(tree, seed=7)["sets"]["set_ct"]["validation"] != first["sets"]["set_ct"]["validation"]


def test_the_generator_command_writes_and_checks(tree, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert splits_main(["--data", str(tree), "--out", str(out), "--check"]) == 1
    assert splits_main(["--data", str(tree), "--out", str(out), "--write"]) == 0
    assert splits_main(["--data", str(tree), "--out", str(out), "--check"]) == 0
    assert "set_cine" in capsys.readouterr().out
    load_split(out)


def test_a_case_folder_without_a_role_is_an_error(tmp_path, capsys):
    tree = write_data_tree(tmp_path / "data", case_folders=("new_scan",))
    assert "new_scan" not in CASE_FOLDER_ROLES
    with pytest.raises(ValueError, match="new_scan"):
        draw_split(tree)
    assert splits_main(["--data", str(tree), "--out", str(tmp_path / "s.json")]) == 2
    assert "CASE_FOLDER_ROLES" in capsys.readouterr().err


# --- a parent folder of several sets ---------------------------------------------------------------------

def test_a_parent_folder_lists_its_sets_and_case_folders(tree):
    cases = discover_cases(tree)
    names = [c.name for c in cases]
    assert len(cases) == len(SETS["set_ct"]) + len(SETS["set_cine"]) + 2
    assert "set_cine/patient001_frame01" in names and "ct_lesion_a" in names
    by_name = {c.name: c for c in cases}
    assert by_name["set_ct/ct_1"].names == {1: "liver", 2: "spleen"}   # from dataset.json (nnU-Net v2 order)
    assert by_name["set_ct/ct_1"].key == "set_ct/ct_1" and by_name["ct_lesion_a"].key == "ct_lesion_a"
    alone = discover_cases(tree / "set_ct")   # the set itself: bare names, the same keys
    assert alone[0].name == "ct_1" and alone[0].key == "set_ct/ct_1"


# --- split files: reading and selecting ------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not readable JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"sets": {}}', "expected a JSON object"),
    ('{"sets": {"a": ["x"]}}', "must map roles"),
    ('{"sets": {"a": {"valdation": ["x"]}}}', "unknown role 'valdation'"),
    ('{"sets": {"a": {"validation": "x"}}}', "list of case names"),
    ('{"sets": {"a": {"validation": ["a/x"]}}}', "list of case names"),
    ('{"sets": {"a": {"validation": ["x"], "training": ["x"]}}}', "a/x is both validation and training"),
    ('{"sets": {"a": {"validation": ["patient001_frame01"], "training": ["patient001_frame02"]}}}',
     "patient patient001 of sets.a is both validation and training"),
    ('{"case_folders": {"reported": ["s"], "training": ["s"]}}', "s is both reported and training"),
])
def test_malformed_split_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_split(path)


def test_select_split_takes_the_validation_cases_of_the_sets_the_folder_holds(tree, tmp_path):
    split = load_split(write_split(tmp_path / "s.json", {"set_ct": ["ct_2", "ct_5"], "set_cine": [
        "patient003_frame01", "patient003_frame02"]}, {"set_ct": ["ct_1"]}, {"reported": ["ct_abdomen_multiorgan"]}))
    assert [c.key for c in select_split(discover_cases(tree), split)] == [
        "set_cine/patient003_frame01", "set_cine/patient003_frame02", "set_ct/ct_2", "set_ct/ct_5"]
    assert [c.name for c in select_split(discover_cases(tree / "set_ct"), split)] == ["ct_2", "ct_5"]
    assert [c.name for c in select_split(discover_cases(tree), split, "reported")] == ["ct_abdomen_multiorgan"]


def test_select_split_names_the_missing_cases(tree, tmp_path):
    split = load_split(write_split(tmp_path / "s.json", {"set_ct": ["ct_2", "ct_99", "ct_98"]}))
    with pytest.raises(InputError, match=r"2 validation case\(s\) not in .*: set_ct/ct_98, set_ct/ct_99"):
        select_split(discover_cases(tree), split, data_dir=tree)
    other = load_split(write_split(tmp_path / "o.json", {"elsewhere": ["a", "b"]}))
    with pytest.raises(InputError, match="none of its 2 validation cases is in"):
        select_split(discover_cases(tree), other)


# --- imis-segment evaluate --split -----------------------------------------------------------------------

def test_evaluate_runs_only_the_split_cases(tree, tmp_path, capsys):
    split = write_split(tmp_path / "s.json", {"set_ct": ["ct_3"], "set_cine": ["patient002_frame01",
                                                                                "patient002_frame02"]})
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["-q", "evaluate", str(tree), "--split", str(split), "--methods", "growcut",
                                    "--protocol", "2d", "--prompts", "box", "--clicks", "2", "--no-masks",
                                    "--out", str(out)], capsys)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["cases"] == ["set_cine/patient002_frame01", "set_cine/patient002_frame02", "set_ct/ct_3"]
    assert results["config"]["split"] == str(split)
    assert {r["case"] for r in results["records"]} == set(results["cases"])
    summary = (out / "summary.md").read_text()
    assert "the validation cases of split" in summary and "## Per set" in summary
    assert "| set_cine | " in summary and "| all | " in summary


def test_runs_on_other_cases_do_not_merge(tree, tmp_path, capsys):
    """merge refuses a split run with a run on every case, or on another split (by content, whatever the path)."""
    split = write_split(tmp_path / "s.json", {"set_ct": ["ct_3"]})
    args = ["--methods", "growcut", "--protocol", "2d", "--prompts", "box", "--clicks", "2", "--no-masks"]
    runs = {}
    for name, extra in (("split", ["--split", str(split)]), ("all", []),
                        ("again", ["--split", str(tmp_path / "copy" / "s.json")])):
        if name == "again":   # the same split under another path: the same cases
            (tmp_path / "copy").mkdir()
            (tmp_path / "copy" / "s.json").write_text(split.read_text())
        runs[name] = tmp_path / name
        code, _, stderr = run_cli(["-q", "evaluate", str(tree), *extra, *args, "--out", str(runs[name])], capsys)
        assert code == 0, stderr
    assert json.loads((runs["split"] / "results.json").read_text())["config"]["split_sha256"]
    code, _, stderr = run_cli(["-q", "merge", str(runs["split"]), str(runs["all"]), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "different cases" in stderr and "none (every case)" in stderr and not (tmp_path / "m").exists()
    code, _, stderr = run_cli(["-q", "merge", str(runs["split"]), str(runs["again"]), "--replace", "--out",
                               str(tmp_path / "same")], capsys)
    assert code == 0, stderr   # the same split's content under another path: the same cases
    write_split(tmp_path / "copy" / "s.json", {"set_ct": ["ct_1"]})   # the same file name, other cases
    results = json.loads((runs["again"] / "results.json").read_text())
    results["config"]["split_sha256"] = "other"
    (runs["again"] / "results.json").write_text(json.dumps(results))
    code, _, stderr = run_cli(["-q", "merge", str(runs["split"]), str(runs["again"]), "--replace", "--out",
                               str(tmp_path / "m2")], capsys)
    assert code == 2 and "another content" in stderr
    for name in ("split", "again"):   # runs recorded before split_sha256: the same split by its file name
        results = json.loads((runs[name] / "results.json").read_text())
        results["config"].pop("split_sha256")
        (runs[name] / "results.json").write_text(json.dumps(results))
    code, _, stderr = run_cli(["-q", "merge", str(runs["split"]), str(runs["again"]), "--replace", "--out",
                               str(tmp_path / "m3")], capsys)
    assert code == 0, stderr
    results = json.loads((runs["split"] / "results.json").read_text())
    results["config"]["split_sha256"] = "recorded"   # one recorded with the content, one before: by file name
    (runs["split"] / "results.json").write_text(json.dumps(results))
    code, _, stderr = run_cli(["-q", "merge", str(runs["split"]), str(runs["again"]), "--replace", "--out",
                               str(tmp_path / "m4")], capsys)
    assert code == 0, stderr


@pytest.mark.parametrize("problem", ["missing", "malformed", "absent cases"])
def test_evaluate_with_a_bad_split_is_one_line_and_writes_nothing(tree, tmp_path, capsys, problem):
    split = tmp_path / "s.json"
    if problem == "malformed":
        split.write_text('{"sets": {"set_ct": {"validation": "ct_1"}}}')
    elif problem == "absent cases":
        write_split(split, {"set_ct": ["ct_1", "ct_404"]})
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["-q", "evaluate", str(tree), "--split", str(split), "--methods", "growcut",
                                    "--out", str(out)], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imis-segment: error: ")
    assert {"missing": "does not exist", "malformed": "list of case names",
            "absent cases": "set_ct/ct_404"}[problem] in lines[0]
    assert not out.exists()
