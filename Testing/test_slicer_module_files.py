"""Static checks of the Slicer module, the effect and the extension metadata (they need Qt and the Slicer
application to run, which are not available here): they compile, register the effect "IMIS", import
Qt lazily, and the CMake files, the file tree and the Extensions Index entry agree."""
from __future__ import annotations

import ast
import json
import py_compile
import re
from pathlib import Path

import pytest

from helpers import slicer_installed_model_files

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "IMISSegment"
PY_FILES = sorted(MODULE_DIR.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(MODULE_DIR)))
def test_every_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_top_level_scripts_define_their_module_class():
    """Slicer loads every top-level .py of a scripted-module folder as a module named after the file."""
    for path in MODULE_DIR.glob("*.py"):
        classes = {node.name for node in _tree(path).body if isinstance(node, ast.ClassDef)}
        assert path.stem in classes, f"{path.name} must define class {path.stem}"
    classes = {node.name for node in _tree(MODULE_DIR / "IMISSegment.py").body if isinstance(node, ast.ClassDef)}
    assert {"IMISSegment", "IMISSegmentWidget", "IMISSegmentLogic", "IMISSegmentTest"} <= classes


def _module_level_imports(path: Path) -> set:
    names = set()
    for node in _tree(path).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_qt_is_imported_lazily():
    for path in PY_FILES:
        assert not _module_level_imports(path) & {"qt", "ctk", "PythonQt"}, f"{path}: import qt/ctk inside functions"
    # the Slicer-side logic imports with vtk + slicer MRML (slicer-core) + IMISSegmentLib only
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import IMISSegmentSlicer, IMISSegmentSlicer.dependencies; "
            "assert not {'qt', 'ctk'} & set(sys.modules), 'Qt imported'")
    done = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _string_constants(tree) -> dict:
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) for target in node.targets if isinstance(target, ast.Name)}


def test_effect_registers_the_name_imis():
    effect = MODULE_DIR / "SegmentEditorIMISLib" / "SegmentEditorEffect.py"
    tree = _tree(effect)
    constants = _string_constants(tree)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "name" and \
                        isinstance(target.value, ast.Name) and target.value.id == "scriptedEffect":
                    value = node.value
                    names.append(value.value if isinstance(value, ast.Constant) else constants.get(value.id))
    assert names == ["IMIS"]
    effect_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")
    methods = {n.name for n in effect_class.body if isinstance(n, ast.FunctionDef)}
    assert {"clone", "icon", "helpText", "setupOptionsFrame", "activate", "deactivate",
            "processInteractionEvents"} <= methods
    # the hidden module registers that file once Slicer has started, as Slicer's effect template does
    hidden = (MODULE_DIR / "SegmentEditorIMIS.py").read_text()
    assert 'connect("startupCompleted()", self.registerEditorEffect)' in hidden
    assert '"SegmentEditorIMISLib", "SegmentEditorEffect.py"' in hidden
    assert (MODULE_DIR / "SegmentEditorIMISLib" / "SegmentEditorEffect.png").is_file()


def _cmake_sets(text: str) -> dict:
    """``set(NAME values...)`` blocks of a CMake file (comments dropped, one level of ${VAR} expanded)."""
    text = re.sub(r"#[^\n]*", "", text)
    sets = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+(.*?)\)", text, flags=re.S):
        values = re.findall(r'"[^"]*"|\S+', body)
        sets[name] = [v.strip('"') for v in values]
    for name, values in sets.items():
        sets[name] = [re.sub(r"\$\{(\w+)\}", lambda m: " ".join(sets.get(m.group(1), [m.group(0)])), v)
                      for v in values]
    return sets


def test_cmake_lists_existing_files_and_every_module_script():
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"add_subdirectory\(\s*IMISSegment\s*\)", top)
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    sets = _cmake_sets(module_cmake)
    listed = []
    for key in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES", "EFFECT_PYTHON_SCRIPTS", "EFFECT_PYTHON_RESOURCES"):
        listed += sets.get(key, [])
    assert listed
    for relative in listed:
        assert (MODULE_DIR / relative).is_file(), f"IMISSegment/CMakeLists.txt lists a missing file: {relative}"
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in PY_FILES}
    assert on_disk == {v for v in listed if v.endswith(".py")}, "every module .py must be listed in CMake"
    assert module_cmake.count("slicerMacroBuildScriptedModule(") == 2 and "WITH_GENERIC_TESTS" in module_cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake
    # the core library and the shared resources are installed with the module
    assert "${PROJECT_SOURCE_DIR}/IMISSegmentLib/*.py" in module_cmake
    assert (REPO / "IMISSegmentLib" / "session.py").is_file() and (REPO / "Resources" / "models").is_dir()
    assert (REPO / "Resources" / "Icons" / "IMISSegment.png").is_file()


def test_extension_metadata_agrees_with_index_entry():
    sets = _cmake_sets((REPO / "CMakeLists.txt").read_text())
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert sets.get(key), f"CMakeLists.txt must set {key}"
    entry = json.loads((REPO / "IMISSegment.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}   # catalog entry schema v1.0.2
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["category"] == sets["EXTENSION_CATEGORY"][0] == "Segmentation"
    assert entry["build_dependencies"] == [] and sets["EXTENSION_DEPENDS"] == ["NA"]
    assert entry["scm_url"].removesuffix(".git") == sets["EXTENSION_HOMEPAGE"][0]
    icon = sets["EXTENSION_ICONURL"][0]
    assert icon.endswith("/Resources/Icons/IMISSegment.png")
    repo_path = sets["EXTENSION_HOMEPAGE"][0].removeprefix("https://github.com/")
    assert repo_path in icon


def test_minimum_slicer_version_is_one_number_everywhere():
    """CMake refuses an older Slicer, the extension's description, the module's help and the effect say the same."""
    match = re.search(r'MINIMUM_SLICER_VERSION = "([0-9.]+)"',
                      (MODULE_DIR / "IMISSegmentSlicer" / "dependencies.py").read_text())
    assert match
    version = match.group(1)
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"find_package\(Slicer " + re.escape(version) + r" REQUIRED\)", top)
    assert f"Needs 3D Slicer {version} or later." in " ".join(_cmake_sets(top)["EXTENSION_DESCRIPTION"])
    assert "MINIMUM_SLICER_VERSION" in (MODULE_DIR / "IMISSegment.py").read_text()
    assert "_minimum_slicer_version()" in (MODULE_DIR / "SegmentEditorIMISLib" / "SegmentEditorEffect.py").read_text()


def test_icon_and_screenshot_urls_point_at_files_in_the_repository():
    sets = _cmake_sets((REPO / "CMakeLists.txt").read_text())
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in sets[key]:
            relative = url.split("/main/", 1)[1]
            assert (REPO / relative).is_file(), f"{key} names {relative}, which is not in the repository"
    # the screenshot shows the IMIS effect (made by Testing/slicer_qt_harness.py --screenshot)
    assert [url.rsplit("/", 1)[1] for url in sets["EXTENSION_SCREENSHOTURLS"]] == ["imis-effect.png"]


def test_the_extension_installs_the_onnx_bundle_without_torch_weights_and_it_runs(tmp_path):
    """The module CMake's resource filter, applied to the repository's files as CMake would: what is left of the
    default bundle loads and segments with onnxruntime; the torch engine says its weights are not installed."""
    import numpy as np

    import IMISSegmentLib as imis
    from IMISSegmentLib.engines.torch_engine import TorchClickEngine

    bundle_files = [p for p in (REPO / "Resources" / "models").rglob("*") if p.is_file()]
    installed = slicer_installed_model_files()
    assert not any(f.endswith(".pt") or "/training/" in f for f in installed)
    assert any(f.endswith("click_net.onnx") for f in installed) and len(installed) < len(bundle_files)
    for relative in installed:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / relative).read_bytes())
    bundle = tmp_path / "Resources" / "models" / "default"
    session = imis.InteractiveSession(imis.load_model(str(bundle)))
    volume = np.full((3, 64, 64), -100.0, np.float32)
    volume[:, 20:44, 20:44] = 300.0
    session.set_volume(volume, (3.0, 1.0, 1.0))
    assert session.add_click((1, 32, 32)).changed_voxels > 0
    with pytest.raises(imis.InputError, match="click_net.pt: the torch weights .* not installed"):
        TorchClickEngine(bundle)
