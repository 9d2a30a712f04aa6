"""Slice sequences for training the propagation network (IMISSegmentLib/networks/prop_net.py).

A sample is ``length`` consecutive slices of one structure, cut to the ROI the inference path would use
(:func:`IMISSegmentLib.propagation.roi.roi_around` on the first slice's mask, with its scale and centre
jittered) and resampled to ``size`` x ``size``:
``images`` (T, 1, S, S) float32 0..1, ``labels`` (T, 1, S, S) {0, 1}, ``first`` (1, S, S) the starting mask
(ground truth, or ground truth dilated / eroded a little as a 2D network's mask would be).

Sources:

* :class:`VolumeSequenceSource`: real labelled volumes (the cases of :class:`training.data.datasets.VolumeSliceDataset`),
  along any axis, forwards or backwards, every slice or every second one; sequences run off the structure's
  end, so the network learns to stop;
* :class:`PhantomSequenceSource`: a synthetic slice (training/data/phantoms.py) whose structure grows, shrinks
  (sometimes to nothing), turns and drifts from frame to frame, with fresh noise on every frame.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from IMISSegmentLib.normalize import normalize_intensity
from IMISSegmentLib.prompts import plane_axes, slice_of
from IMISSegmentLib.propagation.roi import roi_around

from training.data.phantoms import make_phantom


#: the ROI's scale (side over the structure's extent) is drawn from this range (the inference default is 1.6)
ROI_SCALES = (1.3, 2.2)


def _jittered_roi(mask, spacing, rng, scales=ROI_SCALES):
    return roi_around(mask, spacing, scale=float(rng.uniform(*scales)), shift=tuple(rng.uniform(-0.1, 0.1, 2)))


def corrupt_mask(mask: np.ndarray, rng) -> np.ndarray:
    """The starting mask as a 2D network might give it: ground truth, dilated or eroded by 1-2 px."""
    if rng.random() < 0.5:
        return mask
    iterations = int(rng.integers(1, 3))
    out = ndimage.binary_dilation(mask, iterations=iterations) if rng.random() < 0.5 else \
        ndimage.binary_erosion(mask, iterations=iterations)
    return out if out.any() else mask


def _finish(images, labels, rng) -> dict | None:
    labels = [(lab > 0.5).astype(np.float32) for lab in labels]
    if labels[0].sum() < 4:
        return None
    images = np.clip(np.stack(images)[:, None], 0.0, 1.0)   # resampling may overshoot by a rounding error
    labels = np.stack(labels)[:, None]
    if rng.random() < 0.5:
        images, labels = images[..., ::-1], labels[..., ::-1]
    if rng.random() < 0.5:
        images, labels = images[..., ::-1, :], labels[..., ::-1, :]
    if rng.random() < 0.25:
        images, labels = images.swapaxes(-1, -2), labels.swapaxes(-1, -2)
    if rng.random() < 0.5:
        images = images ** np.float32(np.exp(rng.uniform(-0.4, 0.4)))
    images = np.ascontiguousarray(images, np.float32)
    labels = np.ascontiguousarray(labels, np.float32)
    first = corrupt_mask(labels[0, 0] > 0.5, rng).astype(np.float32)[None]
    return {"images": images, "labels": labels, "first": first}


class VolumeSequenceSource:
    """Sequences from labelled volumes (a :class:`training.data.datasets.VolumeSliceDataset`'s loaded cases).

    ``end_fraction`` of the sequences are placed so the structure ends inside them (they start on one of
    its last slices in the direction of travel), so the network sees where structures stop."""

    def __init__(self, volumes, length: int = 6, size: int = 128, min_area: int = 32, end_fraction: float = 0.0,
                 roi_scales=ROI_SCALES) -> None:
        self.volumes, self.length, self.size, self.min_area = volumes, int(length), int(size), int(min_area)
        self.end_fraction, self.roi_scales = float(end_fraction), tuple(roi_scales)
        self.entries = [e for e in volumes.entries if e.area >= min_area]
        if not self.entries:
            raise ValueError(f"no labelled slices with at least {min_area} pixels for sequences")
        self.extents = {}   # (case, axis, value) -> (first, last) slice holding the structure
        for e in volumes.entries:
            key = (e.case, e.axis, e.value)
            low, high = self.extents.get(key, (e.index, e.index))
            self.extents[key] = (min(low, e.index), max(high, e.index))

    def _start(self, entry, direction: int, step: int, rng) -> int:
        if self.end_fraction <= 0.0 or rng.random() >= self.end_fraction:
            return entry.index
        low, high = self.extents[(entry.case, entry.axis, entry.value)]
        end = high if direction > 0 else low
        return int(end - direction * step * rng.integers(1, max(2, self.length - 1)))

    def sample(self, rng) -> dict:
        while True:
            if self.volumes.balance != "none":   # the dataset's balance over sets / structures
                entry = self.volumes.entries[self.volumes.draw(rng)]
                if entry.area < self.min_area:
                    continue
            else:
                entry = self.entries[int(rng.integers(len(self.entries)))]
            image, label = self.volumes.images[entry.case], self.volumes.labels[entry.case]
            rows, cols = plane_axes(entry.axis)
            spacing = self.volumes.spacings[entry.case]
            depth = image.shape[entry.axis]
            direction = 1 if rng.random() < 0.5 else -1
            step = 2 if rng.random() < 0.25 else 1
            start = self._start(entry, direction, step, rng)
            indices = np.clip(start + direction * step * np.arange(self.length), 0, depth - 1)
            first = slice_of(label, entry.axis, int(indices[0])) == entry.value
            if first.sum() < 4:
                continue
            roi = _jittered_roi(first, (spacing[rows], spacing[cols]), rng, self.roi_scales)
            images = [roi.crop(slice_of(image, entry.axis, int(k)), self.size) for k in indices]
            labels = [roi.crop((slice_of(label, entry.axis, int(k)) == entry.value).astype(np.float32), self.size)
                      for k in indices]
            sample = _finish(images, labels, rng)
            if sample is not None:
                return sample


class PhantomSequenceSource:
    """Synthetic sequences: one phantom slice, its structure warped a little more on every frame."""

    def __init__(self, length: int = 6, size: int = 128, pool: int = 96, seed: int = 0, min_area: int = 64,
                 roi_scales=ROI_SCALES) -> None:
        self.length, self.size, self.roi_scales = int(length), int(size), tuple(roi_scales)
        rng = np.random.default_rng([seed, 31])
        self.pool = []
        while len(self.pool) < pool:
            phantom = make_phantom(256, rng)
            counts = np.bincount(phantom.label.ravel(), minlength=len(phantom.names) + 1)
            values = np.flatnonzero(counts[1:] >= min_area) + 1
            if values.size:
                self.pool.append((normalize_intensity(phantom.image), phantom.label, values))

    def sample(self, rng) -> dict:
        while True:
            image, label, values = self.pool[int(rng.integers(len(self.pool)))]
            mask = (label == int(rng.choice(values))).astype(np.float32)
            centre = np.array(ndimage.center_of_mass(mask))
            vanish = rng.random() < 0.25
            growth = -rng.uniform(0.12, 0.25) if vanish else rng.uniform(-0.06, 0.06)
            turn = np.deg2rad(rng.uniform(-4, 4))
            drift = rng.uniform(-2.5, 2.5, 2)
            roi = _jittered_roi(mask > 0.5, (1.0, 1.0), rng, self.roi_scales)
            images, labels = [], []
            for t in range(self.length):
                scale = max(0.05, 1.0 + growth * t)
                c, s = np.cos(turn * t), np.sin(turn * t)
                forward = scale * np.array([[c, -s], [s, c]])
                inverse = np.linalg.inv(forward)
                offset = centre - inverse @ (centre + drift * t)
                # only the structure moves: the rest of the slice stays, as neighbouring anatomy would
                moved = ndimage.affine_transform(mask, inverse, offset, order=1)
                moved_image = ndimage.affine_transform(image, inverse, offset, order=1)
                frame = np.where(moved > 0.5, moved_image, image) if t else image
                frame = frame + rng.normal(0, 0.015, frame.shape).astype(np.float32)
                images.append(roi.crop(frame.astype(np.float32), self.size))
                labels.append(roi.crop(moved if t else mask, self.size))
            sample = _finish(images, labels, rng)
            if sample is not None:
                return sample


class MixedSequences:
    def __init__(self, real=None, phantoms=None, phantom_fraction: float = 0.3) -> None:
        if real is None and phantoms is None:
            raise ValueError("MixedSequences needs real volumes, phantoms or both")
        self.real, self.phantoms = real, phantoms
        self.phantom_fraction = 1.0 if real is None else (0.0 if phantoms is None else float(phantom_fraction))

    def batch(self, rng, size: int) -> dict:
        samples = [(self.phantoms if rng.random() < self.phantom_fraction else self.real).sample(rng)
                   for _ in range(size)]
        return {k: np.stack([s[k] for s in samples]) for k in ("images", "labels", "first")}
