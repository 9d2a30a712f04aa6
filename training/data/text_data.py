"""Training samples for the text prompt: one named structure on one slice, with its category code.

:class:`TextSliceDataset` reads labelled volumes (the layouts :mod:`training.data.datasets` reads) and keeps the
structures whose label name the vocabulary resolves (``labels.json`` names: TotalSegmentator's, the
slicerio chest segments', "lesion", "brain tumor"). Each sample carries

* ``label``: the structure (the target of text + click / box: the click picks one structure),
* ``union``: every structure of the same category (and side) on the slice (the target of text alone),
* ``text``: (category id, side id) as the network takes it.

Label maps that hold many separate structures under one name (the chest CT's "ribs") are split on each slice
into their connected components (``split``; in 3D the ribs of a 10 mm-slice scan touch and would stay one
structure), so that "rib" + a click means the rib cross-section clicked, as TotalSegmentator's per-rib
names do. :class:`PhantomTextSource` adds the synthetic phantoms' named
classes (lesion, vessel, vertebra, rib, body, organ). Sampling is balanced over categories.

Sides are not trained by default (``sides=False``: "left lung" and "right lung" both train "lung"): the
augmentation flips slices, which makes left and right unlearnable from position, and one chest CT is too
little to learn them from anatomy. The vocabulary then marks no category ``trained_sides`` and the network
gets side 0 for every name; with a click, the click says which side. ``sides`` may instead name the categories
whose sides are trained: those whose two sides differ in shape, not only in position (``["heart ventricle"]``:
the left ventricle's round blood pool inside the myocardium against the right's crescent).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from IMISSegmentLib.engines.named_parts import INSTANCE_CATEGORIES
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.normalize import normalize_intensity
from IMISSegmentLib.prompts import slice_of
from IMISSegmentLib.text import Vocabulary

from training.data.datasets import VolumeSliceDataset, make_sample
from training.data.phantoms import make_phantom

SPLIT_CATEGORIES = INSTANCE_CATEGORIES   # the engine confirms these parts one by one (engines/named_parts.py)
PHANTOM_KINDS = ("lesion", "vessel", "vertebra", "rib", "body", "organ")
MIN_COMPONENT_PIXELS = 6


def _all_sides(vocabulary: Vocabulary) -> Vocabulary:
    """The vocabulary with every category's sides told apart (to read the side off each training name)."""
    return vocabulary.with_training({c: True for c in vocabulary.categories})


def sided_categories(vocabulary: Vocabulary, sides) -> "callable":
    """A test on category ids: is this category's side trained? ``sides``: True (every category), False (none)
    or a list of category names (ValueError naming a name the vocabulary does not have as a category)."""
    if isinstance(sides, bool):
        return lambda category: sides
    if not isinstance(sides, (list, tuple)) or not all(isinstance(n, str) for n in sides):
        raise ValueError(f"data.sides must be true, false or a list of category names, got {sides!r}")
    ids = {c.name: c.id for c in vocabulary.categories.values()}
    unknown = [n for n in sides if n not in ids]
    if unknown:
        raise ValueError(f"data.sides names no category of the vocabulary: {', '.join(unknown)}")
    wanted = {ids[n] for n in sides}
    return lambda category: category in wanted


def resolve_names(names: dict, vocabulary: Vocabulary) -> dict:
    """{label value: TextCode} for the names the vocabulary resolves (sides kept); others are left out."""
    full, codes = _all_sides(vocabulary), {}
    for value, name in names.items():
        try:
            codes[int(value)] = full.resolve(str(name))
        except InputError:
            continue
    return codes


def split_values(codes: dict, names: dict, vocabulary: Vocabulary, split=SPLIT_CATEGORIES) -> set:
    """The label values of ``split`` categories whose name carries no number: unions such as "ribs"."""
    wanted = {c.id for c in vocabulary.categories.values() if c.name in split}
    return {value for value, code in codes.items()
            if code.category in wanted and not any(ch.isdigit() for ch in str(names.get(value, "")))}


def slice_components(mask: np.ndarray, min_area: int) -> list:
    """Numbers (1..) of the 8-connected components of a 2D mask with at least ``min_area`` pixels."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    return [c for c in range(1, count + 1) if sizes[c] >= min_area]


class TextSliceDataset:
    """Every (case, axis, slice, named structure) under ``roots`` whose name the vocabulary knows: the volumes
    and their slice index come from :class:`~training.data.datasets.VolumeSliceDataset`, filtered to named structures
    (split structures down to ``MIN_COMPONENT_PIXELS`` per part, the others from ``min_area``)."""

    def __init__(self, roots, vocabulary: Vocabulary, axes=(0, 1, 2), min_area: int = 16, size: int = 256,
                 exclude=(), split=SPLIT_CATEGORIES, sides=False) -> None:
        self.size, self.vocabulary = int(size), vocabulary
        sided = sided_categories(vocabulary, sides)
        self.volumes = VolumeSliceDataset(roots, axes, min(int(min_area), MIN_COMPONENT_PIXELS), size,
                                          exclude=exclude)
        self.codes, self.groups, splits = [], [], []
        for case in self.volumes.cases:
            codes = resolve_names(case.names, vocabulary)
            # left and right as one category, except where sides are trained (see the module docstring)
            codes = {v: c if sided(c.category) else replace(c, side=0) for v, c in codes.items()}
            self.codes.append(codes)
            self.groups.append({v: [u for u, other in codes.items() if other.as_input == c.as_input]
                                for v, c in codes.items()})
            splits.append(split_values(codes, case.names, vocabulary, split))
        self.by_category: dict = {}
        for entry in self.volumes.entries:
            code = self.codes[entry.case].get(entry.value)
            if code is None:
                continue
            if entry.value in splits[entry.case]:
                label = slice_of(self.volumes.labels[entry.case], entry.axis, entry.index)
                parts = slice_components(label == entry.value, MIN_COMPONENT_PIXELS)
            elif entry.area >= min_area:
                parts = [0]
            else:
                continue
            self.by_category.setdefault(code.category, []).extend(
                (entry.case, entry.axis, entry.index, entry.value, part) for part in parts)
        if not self.by_category:
            raise ValueError(f"no named structures the vocabulary knows under {roots}")

    def trained_categories(self) -> dict:
        """{category id: trained with sides} for the categories present."""
        sided = {}
        for codes in self.codes:
            for code in codes.values():
                sided[code.category] = sided.get(code.category, False) or code.side > 0
        return sided

    def get(self, number: int, axis: int, index: int, value: int, part: int = 0) -> dict:
        """The sample of one entry; ``part`` > 0: that connected component of a split structure on the slice."""
        volumes = self.volumes
        label = slice_of(volumes.labels[number], axis, index)
        code = self.codes[number][value]
        spacing = volumes.plane_spacing(number, axis)
        mask = label == value
        if part:
            mask = ndimage.label(mask, structure=np.ones((3, 3), bool))[0] == part
        sample = make_sample(slice_of(volumes.images[number], axis, index), mask, self.size,
                             f"{volumes.cases[number].name}/axis{axis}/{index}/{code.name}", spacing,
                             union2d=np.isin(label, self.groups[number][value]),
                             percentile=volumes.kinds[number] == "percentile")
        sample["text"] = np.array(code.as_input, np.int64)
        return sample

    def draw(self, rng) -> tuple:
        """(case, axis, index, value, part) of a named structure: a category uniformly, then one of its entries."""
        categories = sorted(self.by_category)
        entries = self.by_category[categories[int(rng.integers(len(categories)))]]
        return entries[int(rng.integers(len(entries)))]

    def sample(self, rng) -> dict:
        return self.get(*self.draw(rng))


class PhantomTextSource:
    """Synthetic slices whose structures are named by kind (training/data/phantoms.py: "lesion", "vessel", "vertebra",
    "rib", "body", "organ"); "rib" + a click means the one arc, the text alone every arc."""

    def __init__(self, vocabulary: Vocabulary, size: int = 256, min_area: int = 16) -> None:
        self.vocabulary, self.size, self.min_area = vocabulary, int(size), int(min_area)

    def sample(self, rng) -> dict:
        while True:
            phantom = make_phantom(self.size, rng)
            counts = np.bincount(phantom.label.ravel(), minlength=len(phantom.names) + 1)
            values = [v for v in np.flatnonzero(counts[1:] >= self.min_area) + 1]
            if values:
                break
        value = int(rng.choice(values))
        kind = phantom.names[value]
        code = self.vocabulary.resolve(kind)
        same = [v for v, k in phantom.names.items() if k == kind]
        sample = make_sample(normalize_intensity(phantom.image), phantom.label == value, self.size,
                             f"phantom/{phantom.modality}/{kind}", union2d=np.isin(phantom.label, same))
        sample["text"] = np.array(code.as_input, np.int64)
        return sample

    @staticmethod
    def categories(vocabulary: Vocabulary) -> dict:
        return {vocabulary.resolve(kind).category: False for kind in PHANTOM_KINDS}


TEXT_KEYS = ("image", "label", "valid", "union", "text", "percentile")   # the arrays of a text batch (MixedSource keys)
