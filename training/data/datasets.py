"""Training samples: one structure on one slice, at network resolution.

Sources:

* :class:`VolumeSliceDataset`: labelled volumes in any layout :func:`IMISSegmentLib.evaluation.datasets.discover_cases`
  understands (../shared/data case folders, MSD / nnU-Net raw ``imagesTr/`` + ``labelsTr/`` with the label names
  of its ``dataset.json``, or a folder holding several of these, as ../shared/data itself), read with
  ``IMISSegmentLib.io`` and normalised per volume with ``IMISSegmentLib.normalize`` (exactly as a session
  normalises at inference); slices are taken along every axis (``axes``), one entry per (case, axis, slice,
  label value) whose area on that slice is at least ``min_area`` pixels;
* :class:`PhantomSource`: endless synthetic slices (training/data/phantoms.py).

Every sample is a dict of numpy arrays at network resolution, made by the engine's own geometry
(:class:`IMISSegmentLib.networks.geometry.SliceGeometry`: longest side -> 256 keeping the physical aspect,
pad bottom / right):
``image`` (1, S, S) float32 0..1, ``label`` (1, S, S) float32 {0, 1}, ``valid`` (1, S, S) float32 (1 on the
slice, 0 on the padding), ``prior`` (1, S, S) float32 {0, 1} (a mask the slice got from elsewhere, all zero
when none) and ``has_prior`` (a bool), plus ``source`` text.

Propagated priors (:meth:`VolumeSliceDataset.sample_propagated`): in a session, a correction on a slice that
propagation filled feeds the propagated mask to the network as its previous mask, and that mask is often
wrong in ways the network's own answers never are: the structure's outline from a slice a few millimetres
away, or a structure that has already ended on this slice (the target is empty). Such samples take the
structure's mask on a slice ``offset_mm`` away as the prior and this slice's mask (possibly empty) as the
label.

Held-out cases: every reader here (:func:`_read_cases`, so also ``pack_data`` and the MRF round pairs) leaves out
the cases that the split file (default ``training/splits/validation.json``, :mod:`training.data.splits`) holds
for validation or reports on its own (``ct_abdomen_multiorgan``), unless asked: by naming them in ``include``
(a trainer's validation set), or with ``held_out="include"`` (no split applied) or ``held_out="only"`` (only
the split's validation cases). Cases are matched by name or by their split key ``SET/CASE``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.evaluation.datasets import Case, discover_cases
from IMISSegmentLib.evaluation.splits import HELD_OUT, load_split
from IMISSegmentLib.io import read_image, read_label
from IMISSegmentLib.networks.geometry import SliceGeometry
from IMISSegmentLib.normalize import apply_window, intensity_window, normalize_intensity
from IMISSegmentLib.prompts import plane_axes, slice_of

from training.data.defects import corrupt_mask
from training.data.phantoms import make_phantom
from training.data.splits import SAME_PATIENT, SPLIT_FILE

HELD_OUT_MODES = ("skip", "include", "only")
#: how real slices are drawn: uniformly over all (case, axis, slice, structure) entries, every set equally
#: likely, or every set and, within it, every structure name equally likely
BALANCE = ("none", "set", "structure")


def cut_window(window, arrays, source: str):
    """(``arrays`` cut to ``window`` (row0, col0, row1, col1; None: uncut), ``source`` naming the cut)."""
    if window is None:
        return tuple(arrays), source
    r0, c0, r1, c1 = window
    return tuple(a[r0:r1, c0:c1] for a in arrays), f"{source}/zoom{r0},{c0},{r1},{c1}"


def valid_map(geometry: SliceGeometry, size: int) -> np.ndarray:
    """(size, size) float32: 1 where the slice lies on the network canvas, 0 on its padding."""
    valid = np.zeros((size, size), np.float32)
    valid[:geometry.inner_shape[0], :geometry.inner_shape[1]] = 1.0
    return valid


def make_sample(image2d: np.ndarray, mask2d: np.ndarray, size: int = 256, source: str = "", spacing=None,
                union2d: np.ndarray | None = None, prior2d: np.ndarray | None = None,
                percentile: bool = False) -> dict:
    """A sample dict from a normalised slice (0..1) and a binary mask in the slice's own grid; ``spacing``
    (mm per row, per col) keeps the physical aspect, as the engines do. ``union2d`` (text training: every
    structure of the same category on the slice) becomes ``union``; ``prior2d`` (a propagated mask, same
    grid) becomes ``prior``. ``percentile``: the volume was normalised by its percentiles (not a Hounsfield
    window), so a bundle's ``input_gamma`` applies to it as the engine applies it (training loops'
    ``input_gamma``)."""
    geometry = SliceGeometry(tuple(image2d.shape), size, spacing)
    inner = geometry.inner_shape
    valid = valid_map(geometry, size)
    label = (geometry.mask_to_network(mask2d) > 0.5).astype(np.float32)
    if not label.any():   # a structure thinner than a network pixel: keep its nearest pixels
        rows, cols = np.nonzero(mask2d)
        scale = inner[0] / image2d.shape[0], inner[1] / image2d.shape[1]
        label[np.minimum((rows * scale[0]).astype(int), inner[0] - 1),
              np.minimum((cols * scale[1]).astype(int), inner[1] - 1)] = 1.0
    prior = np.zeros((size, size), np.float32)
    if prior2d is not None:
        prior = (geometry.mask_to_network(prior2d) > 0.5).astype(np.float32)
    sample = {"image": geometry.to_network(image2d)[None], "label": label[None], "valid": valid[None],
              "prior": prior[None], "has_prior": bool(prior.any()), "source": source,
              "percentile": bool(percentile)}
    if union2d is not None:
        sample["union"] = np.maximum(label, geometry.mask_to_network(union2d) > 0.5).astype(np.float32)[None]
    return sample


def augment(sample: dict, rng) -> dict:
    """Random flips and transposition (applied to image, label and valid alike) and a random gamma."""
    keys = [k for k in ("image", "label", "valid", "union", "prior") if k in sample]
    out = dict(sample)
    if rng.random() < 0.5:
        for k in keys:
            out[k] = out[k][:, ::-1, :]
    if rng.random() < 0.5:
        for k in keys:
            out[k] = out[k][:, :, ::-1]
    if rng.random() < 0.25:
        for k in keys:
            out[k] = out[k].transpose(0, 2, 1)
    if rng.random() < 0.5:
        out["image"] = np.clip(out["image"], 0, 1) ** np.float32(np.exp(rng.uniform(-0.4, 0.4)))
    for k in keys:
        out[k] = np.ascontiguousarray(out[k], dtype=np.float32)
    return out


def case_filter(include=None, exclude=(), split=SPLIT_FILE, held_out: str = "skip"):
    """``wanted(case) -> bool``: the case passes ``include`` / ``exclude`` (names or ``SET/CASE`` keys) and the
    split's held-out rule (``held_out``: "skip" leaves out the split's validation and reported cases unless
    ``include`` names them, "include" applies no split, "only" keeps only the split's validation cases;
    ``split`` None: no split)."""
    if held_out not in HELD_OUT_MODES:
        raise ValueError(f"held_out must be one of {', '.join(HELD_OUT_MODES)}, got {held_out!r}")
    roles = load_split(split).roles if split is not None and held_out != "include" else {}
    if held_out == "only" and split is None:
        raise ValueError("held_out='only' needs a split file")
    include, exclude = (set(include) if include else None), set(exclude or ())

    def wanted(case) -> bool:
        names = {case.name, case.key}
        if names & exclude or (include is not None and not names & include):
            return False
        role = roles.get(case.key, roles.get(SAME_PATIENT.get(case.key, "")))
        if held_out == "only":
            return role == "validation"
        return role not in HELD_OUT or bool(include and names & include)
    return wanted


def _read_cases(root, include=None, exclude=(), split=SPLIT_FILE, held_out: str = "skip"):
    """(case, image array, spacing (sk, sj, si), label array) for each case under ``root`` that passes
    :func:`case_filter` (``include`` / ``exclude`` by name or ``SET/CASE`` key; the split's held-out cases left
    out unless asked): a data folder (:func:`discover_cases`, read with ``IMISSegmentLib.io``) or a ``.npz`` file
    written by ``python -m training.data.pack_data`` (the same arrays, for machines without SimpleITK)."""
    wanted = case_filter(include, exclude, split, held_out)
    if str(root).endswith(".npz"):
        with np.load(root, allow_pickle=False) as packed:
            for number, meta in enumerate(json.loads(str(packed["cases"]))):
                case = Case(meta["name"], Path(root), Path(root), {int(k): v for k, v in meta["names"].items()},
                            dataset=meta.get("dataset", ""))
                if wanted(case):
                    yield (case, packed[f"image_{number}"], tuple(packed[f"spacing_{number}"]),
                           packed[f"label_{number}"])
        return
    for case in discover_cases(root):
        if wanted(case):
            volume = read_image(case.image)
            yield case, volume.array, volume.spacing, read_label(case.label, volume)


def checked_weights(weights, balance: str) -> dict:
    """``structure_weights`` as {name: float}: each a finite number > 0, and only with balance "structure"."""
    if weights is not None and not isinstance(weights, Mapping):
        raise ValueError(f"structure_weights must be a mapping of structure names to weights, got {weights!r}")
    weights = dict(weights or {})
    if weights and balance != "structure":
        raise ValueError(f"structure_weights need balance \"structure\", got balance {balance!r}")
    for name, weight in weights.items():
        try:
            ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight) and weight > 0
        except OverflowError:
            ok = False
        if not ok:
            raise ValueError(f"structure_weights[{name!r}] must be a number > 0, got {weight!r}")
    return {str(name): float(weight) for name, weight in weights.items()}


@dataclass(frozen=True)
class SliceEntry:
    case: int
    axis: int
    index: int
    value: int
    area: int


class VolumeSliceDataset:
    """Every (case, axis, slice, structure) of labelled volumes under ``roots``, held in memory.

    ``include`` / ``exclude``: case names or ``SET/CASE`` keys; the split file's held-out cases (validation and
    reported) are left out unless ``include`` names them or ``held_out`` says otherwise (:func:`case_filter`)."""

    def __init__(self, roots, axes=(0, 1, 2), min_area: int = 16, size: int = 256, include=None, exclude=(),
                 split=SPLIT_FILE, held_out: str = "skip", balance: str = "none", zoom=None,
                 structure_weights=None) -> None:
        if balance not in BALANCE:
            raise ValueError(f"balance must be one of {', '.join(BALANCE)}, got {balance!r}")
        self.size, self.balance = int(size), balance
        self.structure_weights = checked_weights(structure_weights, balance)
        self.zoom = zoom   # training/data/zoom_crops.py ZoomCrops: sample() cuts a share of slices to a window
        self.cases, self.images, self.labels, self.spacings, self.entries = [], [], [], [], []
        self.kinds = []   # each case's window kind ("ct" or "percentile", IMISSegmentLib.normalize)
        for root in ([roots] if isinstance(roots, (str, Path)) else roots):
            for case, array, spacing, label in _read_cases(root, include, exclude, split, held_out):
                number = len(self.cases)
                self.cases.append(case)
                window = intensity_window(array)
                self.kinds.append(window[2])
                self.images.append(apply_window(array, window))
                self.spacings.append(tuple(float(s) for s in spacing))
                self.labels.append(label)
                for axis in axes:
                    self.entries.extend(self._index(number, label, int(axis), int(min_area)))
        if not self.cases:
            rule = {"skip": "the split's validation and reported cases are left out unless named in include",
                    "only": "only the split's validation cases are read", "include": "no split applied"}[held_out]
            raise InputError(f"no cases to read under {roots} (include {sorted(include) if include else 'all'}, "
                             f"exclude {sorted(exclude or ())}; {rule})")
        if not self.entries:
            raise InputError(f"no labelled slices with at least {min_area} pixels under {roots}")
        self._groups, self._weights = self._balance_groups() if balance != "none" else (None, None)

    def _group_of(self, entry) -> tuple:
        """(set, structure) of an entry: the nnU-Net set, or "case folders" for the small case folders."""
        case = self.cases[entry.case]
        structure = case.names.get(entry.value, str(entry.value)) if self.balance == "structure" else ""
        return (case.dataset or "case folders", structure)

    def _balance_groups(self) -> tuple:
        """(entry indices per group, the groups' probabilities): a group is a set (and a structure name within
        it, for "structure"); every set is equally likely, and within a set every structure, or in proportion to
        ``structure_weights`` (name -> weight, 1 for the others): a weight moves draws between the structures of
        a set, never between sets. A weight for a structure no read set has is an InputError."""
        members = {}
        for number, entry in enumerate(self.entries):
            members.setdefault(self._group_of(entry), []).append(number)
        unknown = sorted(set(self.structure_weights) - {key[1] for key in members})
        if unknown:
            raise InputError(f"structure_weights names {', '.join(unknown)}, which no read set has")
        per_set = Counter(key[0] for key in members)
        share = {key: self.structure_weights.get(key[1], 1.0) for key in members}
        set_total = Counter()
        for key, weight in share.items():
            set_total[key[0]] += weight
        weights = np.array([1.0 / len(per_set) * share[key] / set_total[key[0]] for key in members])
        return [np.asarray(indices) for indices in members.values()], weights / weights.sum()

    def draw(self, rng) -> int:
        """An entry index: uniform over entries (balance "none"), else a group by its weight, then uniform in it."""
        if self._groups is None:
            return int(rng.integers(len(self.entries)))
        indices = self._groups[int(rng.choice(len(self._groups), p=self._weights))]
        return int(indices[int(rng.integers(len(indices)))])

    @staticmethod
    def _index(number: int, label: np.ndarray, axis: int, min_area: int) -> list:
        entries = []
        moved = np.moveaxis(label, axis, 0)
        for index in range(moved.shape[0]):
            counts = np.bincount(moved[index].ravel())
            for value in np.flatnonzero(counts[1:] >= min_area) + 1:
                entries.append(SliceEntry(number, axis, index, int(value), int(counts[value])))
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: int) -> dict:
        return self._sample_of(self.entries[item])

    def _sample_of(self, entry, rng=None) -> dict:
        """The entry's sample: the whole slice, or (with ``rng`` and ``zoom``) maybe a window around the structure."""
        case = self.cases[entry.case]
        image = slice_of(self.images[entry.case], entry.axis, entry.index)
        mask = slice_of(self.labels[entry.case], entry.axis, entry.index) == entry.value
        name = case.names.get(entry.value, str(entry.value))
        spacing = self.plane_spacing(entry.case, entry.axis)
        source = f"{case.name}/axis{entry.axis}/{entry.index}/{name}"
        window = self.zoom.window(mask, spacing, rng) if self.zoom is not None and rng is not None else None
        (image, mask), source = cut_window(window, (image, mask), source)
        return make_sample(image, mask, self.size, source, spacing, percentile=self.kinds[entry.case] == "percentile")

    def sample(self, rng) -> dict:
        return self._sample_of(self.entries[self.draw(rng)], rng)

    def sample_propagated(self, rng, offset_mm=(2.0, 20.0)) -> dict:
        """A sample whose ``prior`` is the structure's mask on a slice ``offset_mm`` (uniform in the range, at
        least one slice) before or after this one along the same axis, and whose label is the structure on
        this slice, empty where it has ended (see the module docstring)."""
        entry = self.entries[self.draw(rng)]
        case = entry.case
        depth = self.labels[case].shape[entry.axis]
        step = max(1, int(round(rng.uniform(*offset_mm) / self.spacings[case][entry.axis])))
        sign = 1 if rng.random() < 0.5 else -1
        index = entry.index + sign * step
        if not 0 <= index < depth:   # past the volume's end: the other way
            index = entry.index - sign * step
        index = int(np.clip(index, 0, depth - 1))
        image = slice_of(self.images[case], entry.axis, index)
        mask = slice_of(self.labels[case], entry.axis, index) == entry.value
        prior = slice_of(self.labels[case], entry.axis, entry.index) == entry.value
        spacing = self.plane_spacing(entry.case, entry.axis)
        name = self.cases[case].names.get(entry.value, str(entry.value))
        return self._prior_sample(image, mask, prior, spacing, rng,
                                  f"{self.cases[case].name}/axis{entry.axis}/{index}/{name}/prior{entry.index}",
                                  self.kinds[case] == "percentile")

    def sample_defective(self, rng, defects=None) -> dict:
        """A sample whose ``prior`` is this slice's own mask spoilt by the defective-mask generator
        (:mod:`training.data.defects`, LIM-Net's corruptions): a previous mask that is right in most places and wrong
        in a few, so a correction learns to fix what the click points at and keep the rest."""
        entry = self.entries[self.draw(rng)]
        case = entry.case
        image = slice_of(self.images[case], entry.axis, entry.index)
        mask = slice_of(self.labels[case], entry.axis, entry.index) == entry.value
        spacing = self.plane_spacing(entry.case, entry.axis)
        name = self.cases[case].names.get(entry.value, str(entry.value))
        return self._prior_sample(image, mask, corrupt_mask(mask, rng, defects), spacing, rng,
                                  f"{self.cases[case].name}/axis{entry.axis}/{entry.index}/{name}/defective",
                                  self.kinds[case] == "percentile")

    def plane_spacing(self, case: int, axis: int) -> tuple:
        """(mm per row, mm per col) of case number ``case``'s slices normal to ``axis``."""
        rows, cols = plane_axes(axis)
        return self.spacings[case][rows], self.spacings[case][cols]

    def _prior_sample(self, image, mask, prior, spacing, rng, source: str, percentile: bool = False) -> dict:
        """A sample with a previous mask, maybe cut (``zoom.priors``) to a window around the previous mask and the
        structure together. The inference zoom-in frames a correction by the previous mask and the clicks, not the
        true structure; the window here holds both so that the label is never cut, which makes it at most as
        tight as the inference one (its expansion range covers the difference)."""
        window = self.zoom.window(mask | prior, spacing, rng) if self.zoom is not None and self.zoom.priors else None
        (image, mask, prior), source = cut_window(window, (image, mask, prior), source)
        return make_sample(image, mask, self.size, source, spacing, prior2d=prior, percentile=percentile)


class PhantomSource:
    """Endless synthetic samples: one structure (of area >= ``min_area``) of a fresh phantom each time."""

    def __init__(self, size: int = 256, min_area: int = 16) -> None:
        self.size, self.min_area = int(size), int(min_area)

    def sample(self, rng) -> dict:
        while True:
            phantom = make_phantom(self.size, rng)
            counts = np.bincount(phantom.label.ravel(), minlength=len(phantom.names) + 1)
            values = np.flatnonzero(counts[1:] >= self.min_area) + 1
            if values.size:
                break
        value = int(rng.choice(values))
        image = normalize_intensity(phantom.image)
        return make_sample(image, phantom.label == value, self.size,
                           f"phantom/{phantom.modality}/{phantom.names[value]}")


class MixedSource:
    """Draws from the real-volume dataset (if any) or the phantoms with probability ``phantom_fraction``; of
    the real samples, ``propagated_fraction`` have a prior: of those, ``defective_fraction`` a defective copy of
    the slice's own mask (:meth:`VolumeSliceDataset.sample_defective`, ``defects`` a DefectConfig or None for
    the defaults), the rest a neighbouring slice's mask (:meth:`VolumeSliceDataset.sample_propagated`,
    ``offset_mm`` range)."""

    def __init__(self, real=None, phantoms=None, phantom_fraction: float = 0.5, augment_samples: bool = True,
                 keys=("image", "label", "valid", "prior", "has_prior", "percentile"),
                 propagated_fraction: float = 0.0,
                 offset_mm=(2.0, 20.0), defective_fraction: float = 0.0, defects=None) -> None:
        if real is None and phantoms is None:
            raise ValueError("MixedSource needs real volumes, phantoms or both")
        for name, value in (("propagated_fraction", propagated_fraction), ("defective_fraction", defective_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {value!r}")
        self.real, self.phantoms = real, phantoms
        self.phantom_fraction = 1.0 if real is None else (0.0 if phantoms is None else float(phantom_fraction))
        self.augment_samples = augment_samples
        self.keys = tuple(keys)   # the arrays a batch stacks
        self.propagated_fraction, self.offset_mm = float(propagated_fraction), tuple(offset_mm)
        self.defective_fraction, self.defects = float(defective_fraction), defects

    def sample(self, rng) -> dict:
        if rng.random() < self.phantom_fraction:
            sample = self.phantoms.sample(rng)
        elif self.propagated_fraction and rng.random() < self.propagated_fraction:
            if self.defective_fraction and rng.random() < self.defective_fraction:
                sample = self.real.sample_defective(rng, self.defects)
            else:
                sample = self.real.sample_propagated(rng, self.offset_mm)
        else:
            sample = self.real.sample(rng)
        return augment(sample, rng) if self.augment_samples else sample

    def batch(self, rng, size: int) -> dict:
        samples = [self.sample(rng) for _ in range(size)]
        out = {k: np.stack([s[k] for s in samples]) for k in self.keys if k in samples[0]}
        out["source"] = [s["source"] for s in samples]
        return out
