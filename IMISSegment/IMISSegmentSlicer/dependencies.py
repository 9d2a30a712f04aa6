"""Python packages IMISSegment needs inside Slicer, installed on first use with the user's consent, and the
oldest Slicer it runs in.

Never called at import time: the effect and the module call :func:`ensure_dependencies` when the user
first activates them. ``slicer.packaging.pip_ensure`` is used where the Slicer version has it (it asks
the user itself); otherwise the user is asked here and ``slicer.util.pip_install`` installs. This file imports
only the standard library at the top (``slicer`` and IMISSegmentLib inside its functions), so that it loads in a
Slicer that has none of those packages yet.
"""
from __future__ import annotations

import importlib.util
import shutil

# The oldest 3D Slicer IMIS runs in: 5.10 brought vtkSlicerSegmentEditorLogic (the Segment Editor's masking, overwrite
# and undo as a logic class), through which every IMIS write goes. The extension's CMakeLists.txt asks for it too.
MINIMUM_SLICER_VERSION = "5.10"

# import name -> pip requirement; what IMISSegmentLib needs beyond what Slicer bundles (numpy, SimpleITK, vtk)
CORE_REQUIREMENTS = {"scipy": "scipy>=1.10", "slicerio": "slicerio>=1.1"}
ONNX_CPU, ONNX_GPU = "onnxruntime>=1.17", "onnxruntime-gpu>=1.17"


def unsupported_slicer_reason():
    """None where this Slicer (or slicer-core) has what IMIS needs; otherwise the message to show the user."""
    import slicer
    if hasattr(slicer, "vtkSlicerSegmentEditorLogic"):
        return None
    version = getattr(getattr(slicer, "app", None), "applicationVersion", None)
    return (f"IMIS needs 3D Slicer {MINIMUM_SLICER_VERSION} or later" + (f" (this is {version})" if version else "")
            + f": it edits segments through the Segment Editor logic (vtkSlicerSegmentEditorLogic) that Slicer "
            f"{MINIMUM_SLICER_VERSION} introduced. Install the current 3D Slicer from https://download.slicer.org.")


def gpu_available() -> bool:
    """An NVIDIA driver is installed (nvidia-smi on PATH); onnxruntime-gpu can then be offered."""
    return shutil.which("nvidia-smi") is not None


def default_model_needs_onnx() -> bool:
    """True when an ONNX model bundle is installed (the shipped default is one; without it the fallback engine,
    Grow from Seeds, needs no onnxruntime)."""
    from IMISSegmentLib.models import BUNDLE_INFO, default_bundle_dir
    return (default_bundle_dir() / BUNDLE_INFO).is_file()


def missing_requirements(use_gpu: bool = False, need_onnx: bool | None = None) -> list:
    """Pip requirements not importable yet."""
    missing = [req for name, req in CORE_REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
    if need_onnx is None:
        need_onnx = default_model_needs_onnx()
    if need_onnx and importlib.util.find_spec("onnxruntime") is None:
        missing.append(ONNX_GPU if use_gpu else ONNX_CPU)
    return missing


def ensure_dependencies(requester: str = "IMISSegment") -> bool:
    """Install what is missing, after asking the user; False if they declined (nothing installed)."""
    import slicer
    need_onnx = default_model_needs_onnx()
    use_gpu = False
    if need_onnx and importlib.util.find_spec("onnxruntime") is None and gpu_available():
        use_gpu = slicer.util.confirmYesNoDisplay(
            "An NVIDIA GPU was found. Install the GPU build of ONNX Runtime (onnxruntime-gpu, needs a matching "
            "CUDA runtime)? Choose No for the CPU build, which works everywhere.", windowTitle=requester)
    missing = missing_requirements(use_gpu, need_onnx)
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(missing, requester=requester)
        except RuntimeError:      # the user declined
            return False
        return True
    if not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages: {', '.join(missing)}.\n"
            "Install them now? This downloads from the Python Package Index and may take a few minutes.",
            windowTitle=requester):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    return True
