"""Training the propagation network: slice sequences, the loop (resume, warm start), export to a bundle."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from helpers import shared_case  # noqa: E402
from training.data.sequences import PhantomSequenceSource, VolumeSequenceSource  # noqa: E402
from training.loops.propagation import DEFAULTS, load_matching, train  # noqa: E402
from training.loops.run import _merge  # noqa: E402

TINY = {"input_size": 32, "widths": [4, 8, 8], "blocks": [0, 0, 1], "key_dim": 4, "value_dim": 8,
        "sensory_dim": 4, "mask_widths": [4, 4, 4], "top_k": 5}


@pytest.fixture(scope="module")
def lesion_volumes():
    from training.data.datasets import VolumeSliceDataset
    lesion = shared_case("ct_lesion_a")
    return VolumeSliceDataset(lesion.parent, axes=(0,), min_area=32, size=8, include={"ct_lesion_a"})


def test_volume_sequences_follow_the_structure_through_neighbouring_slices(lesion_volumes):
    source = VolumeSequenceSource(lesion_volumes, length=5, size=48, min_area=32)
    rng = np.random.default_rng(0)
    for _ in range(6):
        sample = source.sample(rng)
        assert sample["images"].shape == sample["labels"].shape == (5, 1, 48, 48)
        assert sample["first"].shape == (1, 48, 48) and sample["labels"][0].sum() >= 4
        assert set(np.unique(sample["labels"])) <= {0.0, 1.0} and 0 <= sample["images"].min() <= sample["images"].max() <= 1
        # the structure is centred in the ROI and smaller than it
        assert 0 < sample["labels"][0].mean() < 0.8
        # the start mask is the first label, or it dilated / eroded a little
        overlap = (sample["first"] * sample["labels"][0]).sum() / sample["labels"][0].sum()
        assert overlap > 0.3


def test_phantom_sequences_move_and_sometimes_vanish():
    source = PhantomSequenceSource(length=6, size=48, pool=4, seed=0)
    rng = np.random.default_rng(1)
    areas = [source.sample(rng)["labels"].sum(axis=(1, 2, 3)) for _ in range(16)]
    assert all(a[0] >= 4 for a in areas)
    assert any(a[-1] < 0.5 * a[0] for a in areas)                 # some shrink (or vanish)
    assert any(not np.allclose(a, a[0], rtol=0.02) for a in areas)


def test_the_roi_scale_range_sets_how_much_of_the_roi_the_structure_fills():
    """data.roi_scale: a tighter ROI (its side over the structure's extent) shows the structure larger; the config
    check refuses a range that is not [low, high] with 0 < low <= high."""
    from IMISSegmentLib.errors import InputError
    from training.loops.propagation import check_prop_config
    shares = {}
    for scale in (1.1, 2.2):
        source = PhantomSequenceSource(length=2, size=48, pool=4, seed=0, roi_scales=(scale, scale))
        rng = np.random.default_rng(3)
        shares[scale] = np.mean([source.sample(rng)["labels"][0].mean() for _ in range(8)])
    assert shares[1.1] > 2.0 * shares[2.2]
    config = _merge(DEFAULTS, {"network": TINY, "data": {"phantom_fraction": 1.0}})
    assert check_prop_config(config)["data"]["roi_scale"] == [1.3, 2.2]
    assert check_prop_config(_merge(config, {"data": {"roi_scale": [1.1, 1.1]}}))["data"]["roi_scale"] == [1.1, 1.1]
    for bad in ([1.6, 1.2], [0, 1.5], [1.2], [1.2, "wide"], [1.2, True]):
        with pytest.raises(InputError, match="data.roi_scale"):
            check_prop_config(_merge(config, {"data": {"roi_scale": bad}}))


def _config(tmp_path, steps):
    return _merge(DEFAULTS, {"network": TINY, "steps": steps, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                             "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 3, "length": 4},
                             "optimizer": {"warmup_steps": 1}})


def test_training_runs_resumes_and_exports_into_a_bundle(tmp_path):
    out = tmp_path / "run"
    first = train(_config(tmp_path, 3), out, progress=False)
    assert first["step"] == 3 and all(np.isfinite(h["loss"]) for h in first["history"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    resumed = train(_config(tmp_path, 5), out, progress=False)
    assert resumed["step"] == 5 and len(resumed["history"]) == 5
    assert "resumed at step 3" in (out / "train.log").read_text()

    import IMISSegmentLib as imis
    from IMISSegmentLib.networks.click_net import build_click_net
    from training.export.click_net import export_bundle
    from training.export.propagation import main as export_main
    bundle = tmp_path / "bundle"
    export_bundle(build_click_net({"widths": [8, 16, 24, 32, 48], "blocks": [0, 1, 1, 1, 1]}, seed=0), bundle)
    assert export_main(["--checkpoint", str(out / "checkpoint.pt"), "--bundle", str(bundle), "--runs", str(out)]) == 0
    info = imis.models.read_bundle_info(bundle)
    assert info["propagation"]["training"]["step"] == 5 and "training/run/train.log" in info["training_records"]
    assert imis.load_model(str(bundle)).propagation_method() == "network"
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--bundle", str(bundle)]) == 2


def test_warm_start_widens_new_input_channels_and_rejects_other_mismatches():
    from IMISSegmentLib.networks.prop_net import build_prop_net
    network = build_prop_net(TINY, seed=0)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    name = "decoder.bottleneck.0.0.weight"
    state[name] = state[name][:, :-1]                     # as before the previous-mask input existed
    target = build_prop_net(TINY, seed=1)
    assert load_matching(target, state) == [name]
    loaded = target.state_dict()[name]
    assert torch.equal(loaded[:, :-1], state[name]) and not loaded[:, -1].any()
    state[name] = state[name][:2]
    with pytest.raises(ValueError, match="bottleneck"):
        load_matching(target, state)


def test_torchrun_runs_the_loop_as_one_cpu_process_with_ddp(tmp_path):
    import subprocess
    import sys
    from helpers import REPO
    config = _config(tmp_path, 2)
    config["device"] = "cpu"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "training.loops.propagation", "--config", str(path), "--out", str(out), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "world size 1" in (out / "train.log").read_text() and (out / "checkpoint.pt").is_file()


def test_end_focused_sequences_run_off_the_structure(lesion_volumes):
    plain = VolumeSequenceSource(lesion_volumes, length=6, size=32, min_area=32, end_fraction=0.0)
    ends = VolumeSequenceSource(lesion_volumes, length=6, size=32, min_area=32, end_fraction=1.0)
    empty_last = lambda source: np.mean([source.sample(rng)["labels"][-1].sum() == 0  # noqa: E731
                                         for rng in [np.random.default_rng(s) for s in range(40)]])
    assert empty_last(ends) > 0.6 and empty_last(ends) > empty_last(plain)


def test_balanced_sequences_draw_every_structure_alike(tmp_path):
    """With ``data.balance: "structure"`` a structure with few slices starts as many sequences as one with many
    (the dataset's balance), instead of in proportion to their slice counts."""
    import SimpleITK as sitk
    from training.data.datasets import VolumeSliceDataset
    case = tmp_path / "two"
    case.mkdir()
    label = np.zeros((12, 48, 48), np.uint8)
    label[:, 6:20, 6:20] = 1          # through all 12 slices
    label[5:7, 28:42, 28:42] = 2      # on 2 slices
    image = (np.random.default_rng(0).normal(0, 20, label.shape) + 200 * (label > 0)).astype(np.int16)
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(case / name))
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "long", "2": "short"}}))

    class Recording(list):
        """A list that notes the label value of every entry read from it by index."""
        def __init__(self, items, log):
            super().__init__(items)
            self.log = log

        def __getitem__(self, index):
            entry = super().__getitem__(index)
            self.log.append(entry.value)
            return entry

    rng, counts = np.random.default_rng(1), {}
    for balance in ("none", "structure"):
        volumes = VolumeSliceDataset(tmp_path, axes=(0,), min_area=32, size=8, balance=balance)
        source = VolumeSequenceSource(volumes, length=3, size=32, min_area=32)
        drawn = []
        source.entries, volumes.entries = Recording(source.entries, drawn), Recording(volumes.entries, drawn)
        for _ in range(300):
            source.sample(rng)
        counts[balance] = drawn.count(2) / len(drawn)
    assert counts["none"] < 0.3 and 0.35 < counts["structure"] < 0.65


def test_a_prompted_anchor_frame_is_read_from_the_start_and_restarts_the_sweep():
    """A correction round as the network trains on it: the anchor frame's mask stands in the output, the frames
    before it read it from memory (they change when it is there), and the frames after it start from it."""
    from IMISSegmentLib.networks.prop_net import build_prop_net
    network = build_prop_net(TINY, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 5, 1, 32, 32, generator=gen)
    first = (torch.rand(2, 1, 32, 32, generator=gen) > 0.5).float()
    full, empty = torch.ones(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    with torch.no_grad():
        plain = network.forward_sequence(images, first)
        with_full = network.forward_sequence(images, first, (3, full))
        with_empty = network.forward_sequence(images, first, (3, empty))
    assert plain.shape == with_full.shape == (2, 4, 1, 32, 32)
    assert torch.equal(with_full[:, 2], full * 10.0) and torch.equal(with_empty[:, 2], -10.0 * torch.ones_like(empty))
    assert not torch.allclose(plain[:, 0], with_full[:, 0])          # frame 1 reads the anchor from memory
    assert not torch.allclose(with_full[:, 3], with_empty[:, 3])     # frame 4 starts from the anchor's mask
    for bad in (0, 5):
        with pytest.raises(ValueError, match="anchor frame"):
            network.forward_sequence(images, first, (bad, full))


def test_correction_round_steps_train_and_the_validation_reports_them(tmp_path):
    from IMISSegmentLib.errors import InputError
    from training.loops.propagation import check_prop_config, draw_anchor, validate, without_frame
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 6, 1, 16, 16), np.float32)
    labels[:, :, :, 4:12, 4:12] = 1.0
    config = _merge(DEFAULTS, {"data": {"anchor_fraction": 1.0}})
    drawn = [draw_anchor({"labels": labels}, config, rng) for _ in range(30)]
    assert {at for at, _ in drawn} == {2, 3, 4, 5} and all(mask.shape == (3, 1, 16, 16) for _, mask in drawn)
    assert all(mask.any() for _, mask in drawn)
    assert draw_anchor({"labels": labels}, _merge(DEFAULTS, {}), rng) is None        # the default: plain steps
    frames = torch.arange(5).view(1, 5)
    assert without_frame(frames, 3).tolist() == [[0, 1, 3, 4]] and without_frame(frames, None) is frames

    result = train(_merge(_config(tmp_path, 2), {"data": {"anchor_fraction": 1.0}}), tmp_path / "run", progress=False)
    assert result["step"] == 2 and all(np.isfinite(h["loss"]) for h in result["history"])
    from IMISSegmentLib.networks.prop_net import build_prop_net
    source = PhantomSequenceSource(length=6, size=32, pool=3, seed=0)
    samples = [source.sample(rng) for _ in range(4)]
    batch = {k: np.stack([s[k] for s in samples]) for k in ("images", "labels", "first")}
    network = build_prop_net(TINY, seed=0)
    assert len(validate(network, batch, "cpu")) == 5 and len(validate(network, batch, "cpu", anchor_at=3)) == 4
    with pytest.raises(InputError, match="data.anchor_fraction"):
        check_prop_config(_merge(_config(tmp_path, 2), {"data": {"anchor_fraction": 2}}))
