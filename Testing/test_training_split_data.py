"""Training reads nnU-Net raw folders (and folders of them) and leaves the validation split's held-out cases out
unless asked: training/data/datasets.py (VolumeSliceDataset, _read_cases) and training/data/pack_data.py."""
from __future__ import annotations

import numpy as np
import pytest

from data_tree import SETS, write_data_tree, write_split
from training.data.datasets import VolumeSliceDataset, _read_cases, case_filter
from training.data.pack_data import main as pack_main
from IMISSegmentLib.errors import InputError

VALIDATION = {"set_ct": ["ct_2", "ct_7"], "set_cine": ["patient004_frame01", "patient004_frame02"]}
HELD_OUT = {"set_ct/ct_2", "set_ct/ct_7", "set_cine/patient004_frame01", "set_cine/patient004_frame02",
            "ct_abdomen_multiorgan"}
ALL = {f"{name}/{case_id}" for name, ids in SETS.items() for case_id in ids} | {"ct_abdomen_multiorgan",
                                                                                  "ct_lesion_a"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_data_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    training = {name: [c for c in ids if c not in VALIDATION[name]] for name, ids in SETS.items()}
    return write_split(tmp_path_factory.mktemp("split") / "split.json", VALIDATION, training,
                       {"training": ["ct_lesion_a"], "reported": ["ct_abdomen_multiorgan"]})


def _keys(root, **options):
    return {case.key for case, *_ in _read_cases(root, **options)}


def test_an_nnunet_set_is_read_with_its_dataset_json_names(tree, split):
    dataset = VolumeSliceDataset(tree / "set_ct", axes=(0,), min_area=4, size=32, split=split)
    assert {c.key for c in dataset.cases} == {f"set_ct/{c}" for c in SETS["set_ct"]} - HELD_OUT
    assert all(c.names == {1: "liver", 2: "spleen"} for c in dataset.cases)
    sample = dataset[0]
    assert sample["image"].shape == (1, 32, 32) and sample["label"].any()
    assert sample["source"].split("/")[-1] in ("liver", "spleen")


def test_the_split_held_out_cases_are_skipped_by_default(tree, split):
    dataset = VolumeSliceDataset(tree, axes=(0, 1), min_area=4, size=32, split=split)
    assert {c.key for c in dataset.cases} == ALL - HELD_OUT
    assert not {c.key for c in dataset.cases} & HELD_OUT
    # the readers the other data tools use skip them alike
    assert _keys(tree, split=split) == ALL - HELD_OUT
    assert _keys(tree / "set_cine", split=split) == {k for k in ALL - HELD_OUT if k.startswith("set_cine/")}


def test_held_out_cases_are_read_only_when_asked(tree, split):
    # named in include (a trainer's validation set): by name or by SET/CASE key
    assert _keys(tree, include={"ct_abdomen_multiorgan"}, split=split) == {"ct_abdomen_multiorgan"}
    assert _keys(tree / "set_ct", include={"set_ct/ct_2", "ct_3"}, split=split) == {"set_ct/ct_2", "set_ct/ct_3"}
    # the split's validation cases only, or no split at all
    assert _keys(tree, split=split, held_out="only") == HELD_OUT - {"ct_abdomen_multiorgan"}
    assert _keys(tree, split=split, held_out="include") == ALL
    assert _keys(tree, split=None) == ALL
    assert _keys(tree, exclude={"ct_lesion_a", "set_ct/ct_1"}, split=split) == ALL - HELD_OUT - {
        "ct_lesion_a", "set_ct/ct_1"}
    with pytest.raises(ValueError, match="held_out"):
        case_filter(held_out="sometimes")


def test_the_default_split_is_the_committed_one(tree):
    # the generated cases are not in training/splits/validation.json, so nothing of them is held out; a case
    # folder named as the reported scan is
    assert _keys(tree) == ALL - {"ct_abdomen_multiorgan"}


def test_packed_data_keeps_the_split_keys(tree, split, tmp_path):
    packed = tmp_path / "train.npz"
    assert pack_main([str(tree), "--out", str(packed)]) == 0
    # the default split (the committed file) holds only the reported scan of these
    assert _keys(packed, split=split) == ALL - HELD_OUT
    assert _keys(packed, split=split, held_out="only") == HELD_OUT - {"ct_abdomen_multiorgan"}
    ((case, image, spacing, label),) = list(_read_cases(packed, include={"set_ct/ct_3"}, split=split))
    assert case.name == "set_ct/ct_3" and case.dataset == "set_ct" and image.shape == label.shape
    assert np.allclose(spacing, (4.0, 1.5, 1.5))
    validation = tmp_path / "val.npz"
    assert pack_main([str(tree / "set_cine"), "--held-out", "include", "--include", "set_cine/patient004_frame01",
                      "--out", str(validation)]) == 0
    assert _keys(validation, include={"patient004_frame01"}, split=split) == {"set_cine/patient004_frame01"}


def _set_shares(dataset, draws=3000, seed=0):
    rng = np.random.default_rng(seed)
    counts = {}
    for _ in range(draws):
        entry = dataset.entries[dataset.draw(rng)]
        key = (dataset.cases[entry.case].dataset or "case folders",
               dataset.cases[entry.case].names.get(entry.value))
        counts[key] = counts.get(key, 0) + 1
    return {key: count / draws for key, count in counts.items()}


def test_balanced_drawing_gives_every_set_and_structure_its_share(tree, split):
    """balance "set": each set (and the case folders together) equally likely, whatever its slice count;
    "structure": within a set, each structure too. "none" follows the slice counts."""
    options = dict(axes=(0,), min_area=4, size=32, split=split, held_out="include")
    plain = VolumeSliceDataset(tree, **options)
    by_set = VolumeSliceDataset(tree, balance="set", **options)
    by_structure = VolumeSliceDataset(tree, balance="structure", **options)
    sets = {"set_ct", "set_cine", "case folders"}
    share = lambda shares, name: sum(v for k, v in shares.items() if k[0] == name)   # noqa: E731
    balanced = _set_shares(by_set)
    assert all(abs(share(balanced, name) - 1 / 3) < 0.04 for name in sets)
    natural = _set_shares(plain)
    assert share(natural, "case folders") < 0.2   # 2 case folders against 22 set cases
    structures = _set_shares(by_structure)
    # spleen (2 slices per case) against liver (4): equal within each set once balanced by structure
    for name in sets:
        assert abs(structures[(name, "spleen")] - structures[(name, "liver")]) < 0.04
    assert natural[("set_ct", "liver")] > 1.5 * natural[("set_ct", "spleen")]
    with pytest.raises(ValueError, match="balance must be one of"):
        VolumeSliceDataset(tree, balance="cases", **options)


def test_structure_weights_move_draws_within_a_set_only(tree, split):
    """data.structure_weights: spleen weighted 3 is drawn 3x as often as liver in each set, while every set keeps
    its share; bad weights, unknown names and weights without balance "structure" are errors naming them."""
    options = dict(axes=(0,), min_area=4, size=32, split=split, held_out="include")
    weighted = _set_shares(VolumeSliceDataset(tree, balance="structure", structure_weights={"spleen": 3}, **options),
                           draws=6000)
    for name in ("set_ct", "set_cine", "case folders"):
        assert abs(sum(v for k, v in weighted.items() if k[0] == name) - 1 / 3) < 0.04
        assert 2.3 < weighted[(name, "spleen")] / weighted[(name, "liver")] < 3.9
    with pytest.raises(ValueError, match=r"structure_weights\['spleen'\] must be a number > 0"):
        VolumeSliceDataset(tree, balance="structure", structure_weights={"spleen": 0}, **options)
    with pytest.raises(ValueError, match="need balance"):
        VolumeSliceDataset(tree, balance="set", structure_weights={"spleen": 2}, **options)
    for bad in ({"spleen": 10 ** 400}, {"spleen": True}, {"spleen": float("nan")}):
        with pytest.raises(ValueError, match=r"structure_weights\['spleen'\] must be a number > 0"):
            VolumeSliceDataset(tree, balance="structure", structure_weights=bad, **options)
    with pytest.raises(ValueError, match="must be a mapping"):
        VolumeSliceDataset(tree, balance="structure", structure_weights=["spleen"], **options)
    with pytest.raises(InputError, match="names pancreas, which no read set has"):
        VolumeSliceDataset(tree, balance="structure", structure_weights={"pancreas": 2}, **options)


def test_the_example_ct_that_ships_is_held_out_as_the_reported_patient():
    """Resources/Data/ct_abdomen is ct_abdomen_multiorgan (the reported scan): training skips it unless asked."""
    from helpers import EXAMPLE_CT
    assert _keys(EXAMPLE_CT.parent) == set()
    assert _keys(EXAMPLE_CT.parent, held_out="include") == {"ct_abdomen"}


def test_zoom_crops_cut_a_share_of_slices_to_a_window_around_their_structure():
    """training/data/zoom_crops.py: with fraction 1 every window holds the whole structure, is at least
    min_crop_mm and at least expansion x its extent (mm, both axes' spacing), and lies inside the slice; with
    fraction 0 nothing is cut; bad settings name the key."""
    from training.data.zoom_crops import ZoomCrops
    mask = np.zeros((200, 160), bool)
    mask[90:110, 40:70] = True                 # 20 rows x 30 cols: 40 mm x 30 mm at (2, 1) mm spacing
    spacing = (2.0, 1.0)
    crops = ZoomCrops.from_dict({"fraction": 1.0, "expansion": [2.0, 3.0], "min_crop_mm": [50, 60], "jitter": 0.15})
    rng = np.random.default_rng(0)
    for _ in range(200):
        r0, c0, r1, c1 = crops.window(mask, spacing, rng)
        assert 0 <= r0 < r1 <= 200 and 0 <= c0 < c1 <= 160
        assert r0 <= 90 and r1 >= 110 and c0 <= 40 and c1 >= 70          # the structure stays inside
        side_r, side_c = (r1 - r0) * spacing[0], (c1 - c0) * spacing[1]
        assert side_r >= 2.0 * 40 - 2 and side_c >= min(160, 2.0 * 40 - 1)   # square in mm, clipped at the border
        assert side_r <= 3.0 * 40 + 2
    assert ZoomCrops.from_dict({"fraction": 0.0}).window(mask, spacing, rng) is None
    assert ZoomCrops.from_dict({"fraction": 1.0}).window(np.zeros_like(mask), spacing, rng) is None
    for bad, key in (({"fraction": 1.5}, "fraction"), ({"expansion": [3, 2]}, "expansion"),
                     ({"min_crop_mm": [0, 10]}, "min_crop_mm"), ({"zoom": 1}, "unknown")):
        with pytest.raises(ValueError, match=key):
            ZoomCrops.from_dict(bad)


def test_zoomed_training_samples_show_the_structure_larger(tree, split):
    """A VolumeSliceDataset with zoom crops draws samples whose structure fills more of the network input than the
    whole-slice samples of the same entries; validation (indexing) never crops."""
    from training.data.zoom_crops import ZoomCrops
    options = dict(axes=(0,), min_area=4, size=64, split=split, held_out="include")
    plain = VolumeSliceDataset(tree, **options)
    zoomed = VolumeSliceDataset(tree, zoom=ZoomCrops(fraction=1.0, expansion=(1.5, 2.0), min_crop_mm=(1.0, 2.0)),
                                **options)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    whole = [plain.sample(rng_a)["label"].mean() for _ in range(40)]
    cut = [zoomed.sample(rng_b) for _ in range(40)]
    assert np.mean([s["label"].mean() for s in cut]) > 2 * np.mean(whole)
    assert all("/zoom" in s["source"] for s in cut if s["label"].mean() > 0)
    assert np.array_equal(zoomed[0]["label"], plain[0]["label"])


def test_zoom_priors_cut_samples_with_a_previous_mask_around_both_masks(tree, split):
    """With ``zoom.priors`` the propagated and defective samples are cut too (their source says so), the window
    holding the previous mask as well as the structure: at fraction 1 both fill more of the input than uncut, and
    no previous-mask pixel is lost to the cut; without ``priors`` they stay whole."""
    from training.data.defects import DefectConfig
    from training.data.zoom_crops import ZoomCrops
    options = dict(axes=(0,), min_area=4, size=64, split=split, held_out="include")
    settings = dict(fraction=1.0, expansion=(1.5, 2.0), min_crop_mm=(1.0, 2.0))
    kept = VolumeSliceDataset(tree, zoom=ZoomCrops(**settings), **options)
    cut = VolumeSliceDataset(tree, zoom=ZoomCrops(**settings, priors=True), **options)
    for draw in (lambda d, rng: d.sample_propagated(rng, (5.0, 10.0)),
                 lambda d, rng: d.sample_defective(rng, DefectConfig())):
        rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
        whole = [draw(kept, rng_a) for _ in range(30)]
        zoomed = [draw(cut, rng_b) for _ in range(30)]
        assert not any("/zoom" in s["source"] for s in whole)
        assert any("/zoom" in s["source"] for s in zoomed)
        assert np.mean([s["prior"].mean() for s in zoomed]) > 2 * np.mean([s["prior"].mean() for s in whole])
    # the window is around both masks: a previous mask apart from the structure is kept, at the same scale
    image = np.zeros((400, 400), np.float32)
    mask, prior = np.zeros((400, 400), bool), np.zeros((400, 400), bool)
    mask[100:120, 100:120], prior[150:170, 140:180] = True, True
    for seed in range(10):
        sample = cut._prior_sample(image, mask, prior, (1.0, 1.0), np.random.default_rng(seed), "case")
        assert "/zoom" in sample["source"]
        label_area, prior_area = sample["label"].sum(), sample["prior"].sum()
        assert label_area > 0 and 1.6 < prior_area / label_area < 2.5   # twice the structure's area, give or take
    with pytest.raises(ValueError, match="priors"):
        ZoomCrops.from_dict({"priors": "yes"})
