"""training/: phantoms, datasets, simulated interaction, a smoke training with resume, export."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import SHARED_DATA  # noqa: E402
from training.datasets import MixedSource, PhantomSource, VolumeSliceDataset, make_sample  # noqa: E402
from training.interaction import (InteractionConfig, evaluate_clicks, first_prompt,  # noqa: E402
                                  interactive_step, prompt_maps)
from training.phantoms import make_phantom  # noqa: E402

SMALL = {"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}


def test_phantoms_are_reproducible_and_labelled():
    a, b = make_phantom(128, 5), make_phantom(128, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    kinds = set()
    for seed in range(6):
        p = make_phantom(128, seed)
        assert p.image.dtype == np.float32 and np.isfinite(p.image).all()
        values = set(np.unique(p.label)) - {0}
        assert values <= set(p.names) and len(values) >= 2
        kinds |= set(p.names.values())
        if p.modality == "ct":
            assert p.image.min() < -500
    assert {"organ", "vessel", "bone"} <= kinds


def test_samples_and_mixed_batches():
    rng = np.random.default_rng(0)
    sample = make_sample(np.random.default_rng(1).random((50, 80)).astype(np.float32),
                         np.pad(np.ones((10, 10), bool), ((20, 20), (30, 40))), 256, "x")
    assert sample["image"].shape == sample["label"].shape == sample["valid"].shape == (1, 256, 256)
    assert sample["valid"].sum() == 160 * 256 and sample["label"].sum() > 0
    batch = MixedSource(None, PhantomSource(128)).batch(rng, 3)
    assert batch["image"].shape == (3, 1, 128, 128) and len(batch["source"]) == 3
    assert ((batch["label"] == 0) | (batch["label"] == 1)).all() and batch["label"].sum(axis=(1, 2, 3)).min() >= 16


@pytest.mark.skipif(not (SHARED_DATA / "phantom_prostate").is_dir(), reason="../shared/data not present")
def test_volume_slices_along_every_axis():
    dataset = VolumeSliceDataset(SHARED_DATA / "phantom_prostate", axes=(0, 1, 2), min_area=16, size=128)
    assert {e.axis for e in dataset.entries} == {0, 1, 2}
    sample = dataset[len(dataset) // 2]
    assert sample["label"].sum() > 0 and sample["image"].max() <= 1.0 and "phantom_prostate" in sample["source"]


def test_first_prompts_box_jitter_and_clicks():
    label = np.zeros((64, 64), bool)
    label[20:40, 10:30] = True
    valid = np.ones_like(label)
    rng = np.random.default_rng(0)
    boxes = InteractionConfig.from_dict({"box_prob": 1.0})
    for _ in range(50):
        r0, c0, r1, c1 = first_prompt(label, valid, rng, boxes).box
        assert abs(r0 - 20) <= 5 and abs(r1 - 39) <= 5 and abs(c0 - 10) <= 5 and abs(c1 - 29) <= 5
    clicks = InteractionConfig.from_dict({"box_prob": 0.0})
    for _ in range(20):
        (r, c, positive), = first_prompt(label, valid, rng, clicks).clicks
        assert positive and label[r, c]
    maps = prompt_maps([first_prompt(label, valid, rng, clicks)], np.full((1, 64, 64), 0.5, np.float32), 64, 5)
    assert maps.shape == (1, 4, 64, 64) and maps[0, 0].sum() > 0 and np.all(maps[0, 3] == 0.5)
    with pytest.raises(ValueError, match="unknown"):
        InteractionConfig.from_dict({"rounds": 3})


def test_interactive_step_feeds_corrections():
    from IMISSegmentLib.networks.click_net import build_click_net
    model = build_click_net(SMALL, seed=0)
    batch = MixedSource(None, PhantomSource(128), augment_samples=False).batch(np.random.default_rng(0), 2)
    config = InteractionConfig.from_dict({"box_prob": 0.0})
    loss, stats = interactive_step(model, batch, np.random.default_rng(1), config, rounds=3)
    loss.backward()
    assert torch.isfinite(loss) and stats["rounds"] == 3 and stats["clicks"] > 1
    assert model.training
    curve = evaluate_clicks(model, batch, np.random.default_rng(0), config, clicks=3)
    assert curve.shape == (3,) and ((curve >= 0) & (curve <= 1)).all()


def test_smoke_training_loss_goes_down_resumes_and_exports(tmp_path):
    from training.export import export_checkpoint
    from training.train import load_config, train
    config_path = tmp_path / "smoke.json"
    config_path.write_text(json.dumps({
        "name": "smoke", "network": SMALL, "input_size": 128, "steps": 24, "batch_size": 4,
        "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 4, "augment": False},
        "interaction": {"max_rounds": 1}, "optimizer": {"lr": 0.003, "warmup_steps": 1},
        "validation": {"phantoms": 2, "every": 24, "clicks": 2}, "log_every": 6, "checkpoint_every": 12}))
    config = load_config(config_path)
    run = tmp_path / "run"
    result = train(config, run, progress=False)
    losses = [h["loss"] for h in result["history"]]
    assert result["step"] == 24 and len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    assert (run / "config.json").is_file() and (run / "checkpoint.pt").is_file()
    assert "step 24/24" in (run / "train.log").read_text()
    assert len(result["validation"]["click"]) == 2
    resumed = train(config | {"steps": 27}, run, progress=False)
    assert resumed["step"] == 27 and len(resumed["history"]) == 27
    assert "resumed at step 24" in (run / "train.log").read_text()
    info = export_checkpoint(run / "checkpoint.pt", tmp_path / "bundle")
    assert info["input_size"] == [128, 128] and info["export_check"]["max_abs_logit_difference"] < 1e-4
    import IMISSegmentLib as imis
    model = imis.load_model(str(tmp_path / "bundle"), device="cpu")
    session = imis.InteractiveSession(model)
    session.set_volume(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32))
    assert session.add_click((0, 20, 25)).mask.shape == (40, 50)


def test_init_from_starts_a_fresh_run_from_another_runs_weights(tmp_path):
    """A fine-tuning run (config "init_from") begins with the given weights, a new optimiser and step 0."""
    import torch
    from IMISSegmentLib.networks.click_net import ClickNet
    from training.train import DEFAULTS, _merge, train
    base = _merge(DEFAULTS, {"name": "base", "network": SMALL, "input_size": 64, "steps": 2, "batch_size": 2,
                             "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 2, "augment": False},
                             "interaction": {"max_rounds": 0}, "log_every": 1, "checkpoint_every": 2})
    source = ClickNet(SMALL)
    torch.nn.init.constant_(next(source.parameters()), 0.125)
    torch.save({"model": source.state_dict()}, tmp_path / "init.pt")
    finetune = base | {"name": "finetune", "steps": 1, "init_from": str(tmp_path / "init.pt"),
                       "optimizer": base["optimizer"] | {"lr": 0.0, "warmup_steps": 0}}
    result = train(finetune, tmp_path / "run", progress=False)
    assert result["step"] == 1 and "started" in (tmp_path / "run" / "train.log").read_text()
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    first = next(iter(source.state_dict()))
    assert torch.equal(trained[first], source.state_dict()[first]), "lr 0: the run must keep the init weights"
