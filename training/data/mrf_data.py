"""The MRF data set: (image, previous mask, current mask) -> is the previous mask the better one?

Every pair is turned into the network's input by the inference code's own
:func:`IMISSegmentLib.fusion.quality.fusion_inputs` (ROI around the union of the two masks). The target is
1 when the previous mask has fewer wrong pixels than the current one (pixels that differ from the ground
truth, the quantity a per-slice choice can lower); the weight grows with the difference, up to 1 at a
difference of ``full_weight`` of the structure's size; ties are dropped.

Two sources:

* :class:`SyntheticPairSource`: a labelled slice (real volumes along any axis, or a phantom) cut to a
  jittered ROI canvas; two candidates from :mod:`training.data.defects` -- the ground truth lightly changed
  against a defective mask, two defective masks, a mask against nothing (missed), or a neighbouring
  slice's mask (a propagation running on past the structure's end, or lagging behind it);
* round pairs: :func:`collect_round_pairs` runs the simulated user's 3D protocol through
  :class:`IMISSegmentLib.session.InteractiveSession` (fusion off) on training volumes and keeps, for each
  round, every slice the round changed. ``python -m training.data.mrf_data --out runs/mrf_pairs.npz`` writes
  them (inputs quantised to uint8) with per-pair case, structure, axis and round.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.fusion.quality import CONTEXT_CAP, fusion_inputs, slice_context
from IMISSegmentLib.io.atomic import check_output_path
from IMISSegmentLib.prompts import plane_axes, slice_of

from training.data.defects import DefectConfig, corrupt_mask
from training.data.sequences import _jittered_roi

CANVAS = 128
#: the defects' amounts are LIM-Net's for a 480 px slice where a kidney spans ~100 px; on a ROI canvas the
#: structure spans about half the canvas, so the canvas counts as a 256 px slice
CANVAS_REFERENCE_PX = 256


def pixel_errors(mask: np.ndarray, truth: np.ndarray) -> int:
    return int(np.count_nonzero(np.asarray(mask, bool) != np.asarray(truth, bool)))


def pair_target(previous, current, truth, full_weight: float = 0.1):
    """(target, weight): target 1.0 when ``previous`` has fewer wrong pixels; weight 0 for a tie."""
    e_prev, e_cur = pixel_errors(previous, truth), pixel_errors(current, truth)
    size = max(16.0, 0.5 * (np.count_nonzero(truth) + 0.5 * (np.count_nonzero(previous) + np.count_nonzero(current))))
    weight = min(1.0, abs(e_prev - e_cur) / (full_weight * size))
    return float(e_prev < e_cur), float(weight)


def _light_change(mask, rng):
    """The ground truth as a good network gives it: unchanged, or 1 px off."""
    choice = rng.random()
    if choice < 0.4:
        return mask
    out = ndimage.binary_dilation(mask) if choice < 0.7 else ndimage.binary_erosion(mask)
    return out if out.any() else mask


class SyntheticPairSource:
    """Pairs from labelled slices: ``dataset`` a training.data.datasets.VolumeSliceDataset (or None) and
    ``phantoms`` a training.data.datasets.PhantomSource (or None), ``phantom_fraction`` of samples from the latter."""

    def __init__(self, dataset=None, phantoms=None, phantom_fraction: float = 0.3, size: int = 64,
                 defects: DefectConfig | None = None) -> None:
        if dataset is None and phantoms is None:
            raise ValueError("SyntheticPairSource needs real volumes, phantoms or both")
        self.dataset, self.phantoms = dataset, phantoms
        self.phantom_fraction = phantom_fraction if dataset is not None else 1.0
        self.size = int(size)
        self.defects = defects or DefectConfig(reference_px=CANVAS_REFERENCE_PX)

    def _real_canvas(self, rng):
        data = self.dataset
        entry = data.entries[int(rng.integers(len(data.entries)))]
        image, label = data.images[entry.case], data.labels[entry.case] == entry.value
        rows, cols = plane_axes(entry.axis)
        spacing = (data.spacings[entry.case][rows], data.spacings[entry.case][cols])
        truth = slice_of(label, entry.axis, entry.index)
        roi = _jittered_roi(truth, spacing, rng)
        neighbour = None
        offset = int(rng.choice([-4, -3, -2, -1, 1, 2, 3, 4]))
        other = entry.index + offset
        if 0 <= other < label.shape[entry.axis]:
            neighbour = roi.crop(slice_of(label, entry.axis, other).astype(np.float32), CANVAS) > 0.5
        side_mm = roi.rows * spacing[0]
        return (roi.crop(slice_of(image, entry.axis, entry.index), CANVAS), roi.crop(truth.astype(np.float32), CANVAS) > 0.5,
                neighbour, side_mm / CANVAS)

    def _phantom_canvas(self, rng):
        sample = self.phantoms.sample(rng)
        image, truth = sample["image"][0], sample["label"][0] > 0.5
        roi = _jittered_roi(truth, (1.0, 1.0), rng)
        return (roi.crop(image, CANVAS), roi.crop(truth.astype(np.float32), CANVAS) > 0.5, None, roi.rows / CANVAS)

    def _candidates(self, truth, neighbour, rng):
        corrupt = lambda: corrupt_mask(truth, rng, self.defects)  # noqa: E731
        mode = rng.random()
        if neighbour is not None and mode < 0.2:
            a, b = neighbour, (corrupt() if rng.random() < 0.5 else _light_change(truth, rng))
        elif mode < 0.5:
            a, b = _light_change(truth, rng), corrupt()
        elif mode < 0.9:
            a, b = corrupt(), corrupt()
        else:
            a, b = np.zeros_like(truth), corrupt()
        return (a, b) if rng.random() < 0.5 else (b, a)

    def sample(self, rng, tries: int = 20) -> dict:
        for _ in range(tries):
            use_phantom = self.phantoms is not None and rng.random() < self.phantom_fraction
            image, truth, neighbour, mm_per_px = (self._phantom_canvas if use_phantom else self._real_canvas)(rng)
            if truth.sum() < 8:
                continue
            previous, current = self._candidates(truth, neighbour, rng)
            if not (previous.any() or current.any()) or np.array_equal(previous, current):
                continue
            target, weight = pair_target(previous, current, truth)
            if weight <= 0:
                continue
            inputs = fusion_inputs(np.clip(image, 0, 1), previous, current, (mm_per_px, mm_per_px), self.size)
            # no rounds here: distances to prompted slices drawn at random
            context = rng.uniform(0.0, CONTEXT_CAP, 2).astype(np.float32)
            return {"inputs": inputs, "context": context, "target": target, "weight": weight}
        raise RuntimeError("could not draw a synthetic MRF pair (structures too small?)")

    def batch(self, rng, size: int) -> dict:
        samples = [self.sample(rng) for _ in range(size)]
        return {"inputs": np.stack([s["inputs"] for s in samples]).astype(np.float32),
                "context": np.stack([s["context"] for s in samples]).astype(np.float32),
                "target": np.array([s["target"] for s in samples], np.float32),
                "weight": np.array([s["weight"] for s in samples], np.float32)}


# -- round pairs from the session ---------------------------------------------------------------------
def round_pairs(session, reference: np.ndarray, spacing, prompt: str, axis: int, rounds: int, size: int) -> list:
    """Run the 3D protocol (``run_3d``; fusion off) along ``axis``; one pair per slice each correction round
    changed (the user's slices excepted)."""
    from IMISSegmentLib.evaluation.protocol import run_3d
    from IMISSegmentLib.normalize import apply_window

    rows, cols = plane_axes(axis)
    plane_spacing = (spacing[rows], spacing[cols])
    volume = session.engine.volume
    pairs, round_numbers = [], itertools.count(1)

    def collect(click, previous, _answer, current):
        round_number = next(round_numbers)
        prompted = {index for (a, index) in session.propagation_request().prompted if a == axis}
        new = {int(click.point[axis])}
        for index in range(reference.shape[axis]):
            old, changed = slice_of(previous, axis, index) > 0, slice_of(current, axis, index) > 0
            if index in prompted or np.array_equal(old, changed):
                continue
            truth = slice_of(reference, axis, index)
            target, weight = pair_target(old, changed, truth)
            image = apply_window(slice_of(volume.array, axis, index), volume.window)
            pairs.append({"inputs": fusion_inputs(image, old, changed, plane_spacing, size), "target": target,
                          "context": slice_context(index, new, prompted - new, spacing[axis]),
                          "weight": weight, "round": round_number, "index": index,
                          "errors": (pixel_errors(old, truth), pixel_errors(changed, truth))})

    run_3d(session, reference, spacing, prompt, rounds, axis=axis, on_round=collect)
    return pairs


def collect_round_pairs(roots, exclude=(), axes=(0, 1, 2), prompts=("box", "click"), rounds: int = 6,
                        size: int = 64, min_voxels: int = 50, engine=None, log=print, include=None) -> dict:
    """Round pairs over every structure of the cases under ``roots`` (arrays ready for ``np.savez``); the
    split's validation and reported cases are never read; ``include`` (names or ``SET/CASE`` keys): only those."""
    from IMISSegmentLib.models import load_model
    from IMISSegmentLib.session import InteractiveSession

    from training.data.datasets import _read_cases

    session = InteractiveSession(engine or load_model(None), fusion=False)
    records, meta = [], []
    for root in ([roots] if isinstance(roots, (str, Path)) else roots):
        for case, array, spacing, label in _read_cases(root, include, tuple(exclude)):
            session.set_volume(array, spacing)
            for value, name in sorted(case.names.items()):
                reference = label == int(value)
                if np.count_nonzero(reference) < min_voxels:
                    continue
                for axis in axes:
                    for prompt in prompts:
                        started = time.perf_counter()
                        pairs = round_pairs(session, reference, spacing, prompt, int(axis), rounds, size)
                        for pair in pairs:
                            records.append(pair)
                            meta.append({"case": case.name, "structure": name, "axis": int(axis), "prompt": prompt,
                                         "round": pair["round"], "index": pair["index"]})
                        log(f"{case.name} / {name} / axis {axis} / {prompt}: {len(pairs)} pairs "
                            f"({time.perf_counter() - started:.1f} s)")
    if not records:
        raise ValueError(f"no round pairs under {roots}")
    return {"inputs": np.round(np.stack([r["inputs"] for r in records]) * 255).astype(np.uint8),
            "context": np.stack([r["context"] for r in records]).astype(np.float32),
            "target": np.array([r["target"] for r in records], np.float32),
            "weight": np.array([r["weight"] for r in records], np.float32),
            "errors": np.array([r["errors"] for r in records], np.int64),
            "meta": json.dumps(meta)}


PAIR_ARRAYS = ("inputs", "context", "target", "weight", "errors")


def load_round_pairs(paths) -> dict:
    """The arrays :func:`collect_round_pairs` wrote (one file or several, concatenated), meta parsed;
    inputs stay uint8 (0..255)."""
    parts = []
    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        with np.load(path, allow_pickle=False) as data:
            parts.append({**{k: data[k] for k in PAIR_ARRAYS}, "meta": json.loads(str(data["meta"]))})
    if not parts:
        raise ValueError("no round-pair files given")
    out = {k: np.concatenate([p[k] for p in parts]) for k in PAIR_ARRAYS}
    out["meta"] = [m for p in parts for m in p["meta"]]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.mrf_data",
                                     description="Collect MRF round pairs by running the simulated user through the session")
    parser.add_argument("--roots", nargs="+", default=["../shared/data", "runs/data"], help="data folders")
    parser.add_argument("--exclude", nargs="*", default=["ct_abdomen_multiorgan", "phantom_prostate"],
                        help="cases to leave out (held-out evaluation data)")
    parser.add_argument("--include", nargs="*", default=None,
                        help="only these cases (names or SET/CASE keys; the split's held-out cases stay out)")
    parser.add_argument("--prompts", nargs="+", default=["box", "click"], choices=["box", "click"],
                        help="first prompts of the protocol (default: both)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--axes", nargs="+", type=int, default=[0, 1, 2], choices=[0, 1, 2],
                        help="propagation axes to run the protocol along (default: all three)")
    parser.add_argument("--size", type=int, default=64, help="the MRF network's input size")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        missing = [r for r in args.roots if not Path(r).exists()]
        if missing:
            raise InputError(f"--roots: no such folder or file: {', '.join(missing)} (runs/data is written by "
                             f"python -m training.data.prepare_data)")
        check_output_path(out)   # before the collection, which takes minutes
        arrays = collect_round_pairs(args.roots, args.exclude, axes=args.axes, prompts=tuple(args.prompts),
                                     rounds=args.rounds, size=args.size, include=args.include)
    except (OSError, ValueError) as error:
        print(f"training.data.mrf_data: error: {error}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(out)
    print(f"{len(arrays['target'])} round pairs -> {out} (previous better in {arrays['target'].mean():.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
