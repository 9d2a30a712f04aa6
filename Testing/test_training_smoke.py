"""training/: phantoms, datasets, simulated interaction, a smoke training with resume, export."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import EXAMPLE_CT  # noqa: E402
from training.data.datasets import MixedSource, PhantomSource, VolumeSliceDataset, make_sample  # noqa: E402
from training.loops.interaction import (InteractionConfig, evaluate_clicks, first_prompt,  # noqa: E402
                                  interactive_step, prompt_maps)
from training.data.phantoms import make_phantom  # noqa: E402

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
    assert {"organ", "vessel", "vertebra", "rib"} <= kinds


def test_samples_and_mixed_batches():
    rng = np.random.default_rng(0)
    sample = make_sample(np.random.default_rng(1).random((50, 80)).astype(np.float32),
                         np.pad(np.ones((10, 10), bool), ((20, 20), (30, 40))), 256, "x")
    assert sample["image"].shape == sample["label"].shape == sample["valid"].shape == (1, 256, 256)
    assert sample["valid"].sum() == 160 * 256 and sample["label"].sum() > 0
    batch = MixedSource(None, PhantomSource(128)).batch(rng, 3)
    assert batch["image"].shape == (3, 1, 128, 128) and len(batch["source"]) == 3
    assert ((batch["label"] == 0) | (batch["label"] == 1)).all() and batch["label"].sum(axis=(1, 2, 3)).min() >= 16


def test_volume_slices_along_every_axis():
    # the example CT is the reported patient (held out by default): read here as data for the reader itself
    dataset = VolumeSliceDataset(EXAMPLE_CT, axes=(0, 1, 2), min_area=16, size=128, held_out="include")
    assert {e.axis for e in dataset.entries} == {0, 1, 2}
    sample = dataset[len(dataset) // 2]
    assert sample["label"].sum() > 0 and sample["image"].max() <= 1.0 and sample["source"].startswith("ct_abdomen/axis")


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
    from training.export.click_net import export_checkpoint
    from training.loops.click_net import load_config, train
    from training.loops.run import learning_rate
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
    stopped = train(config | {"steps": 30}, run, progress=False, stop_at=27)
    assert stopped["step"] == 27 and len(stopped["history"]) == 27
    assert "resumed at step 24" in (run / "train.log").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "lr" in r][-1]
    assert last["step"] == 27 and abs(last["lr"] - learning_rate(26, config | {"steps": 30})) < 1e-12, \
        "stop_at keeps the full run's schedule"
    assert records[-1]["step"] == 27 and "validation" in records[-1], "a run stopped early validates where it stops"
    info = export_checkpoint(run / "checkpoint.pt", tmp_path / "bundle", runs=[run])
    assert info["input_size"] == [128, 128] and info["export_check"]["max_abs_logit_difference"] < 1e-4
    assert "training/run/train.log" in info["training_records"]
    assert "step 27/30" in (tmp_path / "bundle" / "training" / "run" / "train.log").read_text()
    with pytest.raises(ValueError, match="not a training run folder"):
        export_checkpoint(run / "checkpoint.pt", tmp_path / "bundle2", runs=[tmp_path])
    import IMISSegmentLib as imis
    model = imis.load_model(str(tmp_path / "bundle"), device="cpu")
    session = imis.InteractiveSession(model)
    session.set_volume(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32))
    assert session.add_click((0, 20, 25)).mask.shape == (40, 50)


@pytest.mark.parametrize("saved_as", ["checkpoint", "bundle state dict"])
def test_init_from_starts_a_fresh_run_from_another_runs_weights(tmp_path, saved_as):
    """A fine-tuning run (config "init_from") begins with the given weights, a new optimiser and step 0; the
    weights may be a run's checkpoint or a bundle's state dict (its batch norm frozen, as exported)."""
    import torch
    from IMISSegmentLib.networks.click_net import ClickNet
    from training.loops.click_net import DEFAULTS, train
    from training.loops.run import _merge
    base = _merge(DEFAULTS, {"name": "base", "network": SMALL, "input_size": 64, "steps": 2, "batch_size": 2,
                             "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 2, "augment": False},
                             "interaction": {"max_rounds": 0}, "log_every": 1, "checkpoint_every": 2})
    source = ClickNet(SMALL)
    torch.nn.init.constant_(next(source.parameters()), 0.125)
    saved = {"model": source.state_dict()} if saved_as == "checkpoint" else source.state_dict()
    torch.save(saved, tmp_path / "init.pt")
    finetune = base | {"name": "finetune", "steps": 1, "init_from": str(tmp_path / "init.pt"),
                       "optimizer": base["optimizer"] | {"lr": 0.0, "warmup_steps": 0}}
    result = train(finetune, tmp_path / "run", progress=False)
    assert result["step"] == 1 and "started" in (tmp_path / "run" / "train.log").read_text()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    first = next(iter(source.state_dict()))
    assert torch.equal(checkpoint["model"][first], source.state_dict()[first]), \
        "lr 0: the run must keep the init weights"
    assert checkpoint["batchnorm_frozen"] is (saved_as != "checkpoint")


def _batchnorm_state(network):
    return {k: v.clone() for k, v in network.state_dict().items() if "running_" in k}


def test_frozen_batchnorm_survives_train_calls_and_keeps_its_statistics():
    """training/loops/batchnorm.py: frozen statistics are what training and inference both use."""
    from IMISSegmentLib.networks.click_net import build_click_net
    from training.loops.batchnorm import batchnorm_layers, freeze_batchnorm
    model = build_click_net(SMALL, seed=0)
    batch = MixedSource(None, PhantomSource(64), augment_samples=False).batch(np.random.default_rng(0), 2)
    config = InteractionConfig.from_dict({"max_rounds": 1})
    before = _batchnorm_state(model)
    interactive_step(model.train(), batch, np.random.default_rng(1), config, rounds=1)
    moved = _batchnorm_state(model)
    assert any(not torch.equal(before[k], moved[k]) for k in before), "unfrozen: training updates the statistics"
    assert freeze_batchnorm(model) == len(batchnorm_layers(model)) > 0
    model.train()
    assert model.training and not any(layer.training for layer in batchnorm_layers(model))
    loss, _ = interactive_step(model, batch, np.random.default_rng(1), config, rounds=1)
    loss.backward()
    after = _batchnorm_state(model)
    assert all(torch.equal(moved[k], after[k]) for k in moved), "frozen: statistics must not change"
    assert all(layer.weight.grad is not None for layer in batchnorm_layers(model)), "the affine weights still learn"
    # frozen: train mode computes exactly what eval mode does
    maps = torch.from_numpy(prompt_maps([first_prompt(batch["label"][0, 0] > 0.5, batch["valid"][0, 0] > 0.5,
                                                      np.random.default_rng(2), config)], None, 64, 5))
    image = torch.from_numpy(batch["image"][:1])
    with torch.no_grad():
        train_logits = model.train()(image, maps)
        eval_logits = model.eval()(image, maps)
    assert torch.equal(train_logits, eval_logits)


def test_recalibration_averages_the_statistics_of_simulated_interactions():
    from IMISSegmentLib.networks.click_net import build_click_net
    from training.loops.batchnorm import batchnorm_layers, recalibrate_batchnorm
    model = build_click_net(SMALL, seed=0)
    source = MixedSource(None, PhantomSource(64), augment_samples=False)
    config = InteractionConfig.from_dict({"max_rounds": 2})
    for layer in batchnorm_layers(model):       # statistics that fit no input
        layer.running_mean.fill_(5.0)
        layer.running_var.fill_(9.0)
    recalibrate_batchnorm(model.eval(), source, config, np.random.default_rng(0), batches=3, batch_size=2)
    stem = model.stem.norm
    assert not model.training and stem.momentum == 0.1, "mode and momentum are restored"
    assert int(stem.num_batches_tracked) >= 3
    # every layer's statistics are now those of real inputs (features of order 1), not the planted 5 / 9
    for layer in batchnorm_layers(model):
        assert float(layer.running_mean.abs().max()) < 2.0 and float(layer.running_var.max()) < 4.0


def test_training_freezes_batchnorm_at_the_configured_step_and_resumes_frozen(tmp_path):
    from training.loops.click_net import DEFAULTS, train
    from training.loops.run import _merge
    config = _merge(DEFAULTS, {"name": "bn", "network": SMALL, "input_size": 64, "steps": 3, "batch_size": 2,
                               "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 3, "augment": False},
                               "interaction": {"max_rounds": 1}, "log_every": 1, "checkpoint_every": 1,
                               "batchnorm": {"freeze_from": 2, "recalibrate_batches": 2}})
    run = tmp_path / "run"
    train(config | {"steps": 2}, run, progress=False)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["batchnorm_frozen"] is False
    train(config, run, progress=False)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["batchnorm_frozen"] is True and "recalibrated over 2 batches" in (run / "train.log").read_text()
    frozen = {k: v for k, v in state["model"].items() if "running_" in k}
    train(config | {"steps": 5}, run, progress=False)          # resumed: stays frozen, no second recalibration
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["batchnorm_frozen"] is True and (run / "train.log").read_text().count("recalibrated") == 1
    assert all(torch.equal(frozen[k], state["model"][k]) for k in frozen)


def _write_stack_case(root):
    """A case folder: 12 slices 5 mm apart, a disk on slices 3..8 whose radius changes from slice to slice."""
    import SimpleITK as sitk
    image = np.zeros((12, 40, 40), np.int16)
    label = np.zeros((12, 40, 40), np.uint8)
    rows, cols = np.mgrid[:40, :40]
    for k in range(3, 9):
        disk = (rows - 20) ** 2 + (cols - 18 - k) ** 2 <= (4 + k) ** 2
        label[k][disk] = 1
        image[k][disk] = 300
    (root / "case").mkdir(parents=True)
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        written = sitk.GetImageFromArray(array)
        written.SetSpacing((1.0, 1.0, 5.0))
        sitk.WriteImage(written, str(root / "case" / name))
    return label


def _stack_dataset(root):
    """(label, dataset): the stack case written under ``root`` and its axial slices on a 64 px canvas."""
    label = _write_stack_case(root)
    return label, VolumeSliceDataset(root, axes=(0,), min_area=4, size=64)


def test_propagated_priors_are_the_structure_on_a_nearby_slice_and_may_be_empty(tmp_path):
    label, dataset = _stack_dataset(tmp_path)
    rng = np.random.default_rng(0)
    empty = 0
    for _ in range(60):
        sample = dataset.sample_propagated(rng, (5.0, 10.0))   # 1 or 2 slices at 5 mm
        index, prior_index = int(sample["source"].split("/")[2]), int(sample["source"].split("prior")[-1])
        assert 1 <= abs(index - prior_index) <= 2 and 0 <= index < 12 and 3 <= prior_index <= 8
        expected = make_sample(np.zeros((40, 40), np.float32), label[index] > 0, 64, spacing=(1.0, 1.0),
                               prior2d=label[prior_index] > 0)
        assert np.array_equal(sample["label"], expected["label"]) and np.array_equal(sample["prior"], expected["prior"])
        assert sample["has_prior"] and sample["prior"].sum() > 0
        empty += int(sample["label"].sum() == 0)
    assert 0 < empty < 60   # slices past the structure's end are there, but not only those
    with pytest.raises(ValueError, match="propagated_fraction"):
        MixedSource(dataset, None, propagated_fraction=1.5)


def test_a_propagated_prior_is_fed_back_with_its_correction_click(tmp_path):
    from IMISSegmentLib.networks.click_net import build_click_net
    from training.loops.interaction import first_prompts
    source = MixedSource(_stack_dataset(tmp_path)[1], None,
                         augment_samples=False, propagated_fraction=0.5, offset_mm=(5.0, 10.0))
    batch = source.batch(np.random.default_rng(3), 16)
    flags = batch["has_prior"]
    assert 0 < flags.sum() < 16
    labels, valid = batch["label"][:, 0] > 0.5, batch["valid"][:, 0] > 0.5
    prompts, previous = first_prompts(batch, labels, valid, np.random.default_rng(0), InteractionConfig())
    for p, flag, lab, prior, prev in zip(prompts, flags, labels, batch["prior"][:, 0] > 0.5, previous):
        if not flag:
            assert not prev.any() and (p.box is not None or p.clicks[0][2])
            continue
        assert np.array_equal(prev > 0.5, prior)   # the prior itself, binary, as a session feeds it
        (r, c, positive), = p.clicks
        assert positive == bool(lab[r, c]) and (positive or prior[r, c])   # the correction for the prior's error
        if not lab.any():
            assert not positive
    model = build_click_net({"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}, seed=0)
    loss, stats = interactive_step(model, batch, np.random.default_rng(1), InteractionConfig(), rounds=1)
    assert torch.isfinite(loss) and stats["clicks"] >= 1


def test_a_confirming_click_lands_on_the_structure_over_the_prior(tmp_path):
    """confirm_click_prob: a sample with a prior gets a positive click on the structure (as after a name's answer),
    not the correction of the prior's error; the prior stays the previous mask."""
    from training.loops.interaction import first_prompts
    source = MixedSource(_stack_dataset(tmp_path)[1], None,
                         augment_samples=False, propagated_fraction=1.0, offset_mm=(5.0, 10.0))
    batch = source.batch(np.random.default_rng(3), 16)
    labels, valid = batch["label"][:, 0] > 0.5, batch["valid"][:, 0] > 0.5
    priors = batch["prior"][:, 0] > 0.5
    config = InteractionConfig(confirm_click_prob=1.0, center_click_prob=1.0, box_prob=1.0)
    prompts, previous = first_prompts(batch, labels, valid, np.random.default_rng(0), config)
    confirmed = 0
    for p, lab, prior, prev, ok in zip(prompts, labels, priors, previous, valid):
        if not (lab.any() and prior.any()):
            continue
        assert np.array_equal(prev > 0.5, prior & ok) and p.box is None   # never a box over a prior
        (r, c, positive), = p.clicks
        assert positive and lab[r, c]
        confirmed += int(bool(prior[r, c]))   # often where the prior is already right: no correction needed there
    assert confirmed > 0
    with pytest.raises(ValueError, match="confirm_click_prob"):
        InteractionConfig.from_dict({"confirm_click_prob": 1.5})


def test_the_loops_show_their_images_to_the_input_gamma_where_the_engine_would(tmp_path):
    """input_gamma applies to slices of volumes normalised by percentiles, not to HU CT or phantoms (as the engine)."""
    import SimpleITK as sitk
    from training.loops.click_net import ShownSource
    from training.loops.interaction import shown_images
    root = tmp_path / "cases"
    for name, offset in (("mr", 500.0), ("ct", -1000.0)):   # an MR-like volume and one in Hounsfield units
        folder = root / name
        folder.mkdir(parents=True)
        image = np.full((4, 32, 32), offset, np.float32)
        image[:, 8:24, 8:24] += 1300.0
        image += np.random.default_rng(0).normal(0, 30, image.shape).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[:, 8:24, 8:24] = 1
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "image.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "label.nii.gz"))
    dataset = VolumeSliceDataset(root, axes=(0,), size=32)
    assert sorted(dataset.kinds) == ["ct", "percentile"]
    source = MixedSource(dataset, None, augment_samples=False)
    batch = source.batch(np.random.default_rng(0), 16)
    flags = batch["percentile"]
    assert 0 < flags.sum() < 16
    shown = ShownSource(source, 0.5).shown(batch)["image"]
    assert np.allclose(shown[flags], np.sqrt(batch["image"][flags]), atol=1e-6)
    assert np.array_equal(shown[~flags], batch["image"][~flags])
    assert shown_images(batch, 1.0) is batch["image"]
    assert np.array_equal(shown_images({"image": batch["image"]}, 0.5), batch["image"])   # unknown: as it is


def test_defective_priors_spoil_the_slices_own_mask_and_mix_with_propagated_ones(tmp_path):
    from training.data.defects import DefectConfig
    label, dataset = _stack_dataset(tmp_path)
    rng = np.random.default_rng(0)
    spoilt = 0
    for _ in range(20):
        sample = dataset.sample_defective(rng, DefectConfig())
        assert sample["source"].endswith("/defective")
        index = int(sample["source"].split("/")[2])
        expected = make_sample(np.zeros((40, 40), np.float32), label[index] > 0, 64, spacing=(1.0, 1.0))
        assert sample["label"].sum() > 0 and np.array_equal(sample["label"], expected["label"])   # this slice
        assert sample["has_prior"] == bool(sample["prior"].any())
        spoilt += not np.array_equal(sample["prior"], sample["label"])
    assert spoilt >= 15   # a few corruptions (smoothing a disk) may leave a small mask as it was
    only_dilated = DefectConfig(probabilities={"dilated": 1.0})   # dilation alone: the mask inside the prior
    sample = dataset.sample_defective(rng, only_dilated)
    assert sample["prior"].sum() > sample["label"].sum() and not (sample["label"] > sample["prior"]).any()
    source = MixedSource(dataset, None, augment_samples=False, propagated_fraction=1.0, defective_fraction=0.5,
                         offset_mm=(5.0, 10.0))
    kinds = [source.sample(rng)["source"] for _ in range(40)]
    defective = sum(k.endswith("/defective") for k in kinds)
    assert 0 < defective < 40 and defective + sum("/prior" in k for k in kinds) == 40
    with pytest.raises(ValueError, match="defective_fraction"):
        MixedSource(dataset, None, propagated_fraction=0.5, defective_fraction=-0.1)
