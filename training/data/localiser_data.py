"""Training samples for the text localiser (IMISSegmentLib.networks.text_localiser): a whole slice and one
target map per structure code.

Built on :class:`~training.data.text_data.TextSliceDataset` (its volumes, its names resolved to codes, its
sampling balanced over categories). A slice is drawn as that dataset draws a named structure, but its target
holds every code the case labels: ``label`` (C, S, S) the structures of each code on the slice, ``known`` (C,)
1 where the case's labels name that code at all. A set that does not label a structure (CHAOS labels no
stomach, LA no ventricles) says nothing about it: the loss leaves those maps out (``known`` 0), so the
localiser is not taught that an unlabelled organ is background.
"""
from __future__ import annotations

import numpy as np

from IMISSegmentLib.networks.geometry import SliceGeometry
from IMISSegmentLib.prompts import slice_of

from training.data.datasets import augment, valid_map
from training.data.source_shift import SourceShift, shift_source

LOCALISER_KEYS = ("image", "label", "valid", "known")   # the arrays of a localiser batch


def dataset_codes(text_slices) -> list:
    """The [category, side] codes the dataset's cases label, sorted: the localiser's output maps."""
    return sorted({code.as_input for codes in text_slices.codes for code in codes.values()})


class LocaliserSlices:
    """Whole slices with one target map per code (see the module docstring); ``sample(rng)`` draws a slice as the
    text dataset draws a named structure (a category uniformly, then a slice holding it), augmented (flips, transposition, gamma) when ``augment_samples``."""

    def __init__(self, text_slices, codes=None, augment_samples: bool = True, source_shift=None) -> None:
        self.text = text_slices
        self.codes = [tuple(c) for c in (codes if codes is not None else dataset_codes(text_slices))]
        self.augment_samples = augment_samples
        self.source_shift = (source_shift if isinstance(source_shift, SourceShift)
                             else SourceShift.from_config(source_shift))
        channel = {code: number for number, code in enumerate(self.codes)}
        # per case: {channel: label values of that code}
        self.values = []
        for codes in text_slices.codes:
            values = {}
            for value, code in codes.items():
                if code.as_input in channel:
                    values.setdefault(channel[code.as_input], []).append(value)
            self.values.append(values)

    def get(self, number: int, axis: int, index: int, rng=None) -> dict:
        """The slice's sample; with ``rng`` and an active source shift, the slice as another source would show it
        (:mod:`training.data.source_shift`)."""
        volumes, size = self.text.volumes, self.text.size
        image = slice_of(volumes.images[number], axis, index)
        label = slice_of(volumes.labels[number], axis, index)
        if rng is not None and self.source_shift.active:
            image, label = shift_source(image, label, self.source_shift, rng)
        geometry = SliceGeometry(tuple(image.shape), size, volumes.plane_spacing(number, axis))
        target = np.zeros((len(self.codes), size, size), np.float32)
        known = np.zeros(len(self.codes), np.float32)
        for channel, values in self.values[number].items():
            known[channel] = 1.0
            mask = np.isin(label, values)
            if mask.any():
                target[channel] = geometry.mask_to_network(mask) > 0.5
        return {"image": geometry.to_network(image)[None], "label": target, "valid": valid_map(geometry, size)[None],
                "known": known, "source": f"{volumes.cases[number].name}/axis{axis}/{index}"}

    def sample(self, rng) -> dict:
        number, axis, index = self.text.draw(rng)[:3]
        sample = self.get(number, axis, index, rng if self.augment_samples else None)
        return augment(sample, rng) if self.augment_samples else sample

    def batch(self, rng, size: int) -> dict:
        samples = [self.sample(rng) for _ in range(size)]
        out = {k: np.stack([s[k] for s in samples]) for k in LOCALISER_KEYS}
        out["source"] = [s["source"] for s in samples]
        return out
