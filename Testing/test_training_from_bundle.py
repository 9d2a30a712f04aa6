"""training.loops.from_bundle: a bundle's 2D network as a run folder that fine-tunes and averages start from."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from IMISSegmentLib.networks.click_net import build_click_net  # noqa: E402
from IMISSegmentLib.text import Vocabulary  # noqa: E402

SMALL = {"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """A tiny bundle whose click network has a text stage (as the shipped one has)."""
    from training.export.click_net import export_bundle
    from training.export.text import add_text
    from training.loops.text import text_network
    bundle = tmp_path_factory.mktemp("from_bundle") / "bundle"
    export_bundle(build_click_net(SMALL, seed=3).eval(), bundle, name="tiny", version="0.0.7")
    add_text(text_network({"init_bundle": str(bundle), "text": {"dim": 8}}, Vocabulary.default()).eval(), bundle,
             {4: False})
    return bundle


def test_the_bundle_network_becomes_a_run_a_fine_tune_and_an_average_start_from(text_bundle, tmp_path, capsys):
    from training.loops.average import average_run
    from training.loops.click_net import DEFAULTS, train
    from training.loops.from_bundle import main
    from training.loops.run import _merge
    run = tmp_path / "shipped"
    assert main(["--bundle", str(text_bundle), "--out", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    shipped = torch.load(text_bundle / "click_net.pt", weights_only=True)
    assert any(k.startswith("text.") for k in shipped) and not any(k.startswith("text.") for k in state["model"])
    assert all(torch.equal(v, shipped[k]) for k, v in state["model"].items())
    assert state["batchnorm_frozen"] and state["step"] == 0 and state["network_config"]["text"] is None
    record = json.loads((run / "config.json").read_text())
    assert record["loop"] == "from_bundle" and record["bundle_version"] == "0.0.7"
    # a fine-tune from it (init_from), then the average of the two: the same network, batch norm frozen in both
    config = _merge(DEFAULTS, {"network": SMALL, "init_from": str(run / "checkpoint.pt"), "input_size": 64,
                               "steps": 2, "batch_size": 2, "checkpoint_every": 1, "log_every": 1, "num_threads": 1,
                               "input_gamma": 0.6, "data": {"roots": [], "phantom_pool": 4}})
    train(config, tmp_path / "fine", progress=False)
    fine = torch.load(tmp_path / "fine" / "checkpoint.pt", weights_only=False)
    assert fine["config"]["input_gamma"] == 0.6
    assert any(not torch.equal(fine["model"][k], v) for k, v in state["model"].items())
    average_run({"name": "wise", "init_from": str(tmp_path / "fine" / "checkpoint.pt"),
                 "average_with": str(run / "checkpoint.pt"), "weight": 0.5}, tmp_path / "wise")
    wise = torch.load(tmp_path / "wise" / "checkpoint.pt", weights_only=False)["model"]
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and "running" not in k
                and not torch.equal(fine["model"][k], v))
    assert torch.allclose(wise[name], 0.5 * (fine["model"][name] + state["model"][name]), atol=1e-6)
    # a folder holding a training run is not overwritten
    assert main(["--bundle", str(text_bundle), "--out", str(tmp_path / "fine")]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert torch.load(tmp_path / "fine" / "checkpoint.pt", weights_only=False)["step"] == 2
    begun = tmp_path / "begun"   # a run that has written its config but no checkpoint yet
    begun.mkdir()
    (begun / "config.json").write_text(json.dumps({"name": "click_net", "steps": 100}))
    assert main(["--bundle", str(text_bundle), "--out", str(begun)]) == 2
    assert "holds another run's config.json" in capsys.readouterr().err and not (begun / "checkpoint.pt").exists()
    assert main(["--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
