"""Bidirectional, streamed propagation of the prompted slices' masks through the volume (numpy only; the
network runs behind a stages object: :mod:`IMISSegmentLib.propagation.stages`).

For the propagation axis (the one with the most prompted slices), two sweeps run: forwards from the
first prompted slice to the end of the volume and backwards from the last one to the start. Each sweep
keeps every prompted slice in permanent memory; when it reaches a prompted slice it restarts from that
slice's mask (the user's result wins there), and it stops where the structure ends (``empty_stop``
slices in a row with fewer than ``min_pixels`` pixels, or a prompted slice with an empty mask) until the
next prompted slice. Where both sweeps reach a slice, the one whose last prompted slice is nearer wins.

Per slice: the ROI (:mod:`IMISSegmentLib.propagation.roi`, chosen from the last mask and moved only when
the mask nears its edge or shrinks well inside it, which also resets the sensory memory) is cut from the
windowed slice and resampled; the key encoder, the memory read-out
(:class:`IMISSegmentLib.propagation.memory.MemoryManager`) and the decoder give the mask; the value encoder
puts it in working memory. Only one slice's arrays are alive at a time, so memory does not grow with the
volume's length beyond the result itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ..errors import CancelledError, InputError
from ..normalize import apply_window
from ..prompts import plane_axes, slice_of
from ..settings import settings_from_dict
from .memory import MemoryManager
from ..engines.slice_walk import mask_bbox
from .roi import ROI_MARGIN_MM, ROI_SCALE, roi_around


@dataclass
class PropagationSettings:
    working_min: int = 4
    working_max: int = 10
    long_term_max: int = 1024
    prototypes: int = 64
    empty_stop: int = 2
    min_pixels: int = 4
    roi_scale: float = ROI_SCALE
    roi_margin_mm: float = ROI_MARGIN_MM
    #: re-centre the ROI when the mask's extent falls below this fraction of the ROI's side
    roi_shrink: float = 0.3
    #: "growcut": keep the result inside a Grow from Seeds region where Grow from Seeds is available
    #: (IMISSegmentLib.engines.growcut.contain_with_growcut); "none": the network alone
    containment: str = "growcut"

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "PropagationSettings":
        """Settings from a bundle's ``propagation.settings``: unknown names, a value of the wrong type or out of
        range, and working_min >= working_max (the memory needs 1 <= working_min < working_max) are an
        InputError naming the setting; whole numbers given as floats become ints."""
        settings = settings_from_dict(cls, values, "propagation")
        checked = cls.check_values(vars(settings))
        if not checked["working_min"] < checked["working_max"]:
            raise InputError(f"propagation settings need working_min < working_max, got {checked['working_min']}, "
                             f"{checked['working_max']}")
        return replace(settings, **checked)

    @staticmethod
    def check_values(values: dict) -> dict:
        """Each setting in ``values`` (any subset) checked on its own (type and range, the containment's name);
        returns the numeric ones, whole-number settings as ints. InputError naming the first bad one."""
        containment = values.get("containment", "growcut")
        if containment not in ("growcut", "none"):
            raise InputError(f"propagation containment must be 'growcut' or 'none', got {containment!r}")
        checked = {}
        for name, value in values.items():
            if name not in _RANGES:
                continue
            kind, low, inclusive, high = _RANGES[name]
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is int:
                ok = number and float(value).is_integer() and value >= low
                expected = f"an integer >= {low}"
            else:
                ok = number and (value >= low if inclusive else value > low) and (high is None or value < high)
                expected = f"a number {'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high is not None else "")
            if not ok:
                raise InputError(f"propagation setting {name} must be {expected}, got {value!r}")
            checked[name] = kind(value)
        return checked


#: PropagationSettings' numbers: (kind, lowest value, whether the lowest is allowed, highest (exclusive) or None)
_RANGES = {"working_min": (int, 1, True, None), "working_max": (int, 2, True, None),
           "long_term_max": (int, 0, True, None), "prototypes": (int, 0, True, None),
           "empty_stop": (int, 1, True, None), "min_pixels": (int, 0, True, None),
           "roi_scale": (float, 0, False, None), "roi_margin_mm": (float, 0, True, None),
           "roi_shrink": (float, 0, True, 1)}


def propagation_axis(prompted: dict) -> int:
    """The axis with the most prompted slices holding a mask (ties: the axis prompted first)."""
    counts: dict = {}
    for (axis, _), mask in prompted.items():
        counts.setdefault(axis, 0)
        counts[axis] += int(np.asarray(mask).any())
    if not counts:
        raise InputError("nothing to propagate: no prompted slice")
    return max(counts, key=lambda a: (counts[a], -list(counts).index(a)))


def _sigmoid(x):
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


class Propagator:
    """Runs the propagation network over a volume; ``stages`` gives encode_key / encode_value / decode."""

    def __init__(self, stages, settings: Optional[PropagationSettings] = None) -> None:
        self.stages = stages
        self.settings = settings or PropagationSettings()
        self.size = int(stages.size)
        #: of the last run: slices the network segmented, and the largest memory held (columns)
        self.last_run = {"slices_segmented": 0, "max_memory_columns": 0}

    def _memory(self) -> MemoryManager:
        s = self.settings
        return MemoryManager(self.stages.top_k, s.working_min, s.working_max, s.long_term_max, s.prototypes)

    def _roi(self, mask, spacing):
        return roi_around(mask, spacing, self.settings.roi_scale, self.settings.roi_margin_mm)

    def _restart(self, mask2d, spacing):
        """(ROI, fresh sensory memory, the mask in that ROI as the previous-slice prior) around a mask."""
        roi = self._roi(mask2d, spacing)
        return roi, self.stages.initial_sensory(), roi.crop(mask2d.astype(np.float32), self.size)[None, None]

    def _encode_memory(self, image2d, mask2d, spacing):
        """(key, shrinkage, value) of a slice and its mask, in the mask's own ROI."""
        roi = self._roi(mask2d, spacing)
        image = roi.crop(image2d, self.size)[None, None]
        mask = roi.crop(mask2d.astype(np.float32), self.size)[None, None]
        keys = self.stages.encode_key(image)
        value = self.stages.encode_value(image, mask, keys["f8"])
        return keys["key"][0], keys["shrinkage"][0], value[0]

    def run(self, volume, prompted: dict, progress=None, cancelled=None, name: str = "propagation") -> np.ndarray:
        """A new (K, J, I) uint8 result from ``prompted`` {(axis, index): (H, W) bool mask}."""
        array = volume.array
        axis = propagation_axis(prompted)
        rows, cols = plane_axes(axis)
        spacing = (volume.spacing[rows], volume.spacing[cols])
        depth = array.shape[axis]
        sources = {index: np.asarray(mask, bool) for (a, index), mask in prompted.items() if a == axis}
        starts = sorted(i for i, m in sources.items() if m.any())
        out = np.zeros(array.shape, np.uint8)
        if not starts:
            return out
        window = volume.window
        permanent = [self._encode_memory(apply_window(slice_of(array, axis, i), window), sources[i], spacing)
                     for i in starts]
        total = (depth - 1 - starts[0]) + starts[-1]
        counter = [0]
        self.last_run = {"slices_segmented": 0, "max_memory_columns": 0}
        distance = np.full(depth, np.iinfo(np.int64).max)
        for index in starts:
            distance[index] = 0
        for direction in (1, -1):
            start = starts[0] if direction > 0 else starts[-1]
            stop = depth if direction > 0 else -1
            self._sweep(volume, axis, spacing, sources, permanent, range(start + direction, stop, direction), start,
                        out, distance, progress, cancelled, counter, total, name)
        for index, mask in sources.items():
            slice_of(out, axis, index)[...] = mask
        return out

    def _sweep(self, volume, axis, spacing, sources, permanent, indices, start, out, distance, progress,
               cancelled, counter, total, name) -> None:
        settings, size = self.settings, self.size
        memory = self._memory()
        for entry in permanent:
            memory.add_permanent(*entry)
        shape = slice_of(volume.array, axis, start).shape
        roi, sensory, previous = self._restart(sources[start], spacing)
        active, empty_run, since = True, 0, 0
        for index in indices:
            if cancelled is not None and cancelled():
                raise CancelledError(f"{name} propagation cancelled")
            counter[0] += 1
            if index in sources:
                mask = sources[index]
                active, empty_run, since = bool(mask.any()), 0, 0
                if active:
                    roi, sensory, previous = self._restart(mask, spacing)
            elif active:
                since += 1
                raw = slice_of(volume.array, axis, index)
                image = roi.crop(apply_window(raw, volume.window), size)[None, None]
                keys = self.stages.encode_key(image)
                readout = memory.read(keys["key"][0].reshape(keys["key"].shape[1], -1),
                                      keys["selection"][0].reshape(keys["selection"].shape[1], -1))
                readout = readout.reshape(1, -1, *keys["key"].shape[-2:])
                self.last_run["slices_segmented"] += 1
                self.last_run["max_memory_columns"] = max(self.last_run["max_memory_columns"], memory.size)
                logits, sensory = self.stages.decode(keys["f2"], keys["f4"], keys["f8"], readout, sensory, previous)
                previous = _sigmoid(logits)
                mask = roi.paste(logits[0, 0], shape) > 0.0
                if mask.sum() < settings.min_pixels:
                    empty_run += 1
                    active = empty_run < settings.empty_stop
                    mask[...] = False
                else:
                    empty_run = 0
                if since < distance[index]:
                    distance[index] = since
                    slice_of(out, axis, index)[...] = mask
                if mask.any():
                    value = self.stages.encode_value(image, previous, keys["f8"])
                    memory.add_working(keys["key"][0], keys["shrinkage"][0], value[0])
                    box = mask_bbox(mask)
                    extent = max(box[2] - box[0] + 1, box[3] - box[1] + 1) / max(roi.rows, roi.cols)
                    if roi.touches_edge(mask) or extent < settings.roi_shrink:
                        roi, sensory, previous = self._restart(mask, spacing)
            if progress is not None:
                progress(min(counter[0], total), total)
