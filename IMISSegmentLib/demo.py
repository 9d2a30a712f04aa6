"""``imis-segment demo``: the whole path on the example CT that ships in Resources/Data, with the default model.

The simulated user prompts one structure (first a box or a click on its largest slice, then correction
clicks); Dice after each interaction is printed, for the slice (2D protocol) and, when the engine can
propagate, for the volume (3D protocol). The final 3D (or 2D) result is written as a .seg.nrrd and a
PNG overlay of the largest slice (mask filled, ground truth outlined, prompts marked).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .evaluation.protocol import run_2d, run_3d
from .evaluation.simulated_user import largest_slice
from .io import read_image, read_label, read_labelmap_names, write_segmentation
from .io.atomic import atomic_path, check_output_path, write_text
from .models import load_model
from .prompts import Box, Click
from .session import InteractiveSession
from .shipped import resources_dir


def example_case_dir() -> Path:
    return resources_dir() / "Data" / "ct_abdomen"


def _structure_value(names: dict, structure: str) -> int:
    wanted = structure.strip().lower().replace(" ", "_")
    for value, name in names.items():
        if name.lower() == wanted or str(value) == wanted:
            return value
    raise InputError(f"structure '{structure}' is not labelled in the example CT; choose one of: "
                     f"{', '.join(sorted(names.values()))}")


def _radiological_flips(direction) -> tuple[bool, bool]:
    """(flip rows, flip cols) that show an axial (k) slice as radiologists read it: anterior up, patient
    right on the left. ``direction`` is SimpleITK's row-major 3 x 3 (LPS; columns are the i, j, k axes)."""
    return direction[4] < 0, direction[0] < 0


def _overlay_png(path: Path, image2d, mask2d, truth2d, prompts, title: str, flips=(False, False)) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = image2d.shape
    view = (slice(None, None, -1 if flips[0] else 1), slice(None, None, -1 if flips[1] else 1))

    def place(r, c):
        return (cols - 1 - c if flips[1] else c), (rows - 1 - r if flips[0] else r)

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.imshow(image2d[view], cmap="gray")
    overlay = np.zeros(mask2d.shape + (4,))
    overlay[mask2d > 0] = (0.1, 0.6, 1.0, 0.45)
    axis.imshow(overlay[view])
    if truth2d.any():
        axis.contour(truth2d[view].astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
    for prompt in prompts:
        if isinstance(prompt, Click):
            x, y = place(*prompt.in_plane)
            axis.plot(x, y, "o", color="lime" if prompt.positive else "red", markersize=6, markeredgecolor="k")
        elif isinstance(prompt, Box):
            (x0, y0), (x1, y1) = place(*prompt.lo), place(*prompt.hi)
            axis.add_patch(plt.Rectangle((min(x0, x1) - 0.5, min(y0, y1) - 0.5), abs(x1 - x0) + 1, abs(y1 - y0) + 1,
                                         fill=False, color="orange"))
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=100)
    plt.close(figure)


def run_demo(out_dir, engine=None, structure: str = "spleen", clicks: int = 5, first: str = "box",
             case_dir=None, echo=print, fusion=None) -> dict:
    """Run the demo; returns {"engine", "structure", "dice_2d", "dice_3d", "segmentation", "overlay"}.
    ``fusion``: multi-round fusion in the 3D rounds (True / False; None: the model's default)."""
    from .normalize import normalize_intensity

    check_output_path(out_dir, folder=True)
    case_dir = Path(case_dir) if case_dir else example_case_dir()
    volume = read_image(case_dir / "image.nii.gz")
    labels = read_label(case_dir / "label.nii.gz", volume)
    value = _structure_value(read_labelmap_names(case_dir / "labels.json"), structure)
    reference = labels == value
    session = InteractiveSession(load_model(engine), fusion=fusion)
    session.set_volume(volume.array, volume.spacing)
    echo(f"engine {session.engine.name}; {structure} in {case_dir.name} {volume.shape}; first prompt: {first}"
         + ("" if not session.can_fuse else f"; multi-round fusion {'on' if session.fusion else 'off'}"))

    steps_2d, result = run_2d(session, reference, volume.spacing, first, max_interactions=clicks)
    echo("2D, largest slice: Dice after each interaction: " + " ".join(f"{s.dice:.3f}" for s in steps_2d))
    steps_3d = []
    if session.can_propagate and first in session.engine.capabilities:
        steps_3d, result = run_3d(session, reference, volume.spacing, first, rounds=clicks - 1)
        echo("3D, prompt + propagate per round: Dice: " + " ".join(f"{s.dice:.3f}" for s in steps_3d))

    out_dir = Path(out_dir)
    name = structure.strip().replace(" ", "_")
    segmentation = out_dir / f"demo-{name}.seg.nrrd"
    write_segmentation(segmentation, result.astype(np.uint8), volume, {1: structure})
    index = largest_slice(reference)
    overlay = out_dir / f"demo-{name}.png"
    shown = [p for p in session.prompts if getattr(p, "axis", 0) == 0 and p.slice_index == index]
    final = (steps_3d or steps_2d)[-1].dice
    _overlay_png(overlay, normalize_intensity(volume.array[index]), result[index], reference[index], shown,
                 f"{structure}, slice {index}: {session.engine.name}, Dice {final:.3f} "
                 f"({'3D' if steps_3d else '2D'}); yellow: ground truth", _radiological_flips(volume.direction))
    summary = {"engine": session.engine.name, "structure": structure, "first_prompt": first,
               "dice_2d": [s.dice for s in steps_2d], "dice_3d": [s.dice for s in steps_3d],
               "segmentation": str(segmentation), "overlay": str(overlay)}
    write_text(out_dir / "demo.json", json.dumps(summary, indent=1) + "\n")
    echo(f"wrote {segmentation} and {overlay}")
    return summary
