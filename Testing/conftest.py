"""Shared fixtures for the pure-Python tests (synthetic volumes, one GrowCut engine per test run)."""
from __future__ import annotations

import numpy as np
import pytest

# A 12 x 64 x 64 (K, J, I) CT-like volume with spacing (3, 1, 1) mm and a bright sphere (radius 14 mm)
SYNTH_SHAPE = (12, 64, 64)
SYNTH_SPACING = (3.0, 1.0, 1.0)
SYNTH_CENTRE = (6, 32, 30)
SYNTH_RADIUS_MM = 14.0


def synthetic_sphere_mask(shape=SYNTH_SHAPE, spacing=SYNTH_SPACING, centre=SYNTH_CENTRE,
                          radius_mm=SYNTH_RADIUS_MM) -> np.ndarray:
    """Boolean ball of ``radius_mm`` (physical) around voxel ``centre``."""
    k, j, i = np.indices(shape)
    return (((k - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2
            + ((i - centre[2]) * spacing[2]) ** 2) <= radius_mm ** 2


def synthetic_ct_volume(shape=SYNTH_SHAPE, spacing=SYNTH_SPACING, centre=SYNTH_CENTRE,
                        radius_mm=SYNTH_RADIUS_MM, seed=0) -> np.ndarray:
    """float32 HU-like volume: noisy soft tissue (~40 HU), air strip at the top rows, bright sphere (~440 HU)."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(40.0, 15.0, shape).astype(np.float32)
    volume[:, :3, :] = -1000.0
    volume[synthetic_sphere_mask(shape, spacing, centre, radius_mm)] += 400.0
    return volume


def pytest_report_header(config):
    """Say where the development scans are expected: without them a few extra tests skip (a clone has none)."""
    from helpers import SHARED_DATA
    if SHARED_DATA.is_dir():
        return f"development data: {SHARED_DATA}"
    return (f"development data: none at {SHARED_DATA}; the few tests that need it skip (set IMIS_SHARED_DATA to the "
            f"project's development data folder to run them)")


@pytest.fixture(scope="session")
def growcut_engine():
    """One real GrowCutEngine (Slicer's vtkImageGrowCutSegment) for the whole run; building it imports slicer."""
    from IMISSegmentLib.engines.growcut import GrowCutEngine
    return GrowCutEngine()


@pytest.fixture
def synthetic_ct():
    """(volume, sphere mask, spacing) of the synthetic CT-like volume."""
    return synthetic_ct_volume(), synthetic_sphere_mask(), SYNTH_SPACING


@pytest.fixture
def growcut_session(growcut_engine, synthetic_ct):
    """An InteractiveSession on the synthetic CT volume, driven by the real GrowCut engine."""
    from IMISSegmentLib import InteractiveSession
    session = InteractiveSession(growcut_engine)
    session.set_volume(synthetic_ct[0], spacing=synthetic_ct[2])
    return session


@pytest.fixture
def write_block_case():
    """``write(folder, seed)``: a small labelled case folder (4 x 64 x 72 int16 image with a bright block,
    label 1 "block", spacing 3 mm between slices) as the evaluation and tuning commands read it."""
    def write(folder, seed):
        import json
        import SimpleITK as sitk
        rng = np.random.default_rng(seed)
        image = rng.normal(30, 20, (4, 64, 72)).astype(np.int16)
        label = np.zeros(image.shape, np.uint8)
        label[:, 20:34, 24:40] = 1
        image[label == 1] += 200
        folder.mkdir(parents=True)
        for name, array in (("image", image), ("label", label)):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.0, 1.0, 3.0))
            sitk.WriteImage(volume, str(folder / f"{name}.nii.gz"))
        (folder / "labels.json").write_text(json.dumps({"labels": {"1": "block"}}))
    return write
