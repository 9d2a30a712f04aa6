"""Memory propagation (issue #4): the network's stages, the memory manager, the ROI, the sweeps, export
parity between onnxruntime and torch, and the shipped bundle carrying a structure through a volume."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import IMISSegmentLib as imis  # noqa: E402
from IMISSegmentLib.bench_propagation import run_propagation_bench, tube_volume  # noqa: E402
from IMISSegmentLib.errors import CancelledError, InputError  # noqa: E402
from IMISSegmentLib.networks import prop_net  # noqa: E402
from IMISSegmentLib.propagation import memory as numpy_memory  # noqa: E402
from IMISSegmentLib.propagation.memory import MemoryManager  # noqa: E402
from IMISSegmentLib.propagation.propagator import PropagationSettings, propagation_axis  # noqa: E402
from IMISSegmentLib.propagation.roi import Roi, roi_around  # noqa: E402

TINY = {"input_size": 64, "widths": [8, 16, 24], "blocks": [0, 1, 1], "key_dim": 8, "value_dim": 16,
        "sensory_dim": 8, "mask_widths": [4, 8, 8], "top_k": 10}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The shipped click network with a tiny (untrained, seeded) propagation network added."""
    from IMISSegmentLib.engines.torch_engine import network_from_bundle
    from IMISSegmentLib.models import default_bundle_dir, read_bundle_info
    from training.export.click_net import export_bundle
    from training.export.propagation import add_propagation
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    shipped = default_bundle_dir()
    export_bundle(network_from_bundle(shipped, read_bundle_info(shipped)), out)
    add_propagation(prop_net.build_prop_net(TINY, seed=0).eval(), out)
    return out


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_stages_shapes_and_sequence_path():
    network = prop_net.build_prop_net(TINY, seed=0).eval()
    assert set(dict(network.named_children())) == {"key_encoder", "value_encoder", "decoder"}
    with torch.inference_mode():
        f2, f4, f8, key, shrinkage, selection = network.encode_key(torch.rand(2, 1, 64, 64))
        assert (f2.shape[-1], f4.shape[-1], f8.shape[-1], key.shape[1]) == (32, 16, 8, 8)
        assert float(shrinkage.min()) >= 1.0 and 0.0 <= float(selection.min()) <= float(selection.max()) <= 1.0
        logits = network(torch.rand(2, 5, 1, 64, 64), torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 4, 1, 64, 64)
    with pytest.raises(ValueError):
        prop_net.make_config({"input_size": 60})


def test_numpy_read_out_matches_torch_and_prefers_the_nearest_key():
    rng = np.random.default_rng(0)
    query, select = rng.normal(size=(8, 20)).astype(np.float32), rng.random((8, 20)).astype(np.float32)
    keys, values = rng.normal(size=(8, 50)).astype(np.float32), rng.normal(size=(16, 50)).astype(np.float32)
    shrink = (1 + rng.random(50)).astype(np.float32)
    for top_k in (5, 50, 80):
        expected = prop_net.read_memory(*(torch.from_numpy(a)[None] for a in (query, select, keys)),
                                        torch.from_numpy(shrink)[None, None], torch.from_numpy(values)[None], top_k)
        actual, usage = numpy_memory.read_memory(query, select, keys, shrink, values, top_k)
        np.testing.assert_allclose(actual, expected[0].numpy(), atol=1e-4)
        assert usage.shape == (50,) and abs(usage.sum() - 20) < 1e-3   # each query's weights sum to 1
    # with sharp shrinkage, the memory column equal to the query takes the whole read-out
    keys[:, 7] = query[:, 3]
    shrink[:] = 50.0
    readout, _ = numpy_memory.read_memory(query, np.ones_like(select), keys, shrink, values, 5)
    np.testing.assert_allclose(readout[:, 3], values[:, 7], atol=1e-3)


def test_memory_stays_bounded_and_keeps_prompted_slices():
    rng = np.random.default_rng(1)
    memory = MemoryManager(top_k=5, working_min=2, working_max=4, long_term_max=40, prototypes=16)
    frame = lambda: (rng.normal(size=(8, 25)), 1 + rng.random(25), rng.normal(size=(16, 25)))  # noqa: E731
    prompted = frame()
    memory.add_permanent(*prompted)
    sizes = []
    for _ in range(60):
        memory.add_working(*frame())
        readout = memory.read(rng.normal(size=(8, 25)), rng.random((8, 25)))
        assert readout.shape == (16, 25)
        sizes.append(memory.size)
    assert max(sizes) <= 25 + 4 * 25 + 40
    assert memory.long_term_columns == 40 and len(memory.working) <= 4
    assert memory.permanent.keys[0] is not None and len(memory.permanent) == 1
    # the prompted slice is still read: a query equal to it gets its values
    out = MemoryManager(top_k=1)
    out.add_permanent(*prompted)
    np.testing.assert_allclose(out.read(prompted[0], np.ones((8, 25))), prompted[2], atol=1e-5)
    with pytest.raises(ValueError):
        MemoryManager(working_min=4, working_max=4)
    with pytest.raises(ValueError):
        MemoryManager().read(np.zeros((8, 2)), np.ones((8, 2)))


def test_roi_is_square_in_millimetres_and_round_trips():
    mask = np.zeros((100, 80), bool)
    mask[40:60, 30:40] = True
    roi = roi_around(mask, spacing=(2.0, 1.0), scale=1.5, margin_mm=10, min_px=8)
    assert abs(roi.rows * 2.0 - roi.cols * 1.0) <= 2.0           # square in mm
    assert roi.row0 <= 40 and roi.row0 + roi.rows >= 60 and roi.col0 <= 30 and roi.col0 + roi.cols >= 40
    image = np.fromfunction(lambda r, c: np.sin(r / 9.0) + np.cos(c / 7.0), (100, 80)).astype(np.float32)
    back = roi.paste(roi.crop(image, 64), image.shape, fill=np.nan)
    inside = ~np.isnan(back)
    assert inside.sum() > 0 and np.nanmax(np.abs(back - image)[inside][5:-5]) < 0.2
    edge = Roi(-10, -10, 30, 30)                                   # past the slice: zeros there
    assert edge.crop(np.ones((50, 50), np.float32), 30)[:8, :8].max() < 0.05
    assert edge.touches_edge(np.ones((50, 50), bool)) and not roi.touches_edge(mask)
    with pytest.raises(ValueError):
        roi_around(np.zeros((5, 5), bool))


def test_a_tiny_voxel_spacing_keeps_the_roi_and_the_neighbour_search_within_the_volume():
    """Millimetre margins on a 1e-6 mm grid would be millions of pixels: the ROI stays at most twice the slice
    (it allocated terabytes), and a click's search for a neighbouring mask stays within the volume (it ran
    20 mm / spacing iterations: hours); the shipped engine still segments and propagates the blob."""
    mask = np.zeros((64, 64), bool)
    mask[20:44, 20:44] = True
    roi = roi_around(mask, spacing=(1e-6, 1e-6))
    assert roi.rows == roi.cols <= 128
    assert roi_around(mask, spacing=(1.0, 1.0), margin_mm=12.0).rows == 50     # 24 mm x 1.6 + 12 mm: no cap
    volume = np.random.default_rng(0).normal(0.0, 10.0, (20, 64, 64)).astype(np.float32)
    volume[5:15, 20:44, 20:44] += 300.0
    session = imis.InteractiveSession(_shipped())
    session.set_volume(volume, (1e-8, 1e-8, 1e-8))
    assert session.add_click((10, 32, 32)).changed_voxels > 0
    session.propagate()
    result = session.result.astype(bool)
    assert result[10, 32, 32] and result[8, 32, 32] and not result[:, :10, :10].any()


def test_propagation_axis_and_settings():
    full, empty = np.ones((2, 2), bool), np.zeros((2, 2), bool)
    assert propagation_axis({(0, 3): full, (1, 2): full, (1, 5): full}) == 1
    assert propagation_axis({(2, 3): full, (0, 1): full}) == 2
    assert propagation_axis({(2, 3): empty, (0, 1): full}) == 0
    with pytest.raises(InputError, match="unknown propagation settings"):
        PropagationSettings.from_dict({"working_maximum": 3})
    with pytest.raises(InputError, match="containment"):
        PropagationSettings.from_dict({"containment": "lasso"})
    assert PropagationSettings.from_dict(None).containment == "growcut"
    # a hand-edited bundle's bad values fail when the bundle is read, not later inside the memory
    for bad, message in (({"working_max": -3}, "working_max must be an integer"), ({"roi_shrink": 2}, "roi_shrink"),
                         ({"working_min": 12}, "working_min < working_max"), ({"prototypes": "64"}, "prototypes")):
        with pytest.raises(InputError, match=message):
            PropagationSettings.from_dict(bad)
    assert PropagationSettings.from_dict({"working_max": 12.0}).working_max == 12


def test_export_adds_checked_stages_and_torch_matches_onnxruntime(tiny_bundle):
    info = imis.models.read_bundle_info(tiny_bundle)
    assert {"prop_key", "prop_value", "prop_decoder"} <= set(info["stages"])
    assert max(info["propagation"]["export_check"]["max_abs_difference"].values()) < 1e-3
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine
    onnx_engine, torch_engine = imis.load_model(str(tiny_bundle)), TorchClickEngine(tiny_bundle, device="cpu")
    assert onnx_engine.propagation_method() == torch_engine.propagation_method() == "network"
    volume, mask = tube_volume(12, 96)
    results = []
    for engine in (onnx_engine, torch_engine):
        session = imis.InteractiveSession(engine)
        session.set_volume(volume, spacing=(2.0, 1.0, 1.0))
        rows, cols = np.nonzero(mask[6])
        session.add_box(6, (rows.min(), cols.min()), (rows.max(), cols.max()))
        session.propagate()
        results.append(session.result.copy())
    assert np.count_nonzero(results[0] != results[1]) <= 0.001 * results[0].size


def test_a_corrupt_propagation_stage_fails_to_load(tiny_bundle, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "prop_decoder.onnx", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(InputError, match="prop_decoder.onnx: checksum mismatch"):
        imis.load_model(str(copy))


def test_the_region_of_interest_is_set_on_a_bundle_and_checked(tiny_bundle, tmp_path, capsys):
    """training.export.settings sets the memory network's ROI (chosen on the validation split's 3D protocol); the
    engine's propagator reads it; a value the propagation settings refuse leaves the bundle as it was."""
    import json
    import shutil
    from training.export.settings import main as settings_main
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert settings_main(["--bundle", str(bundle), "--set", "propagation.settings.roi_scale=1.15",
                          "--set", "propagation.settings.roi_margin_mm=8"]) == 0
    settings = imis.load_model(str(bundle)).propagator.settings
    assert (settings.roi_scale, settings.roi_margin_mm) == (1.15, 8.0)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 25:35] = True
    roi = roi_around(mask, (1.0, 1.0), settings.roi_scale, settings.roi_margin_mm)
    assert roi.rows == roi.cols == round(20 * 1.15 + 8)
    before = (bundle / "inference_info.json").read_text()
    capsys.readouterr()
    for value in ("0", "-1", "\"wide\""):
        assert settings_main(["--bundle", str(bundle), "--set", f"propagation.settings.roi_scale={value}"]) == 2
        err = capsys.readouterr().err
        assert "roi_scale" in err and len(err.strip().splitlines()) == 1, err
    assert (bundle / "inference_info.json").read_text() == before
    assert json.loads(before)["propagation"]["settings"]["roi_scale"] == 1.15


def test_cancel_mid_propagation_leaves_the_result_and_progress_counts_up(tiny_bundle):
    volume, mask = tube_volume(16, 128)   # a tube the click network answers (on 64 px the box alone is empty)
    session = imis.InteractiveSession(imis.load_model(str(tiny_bundle)))
    session.set_volume(volume)
    rows, cols = np.nonzero(mask[8])
    session.add_box(8, (rows.min(), cols.min()), (rows.max(), cols.max()))
    before = session.result.copy()
    calls = []

    def progress(done, total):
        calls.append((done, total))

    with pytest.raises(CancelledError):
        session.propagate(progress=progress, cancelled=lambda: len(calls) >= 3)
    np.testing.assert_array_equal(session.result, before)
    assert [c[0] for c in calls] == [1, 2, 3] and {c[1] for c in calls} == {15}   # 7 slices forward, 8 back
    session.propagate(progress=progress)
    assert calls[-1][0] <= calls[-1][1]
    np.testing.assert_array_equal(session.result[8], before[8])   # the prompted slice keeps the user's mask


def _shipped():
    engine = imis.load_model()
    if getattr(engine, "propagator", None) is None:
        pytest.fail("the shipped bundle has no propagation network (training/recipes/prop_net_cpu.sh)")
    return engine


def test_shipped_network_follows_a_tube_both_ways_and_stops_where_it_ends():
    volume, mask = tube_volume(48, 160, seed=3)
    volume[:8] = volume[8:16]           # the tube is absent from the first and last 8 slices
    volume[40:] = volume[32:40]
    plain = np.where(volume[:8] > 100, 40, volume[:8]).astype(np.int16)
    volume[:8], volume[40:] = plain, np.where(volume[40:] > 100, 40, volume[40:]).astype(np.int16)
    mask[:8] = mask[40:] = False
    session = imis.InteractiveSession(_shipped())
    session.set_volume(volume, spacing=(2.0, 1.0, 1.0))
    rows, cols = np.nonzero(mask[24])
    session.add_box(24, (rows.min(), cols.min()), (rows.max(), cols.max()))
    session.propagate()
    result = session.result.astype(bool)
    assert _dice(result[8:40], mask[8:40]) > 0.8
    assert result[:5].sum() == 0 and result[43:].sum() == 0       # it stopped where the tube ends


def test_propagation_without_slicer_core_warns_once_that_the_containment_is_skipped(recwarn):
    """The shipped bundle asks for the Grow from Seeds containment; where slicer-core is missing (the flag the
    engine caches from its import check, set as such an install would) the memory network's result is used
    as it is, with one RuntimeWarning per engine naming what to install; where it is installed, no warning."""
    volume, mask = tube_volume(24, 64, seed=5)
    rows, cols = np.nonzero(mask[12])
    for available in (True, False):
        engine = _shipped()
        engine._growcut_available = available
        session = imis.InteractiveSession(engine)
        session.set_volume(volume)
        session.add_box(12, (rows.min(), cols.min()), (rows.max(), cols.max()))
        session.propagate()
        session.add_click((12, int(rows.mean()), int(cols.mean())))
        session.propagate()
        assert (engine.last_propagation["containment_s"] is None) is (not available)
    warned = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning) and "containment" in str(w.message)]
    assert len(warned) == 1 and 'IMISSegment[growcut]' in str(warned[0].message)


def test_shipped_memory_is_bounded_on_a_long_volume():
    engine = _shipped()
    volume, mask = tube_volume(120, 96, seed=4)
    session = imis.InteractiveSession(engine)
    session.set_volume(volume)
    rows, cols = np.nonzero(mask[60])
    session.add_box(60, (rows.min(), cols.min()), (rows.max(), cols.max()))
    session.propagate()
    stats, settings = engine.propagator.last_run, engine.propagator.settings
    per_slice = (engine.propagator.size // 8) ** 2
    assert stats["slices_segmented"] >= 100
    assert stats["max_memory_columns"] <= (1 + settings.working_max) * per_slice + settings.long_term_max
    assert _dice(session.result.astype(bool), mask) > 0.7


def test_propagation_bench_reports_speed_and_memory(tiny_bundle):
    report = run_propagation_bench(str(tiny_bundle), [6, 10], size=64)
    assert [r["slices"] for r in report["runs"]] == [6, 10]
    for run in report["runs"]:
        assert run["method"] == "network" and run["propagate_s"] > 0 and run["working_memory_mb"] > 0
        assert run["maxrss_mb_after_propagate"] >= run["maxrss_mb_before_propagate"] > 0
    assert report["maxrss_ratio_longest_to_shortest"] > 0
    with pytest.raises(InputError):
        run_propagation_bench(str(tiny_bundle), [2])


def test_the_bench_says_loudly_when_the_tube_is_not_followed(tiny_bundle, capsys):
    """The tube sanity check: below Dice 0.95 at any length the report says which length and whether the start
    slice or the propagation failed, and the command exits 1 with a warning, even with -q."""
    from IMISSegmentLib.bench_propagation import TUBE_DICE_MIN, sanity
    from IMISSegmentLib.cli import main
    good = {"slices": 200, "tube_dice": 0.97, "start_slice_dice": 0.98}
    assert sanity([good]) == {"tube_dice_min": TUBE_DICE_MIN, "passed": True, "problem": None}
    lost = dict(good, slices=400, tube_dice=0.14)
    bad_start = dict(good, tube_dice=0.5, start_slice_dice=0.35)
    check = sanity([good, lost, bad_start])
    assert not check["passed"]
    assert check["problem"] == ("400 slices: Dice 0.140 (the propagation loses the tube); 200 slices: Dice 0.500 "
                                "(the box's own slice already 0.350: the 2D answer is wrong)")
    # the untrained tiny network does not follow the tube: the real command says so and exits 1
    code = main(["-q", "bench", "--engine", str(tiny_bundle), "--size", "64", "--repeats", "1", "--slices", "1",
                 "--litemedsam-repeats", "0", "--propagation-slices", "6"])
    err = capsys.readouterr().err
    assert code == 1 and "WARNING: propagation sanity check FAILED" in err and "6 slices: Dice" in err


def test_growcut_containment_stops_a_run_into_a_look_alike_neighbour(growcut_engine):
    """Two bright blocks of the same intensity, one above the other with a dark gap: a result that ran
    from the first into the second is cut back to the first, where region growing from the prompted
    slice stops."""
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.engines.growcut import contain_with_growcut
    from IMISSegmentLib.normalize import intensity_window
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 10.0, (24, 40, 40)).astype(np.float32)
    first, second = np.zeros(volume.shape, bool), np.zeros(volume.shape, bool)
    first[2:10, 12:28, 12:28] = True
    second[13:22, 12:28, 12:28] = True
    volume[first | second] += 300.0
    context = VolumeContext(volume, (1.0, 1.0, 1.0), intensity_window(volume))
    leaked = (first | second).astype(np.uint8)
    leaked[10:13, 12:28, 12:28] = 1
    out = contain_with_growcut(context, leaked, {(0, 5): first[5]})
    assert _dice(out.astype(bool), first) > 0.9 and not out[15:].any()
    coarse = contain_with_growcut(context, leaked, {(0, 5): first[5]}, max_px=12)   # grown on 2 x 2 x 2 blocks
    assert _dice(coarse.astype(bool), first) > 0.85 and not coarse[16:].any()
    assert not contain_with_growcut(context, np.zeros_like(leaked), {(0, 5): first[5]}).any()
    # in place (what the engine does, so a long volume holds no second result): the same answer, in ``leaked``
    again = leaked.copy()
    assert contain_with_growcut(context, again, {(0, 5): first[5]}, in_place=True) is again
    assert np.array_equal(again, out)


def test_coarse_containment_streams_its_region_slab_by_slab(growcut_engine, monkeypatch):
    """The coarse containment reads and clears its region a few slices at a time (so its memory does not grow
    with the structure's length); the answer does not depend on the slab size, also where slab ends fall
    inside blocks of the coarse grid and the dilation reaches across them."""
    from IMISSegmentLib.engines import growcut
    from IMISSegmentLib.engines.base import VolumeContext
    from IMISSegmentLib.normalize import intensity_window
    from IMISSegmentLib.prompts import make_click
    rng = np.random.default_rng(3)
    volume = rng.normal(0.0, 15.0, (60, 48, 52)).astype(np.float32)   # the region ends inside the volume
    tube = np.zeros(volume.shape, bool)
    for k in range(2, 31):                       # a tube that drifts along the long axis, then a look-alike
        tube[k, 16 + k // 6:26 + k // 6, 20:32] = True
    volume[tube] += 250.0
    volume[38:44, 16:28, 20:32] += 250.0
    context = VolumeContext(volume, (1.0, 1.2, 1.0), intensity_window(volume))
    result = tube.astype(np.uint8)
    result[31:44, 16:28, 20:32] = 1            # the propagation ran on into the look-alike
    prompted = {(0, 15): tube[15], (0, 25): tube[25]}
    clicks = [make_click((25, 2, 2), False, 0, volume.shape)]
    answers = []
    for slab in (3, 4, 7, 1000):              # 1000: the whole region in one slab
        monkeypatch.setattr(growcut, "SLAB_SLICES", slab)
        answers.append(growcut.contain_with_growcut(context, result, prompted, clicks, max_px=23))   # 3 x 2 x 2 blocks
    assert all(np.array_equal(answers[0], other) for other in answers[1:])
    assert answers[0][tube].mean() > 0.9 and not answers[0][38:].any()
    assert answers[0].sum() < result.sum()


def test_containment_seeds_are_made_for_its_region_only():
    """Seeds for a region equal the volume's seeds cut to it (masks on any axis, a negative click), so the
    containment needs no volume-sized seed array."""
    from IMISSegmentLib.engines.growcut import _seeded_region, slice_mask_seeds
    from IMISSegmentLib.prompts import make_click
    shape = (30, 40, 50)
    disk = np.zeros((40, 50), bool)
    disk[10:25, 15:35] = True
    side = np.zeros((30, 40), bool)
    side[12:20, 8:30] = True
    prompted = {(0, 14): disk, (2, 25): side, (0, 3): np.zeros((40, 50), bool)}
    clicks = [make_click((14, 12, 16), False, 0, shape), make_click((20, 20, 25), True, 0, shape)]
    full = slice_mask_seeds(shape, prompted, clicks)
    assert (full == 1).any() and (full == 2).any()
    result = np.zeros(shape, np.uint8)
    result[10:20, 12:22, 18:30] = 1
    region = _seeded_region(shape, prompted, result, (2.0, 1.0, 1.0), 3.0)
    assert region != tuple(slice(0, n) for n in shape)            # a part of the volume
    assert np.array_equal(slice_mask_seeds(shape, prompted, clicks, region=region), full[region])
    foreground = np.argwhere((full == 1) | (result > 0))
    expected = tuple(slice(max(0, lo - m), min(n, hi + 1 + m)) for lo, hi, m, n in
                     zip(foreground.min(0), foreground.max(0), (2, 3, 3), shape))
    assert region == expected
    assert _seeded_region(shape, prompted, np.zeros(shape, np.uint8), (1.0, 1.0, 1.0), 3.0) is None
