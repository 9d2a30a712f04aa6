"""A regular (non-editable) install: the wheel carries the default model and the example CT inside the
package, as the Slicer extension installs them, and works with no checkout beside it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, slicer_installed_model_files

pytest.importorskip("onnxruntime")
PACKAGED = "IMISSegmentLib/Resources/"


def test_the_listed_packages_are_the_package_folders():
    """pyproject.toml lists the packages (it maps Resources/ into the package): a new subpackage must be added."""
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "IMISSegmentLib").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {"IMISSegmentLib.Resources"}
    assert config["package-dir"] == {"IMISSegmentLib.Resources": "Resources"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the sources (so the build leaves nothing in the checkout)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("IMISSegmentLib", "Resources"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_the_bundle_as_the_slicer_extension_installs_it_and_the_example_ct(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    models = sorted("Resources/" + n[len(PACKAGED):] for n in names if n.startswith(PACKAGED + "models/"))
    assert models == slicer_installed_model_files()       # ONNX stages and JSON; no torch weights, no records
    data = {n[len(PACKAGED):] for n in names if n.startswith(PACKAGED + "Data/")}
    assert {"Data/ct_abdomen/image.nii.gz", "Data/ct_abdomen/label.nii.gz", "Data/ct_abdomen/labels.json"} <= data
    assert not any("__pycache__" in n or n.startswith(("Testing/", "training/", "IMISSegment/")) for n in names)


def test_the_installed_wheel_runs_the_default_model_and_the_demo_away_from_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = """
import json, sys
from pathlib import Path
import IMISSegmentLib as imis
from IMISSegmentLib.demo import example_case_dir
from IMISSegmentLib.io import read_image, read_label
from IMISSegmentLib.models import default_bundle_dir
engine = imis.load_model()
session = imis.InteractiveSession(engine)
volume = read_image(example_case_dir() / "image.nii.gz")
session.set_volume(volume.array, volume.spacing)
inside = (read_label(example_case_dir() / "label.nii.gz", volume) == 5).nonzero()   # the spleen
middle = len(inside[0]) // 2
changed = session.add_click(tuple(int(axis[middle]) for axis in inside)).changed_voxels
print(json.dumps({"package": imis.__file__, "bundle": str(default_bundle_dir()), "engine": engine.name,
                  "changed": int(changed)}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("IMIS_SEGMENT_MODEL", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site) and Path(report["bundle"]).is_relative_to(site)
    assert report["engine"].startswith("imis-clicknet") and report["changed"] > 0   # the network, not the Grow from Seeds fallback
    demo = subprocess.run([sys.executable, "-m", "IMISSegmentLib.cli", "demo", "--clicks", "1", "--out", "demo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "demo-spleen.seg.nrrd").is_file() and "imis-clicknet" in demo.stdout
