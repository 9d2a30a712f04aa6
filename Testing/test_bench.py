"""imis-segment bench: latency, load time and memory report."""
import json

import pytest

from IMISSegmentLib.bench import run_bench, synthetic_volume

from helpers import run_cli


def _check_report(report, repeats):
    assert report["click_to_mask_ms"]["n"] == repeats
    assert 0 < report["click_to_mask_ms"]["median"] <= report["click_to_mask_ms"]["max"]
    assert report["click_to_mask_ms"]["p95"] >= report["click_to_mask_ms"]["median"]
    assert report["load_s"] >= 0 and report["first_click_ms"] > 0
    memory = report["memory"]
    assert memory["maxrss_mb_end"] >= memory["maxrss_mb_before_load"] > 0
    assert memory["tracemalloc_peak_mb"] > 0 and "getrusage" in memory["method"]
    litemedsam = report["litemedsam"]
    assert isinstance(litemedsam, dict) or litemedsam.startswith("not available: ")


def test_synthetic_volume():
    volume, mask = synthetic_volume(64, 3)
    assert volume.shape == mask.shape == (3, 64, 64) and mask.any() and volume.min() < -500


def test_bench_growcut(growcut_engine):
    report = run_bench("growcut", size=64, repeats=3, slices=2, litemedsam_repeats=1)
    _check_report(report, 3)
    assert report["engine"]["name"] == "growcut" and report["network_forward_ms"] is None


def test_bench_cli_on_a_tiny_bundle(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib.networks.click_net import build_click_net
    from training.export.click_net import export_bundle
    bundle = tmp_path / "tiny"
    export_bundle(build_click_net({"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}, seed=0), bundle)
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_cli(["bench", "--engine", str(bundle), "--size", "96", "--repeats", "3",
                                    "--slices", "2", "--litemedsam-repeats", "1", "--out", str(out)], capsys)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert json.loads(stdout) == report
    _check_report(report, 3)
    assert report["engine"]["runtime"] == "onnxruntime" and report["network_forward_ms"]["n"] == 3
    assert report["name_alone_ms"] == "not measured: the engine has no text localiser"


@pytest.mark.parametrize("argv", [["bench", "--repeats", "0"], ["bench", "--size", "8"],
                                  ["bench", "--engine", "no-such-engine"], ["bench", "--out", "x.txt"],
                                  ["bench", "--size", "nan"], ["bench", "--size", "100000"], ["bench", "--repeats", "-3"],
                                  ["bench", "--litemedsam-repeats", "-1"], ["bench", "--propagation-slices", "5", "-5"],
                                  ["bench", "--out", ".json"]])   # a name that is only the extension: a hidden file
def test_bench_bad_input_is_one_line_exit_2(argv, capsys):
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2
    assert stderr.startswith("imis-segment: error: ") and stderr.count("\n") == 1
    assert argv[-1] in stderr or argv[-2] in stderr   # names the value or the option


def test_bench_out_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "report.JSON").mkdir()   # the suffix check is case-insensitive, as the writers'
    # an unknown engine would fail at load time: the output is checked before that
    code, _, stderr = run_cli(["bench", "--engine", "no-such-engine", "--out", str(tmp_path / "report.JSON")], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert f"cannot write {tmp_path / 'report.JSON'}: it is an existing folder" in stderr
    assert [p.name for p in tmp_path.iterdir()] == ["report.JSON"] and not any((tmp_path / "report.JSON").iterdir())
