"""Where the shipped files are: the model bundles (``Resources/models``) and the example CT (``Resources/Data``).

A checkout and the Slicer extension keep ``Resources/`` beside the ``IMISSegmentLib`` package; a wheel
(``pip install .``, not editable) carries the same files inside it, as ``IMISSegmentLib/Resources``
(pyproject.toml's package data: the bundles' ONNX stages and JSON, not their torch weights or training
records, as the Slicer extension installs them).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The ``Resources`` folder: inside the package when installed from a wheel, else beside it."""
    inside = _PACKAGE / "Resources"
    return inside if inside.is_dir() else _PACKAGE.parent / "Resources"
