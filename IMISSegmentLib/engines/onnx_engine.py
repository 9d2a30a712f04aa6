"""The 2D interactive network as an engine: :class:`OnnxClickEngine` (onnxruntime, the default) and the
shared slice pipeline that :class:`~IMISSegmentLib.engines.torch_engine.TorchClickEngine` reuses.

Per prompt on a slice (:meth:`ClickNetEngineBase.predict_slice`):

1. the slice (``SliceRequest.image``, normalised 0..1 by ``IMISSegmentLib.normalize``) is resized so its
   longest side is the bundle's input size (256), physical aspect kept (the slice's pixel spacing; the
   bundle's ``slice_aspect`` "pixel" keeps the pixel aspect instead), and padded bottom / right with zeros
   (:class:`IMISSegmentLib.networks.geometry.SliceGeometry`);
2. the prompt maps (:func:`IMISSegmentLib.prompts.encode_prompt_maps`: positive disks, negative disks of
   5 px at network resolution, box map) are drawn at the resized extent and padded the same way;
3. the fourth map, the previous mask, is the engine's own feedback when it belongs to this slice: the
   sigmoid of the previous logits at network resolution (as IMIS feeds the low-resolution logits back);
   otherwise (first prompt, or the slice's mask was changed by propagation) ``request.previous_mask``;
4. the network runs; its logits are cropped to the resized extent, resized back to the slice
   (linear interpolation) and thresholded at 0. The new probabilities are the returned state. Bundles with a
   ``slice_propagated`` stage answer a correction (without text) on a slice whose mask came from propagation
   with that network instead: the same architecture fine-tuned on propagated masks as the previous mask
   (training/export/correction.py).
   A box alone whose answer leaves most of the box's rows or columns empty gets a lower threshold
   (the bundle's ``box_fill``, :mod:`IMISSegmentLib.engines.box_fill`; the logits are shifted).

3D (:meth:`ClickNetEngineBase.propagate`): when the bundle holds the propagation network (its ``propagation``
entry and ``prop_*`` stages), :class:`IMISSegmentLib.propagation.propagator.Propagator` carries the prompted
masks through the volume with the memory network. Bundles without it fall back to Slicer's Grow from Seeds
seeded by the slices the user prompted (their network masks, eroded, are foreground; the rest of those
slices background; :func:`IMISSegmentLib.engines.growcut.grow_from_slice_masks`). Where Grow from Seeds is
not installed, a slice-by-slice walk (:func:`IMISSegmentLib.engines.slice_walk.walk_slices`) prompts each
next slice with the previous mask's box grown by ``propagation_margin_px`` and a click at its interior
point. (Feeding the previous slice's mask in as the previous-mask channel does not work: the network,
trained to refine its own mask on the same slice, copies it.)

onnxruntime is imported only when an engine is built. Bundles whose ``engine`` is "onnx" are loaded by
:func:`IMISSegmentLib.load_model` through :func:`load_onnx_bundle`.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CancelledError, EngineUnavailableError, InputError
from ..interrupts import deferred
from ..evaluation.simulated_user import interior_point
from ..networks.geometry import SliceGeometry
from ..normalize import apply_window
from ..prompts import CLICK_RADIUS_PX, encode_prompt_maps, plane_axes, slice_of
from .base import Engine, PropagationRequest, SliceRequest, SliceResult
from .box_fill import BoxFillSettings, box_fill_shift
from .growth_check import GrowthCheckSettings, growth_shift
from .shrink_check import ShrinkCheckSettings, shrink_checked
from .named_parts import NamedParts, confirmable, name_key
from .slice_walk import grow_box, mask_bbox, prompted_sources, walk_slices
from .zoom import Crop, ZoomSettings, zoom_window

ONNX_INSTALL_HINT = 'pip install "IMISSegment[onnx]" (or onnxruntime-gpu for CUDA)'
DEFAULT_THREADS = 2
THREADS_ENV = "IMIS_SEGMENT_THREADS"
SLICE_STAGE = "slice"
#: the click network for corrections on slices whose mask came from propagation (optional)
PROPAGATED_STAGE = "slice_propagated"
PROMPTED_PARTS = ("text", "always")


def _mask_digest(mask: np.ndarray) -> bytes:
    mask = np.asarray(mask, dtype=bool)
    return hashlib.blake2b(np.packbits(mask).tobytes() + repr(mask.shape).encode(), digest_size=16).digest()


@dataclass(frozen=True)
class ClickNetState:
    """What the engine keeps per slice between prompts (``SliceResult.state``)."""

    axis: int
    index: int
    slice_shape: tuple
    #: (size, size) float32: sigmoid of the last logits, network resolution; None when the mask returned is not the
    #: network's answer alone (confirmed parts of a name's answer added): the next prompt then sees that mask
    probabilities: Optional[np.ndarray]
    mask_digest: bytes               # digest of the mask returned with it
    window: Optional[tuple] = None   # the zoom-in window the network ran on (None: the whole slice)
    named: Optional[NamedParts] = None   # a name's answer's parts and the clicks on them (keep_confirmed)

    def belongs_to(self, request: SliceRequest) -> bool:
        """True when this state was made for this slice and the slice still holds the mask it produced."""
        if (self.axis, self.index, tuple(self.slice_shape)) != (request.axis, request.index, tuple(request.image.shape)):
            return False
        previous = request.previous_mask
        if previous is None:
            previous = np.zeros(request.image.shape, bool)
        return _mask_digest(previous) == self.mask_digest


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _zero_padding(probabilities: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """``probabilities`` (network resolution) with the padding around the slice set to 0 (it holds nothing, as in
    training)."""
    inner = geometry.inner_shape
    probabilities[inner[0]:, :] = 0.0
    probabilities[:, inner[1]:] = 0.0
    return probabilities


def _slice_image(request: SliceRequest, name: str) -> np.ndarray:
    """The request's slice as float32; InputError unless it is a non-empty 2D array."""
    image = np.asarray(request.image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"{name} needs a 2D slice image, got shape {image.shape}")
    return image


def bundle_input_size(info: dict) -> int:
    size = info.get("input_size", [256, 256])
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1] and int(size[0]) > 0):
        raise InputError(f"bundle input_size must be [N, N], got {size!r}")
    return int(size[0])


def bundle_input_gamma(info: dict) -> float:
    """The bundle's ``input_gamma``: the click network sees its slice's 0..1 intensities raised to this power
    (1.0: as they are; chosen on the validation split, docs/evaluation/source-shifts) where the slice was
    normalised by percentiles (MR, already-windowed images: all of the split); CT in Hounsfield units, whose
    fixed window the split holds no case of, is left as it is (an abdominal CT from another source lost with it).
    The localiser and the memory network see the slice as it is."""
    value = info.get("input_gamma", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.2 <= float(value) <= 5.0:
        raise InputError(f"bundle input_gamma must be a number between 0.2 and 5, got {value!r}")
    return float(value)


def resolve_threads(num_threads) -> int:
    if num_threads is None:
        num_threads = os.environ.get(THREADS_ENV, DEFAULT_THREADS)
    try:
        value = int(num_threads)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise InputError(f"num_threads must be a whole number >= 1, got {num_threads!r}")
    return value


def prompted_components(mask: np.ndarray, clicks, box, previous=None) -> np.ndarray:
    """The structure the user pointed at: the connected parts of ``mask`` that reach within 2 pixels of a
    positive click, overlap the box, or overlap ``previous`` (the slice's mask before this prompt: a
    propagated part the user did not click stays). With text, the text stage modulates the whole slice, so it
    can light up the other instances of its class (every rib for "rib" + a click on one, both lungs); with
    clicks alone the network can answer with blobs away from the clicks. Text alone keeps everything. Returns
    ``mask`` itself when nothing is dropped or nothing would be left."""
    positive = [(int(r), int(c)) for r, c, is_positive in clicks if is_positive]
    if previous is not None and not previous.any():
        previous = None
    if not mask.any() or (not positive and box is None and previous is None):
        return mask
    from scipy import ndimage
    parts, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count < 2:
        return mask
    keep = set()
    for r, c in positive:
        r0, r1 = max(0, r - 2), min(mask.shape[0], r + 3)
        c0, c1 = max(0, c - 2), min(mask.shape[1], c + 3)
        keep.update(int(v) for v in np.unique(parts[r0:r1, c0:c1]) if v)
    if box is not None:
        r0, c0, r1, c1 = box
        keep.update(int(v) for v in np.unique(parts[r0:r1 + 1, c0:c1 + 1]) if v)
    if previous is not None:
        keep.update(int(v) for v in np.unique(parts[previous]) if v)
    if not keep or len(keep) == count:
        return mask
    return np.isin(parts, sorted(keep))


class ClickNetEngineBase(Engine):
    """The slice pipeline around a click network; subclasses implement :meth:`run_network`."""

    name = "clicknet"
    capabilities = frozenset({"click", "box", "propagate"})
    #: "auto" (the bundle's propagation network, else Grow from Seeds when available, else "walk"), "network",
    #: "growcut" or "walk"; see the module docstring
    propagation = "auto"
    propagation_margin_px = 2
    propagation_growth_limit = 2.0

    def __init__(self, bundle_dir=None, info: Optional[dict] = None, size: int = 256) -> None:
        super().__init__()
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else None
        self.info = dict(info or {})
        self.size = bundle_input_size(self.info) if self.info else int(size)
        if self.info.get("name"):
            self.name = str(self.info["name"])
        self.radius = float(self.info.get("click_radius_px", CLICK_RADIUS_PX))
        # "physical": slices keep their physical aspect on the canvas (pixel spacing); "pixel": pixel aspect
        self.physical_aspect = self.info.get("slice_aspect", "physical") == "physical"
        self.zoom = ZoomSettings.from_dict(self.info.get("zoom"))
        self.box_fill = BoxFillSettings.from_dict(self.info.get("box_fill"))
        self.growth_check = GrowthCheckSettings.from_dict(self.info.get("growth_check"))
        self.shrink_check = ShrinkCheckSettings.from_dict(self.info.get("shrink_check"))
        self.input_gamma = bundle_input_gamma(self.info)
        #: "text": keep only the prompted parts of the mask when a structure name came with the clicks / box;
        #: "always": for clicks and boxes alone too (see prompted_components)
        self.prompted_parts = self.info.get("prompted_parts", "text")
        if self.prompted_parts not in PROMPTED_PARTS:
            raise InputError(f"bundle prompted_parts must be one of {', '.join(PROMPTED_PARTS)}, "
                             f"got {self.prompted_parts!r}")
        self._growcut_available: Optional[bool] = None
        self._warned_no_containment = False
        self.propagator = None    # set by subclasses when the bundle has the propagation network
        self.fusion_scorer = None  # set by subclasses when the bundle has the MRF quality network
        self.fusion_settings = None   # set (use_fusion) when the bundle has a fusion entry
        self.last_fusion: dict = {}   # the last fuse_rounds report (IMISSegmentLib.fusion.fuse_rounds)
        self.last_propagation: dict = {}   # seconds of the last network propagation and of its containment
        self.last_inputs: Optional[tuple] = None   # (image, prompts) of the last run, for tests and debugging
        self.keep_inputs = False
        self.vocabulary = None     # set by subclasses when the bundle's network takes text (IMISSegmentLib.text)
        self.localiser = None      # LocaliserSettings, set by subclasses when the bundle has the text localiser

    def run_network(self, image: np.ndarray, prompts: np.ndarray, text: Optional[np.ndarray] = None,
                    on_propagated: bool = False) -> np.ndarray:
        """(B, 1, S, S) float32 image, (B, 4, S, S) prompts and, for networks with a text stage, (B, 2) int64
        text codes (category, side; None = no text) -> (B, 1, S, S) float32 logits. ``on_propagated``: a
        correction of a propagated mask (the bundle's ``slice_propagated`` network where it has one)."""
        raise NotImplementedError

    def run_localiser(self, image: np.ndarray) -> np.ndarray:
        """(1, 1, S, S) float32 whole slice -> (1, C, S, S) float32 logits of the bundle's text localiser."""
        raise NotImplementedError

    def localiser_settings(self):
        """The bundle's text localiser settings (engines/text_localiser.py), or None when it has none."""
        from .text_localiser import LOCALISER_STAGE, LocaliserSettings
        if LOCALISER_STAGE not in self.info.get("stages", {}):
            return None
        return LocaliserSettings.from_entry((self.info.get("text") or {}).get("localiser"),
                                            str(self.bundle_dir or self.name))

    @property
    def corrects_propagated(self) -> bool:
        """True when the bundle has a network for corrections on propagated slices (``slice_propagated``)."""
        return PROPAGATED_STAGE in self.info.get("stages", {})

    def use_text_vocabulary(self, vocabulary) -> None:
        """Take text prompts: names resolved by ``vocabulary`` (the bundle's), fed to the network's text stage."""
        self.vocabulary = vocabulary
        self.capabilities = frozenset(self.capabilities | {"text"})

    def resolve_text(self, text: str):
        """The network's :class:`~IMISSegmentLib.text.TextCode` for ``text``. InputError when the name is unknown
        (UnknownTextError, with the closest names) or names a structure this network was not trained to find."""
        if self.vocabulary is None:
            raise NotImplementedError(f"engine '{self.name}' does not take text prompts")
        code = self.vocabulary.resolve(text)
        if not code.trained:
            raise InputError(f"'{text}' ({code.name}) is a known structure, but this model was not trained to find it "
                             f"from text; prompt it with a click or a box. Text works for: "
                             f"{', '.join(self.vocabulary.names(trained_only=True))}")
        return code

    def _geometry(self, shape, spacing) -> SliceGeometry:
        return SliceGeometry(tuple(shape), self.size, tuple(spacing) if self.physical_aspect and spacing else None)

    @staticmethod
    def is_own_answer(request: SliceRequest) -> bool:
        """True when the slice still holds this engine's last answer on it (its state is fed back)."""
        state = request.previous_state
        return isinstance(state, ClickNetState) and state.probabilities is not None and state.belongs_to(request)

    @staticmethod
    def _named_parts(request: SliceRequest, code) -> Optional[NamedParts]:
        """The slice's record of a name's answer (keep_confirmed) with this request's new clicks counted, when the
        slice still holds an answer of this engine that carries one and the request is that name with clicks."""
        state = request.previous_state
        if (code is None or not request.clicks or request.box is not None or not isinstance(state, ClickNetState)
                or state.named is None or state.named.name != name_key(code) or not state.belongs_to(request)):
            return None
        return state.named.after(request.clicks)

    def network_inputs(self, request: SliceRequest, feedback: Optional[bool] = None):
        """(image (1, 1, S, S), prompts (1, 4, S, S), geometry, crop) for a request: ``crop`` is the zoom-in
        window (:mod:`IMISSegmentLib.engines.zoom`) and ``geometry`` places that window on the canvas.
        ``feedback``: :meth:`is_own_answer` when the caller has it already (computed here otherwise)."""
        image = _slice_image(request, self.name)
        state = request.previous_state
        if feedback is None:
            feedback = self.is_own_answer(request)
        crop = Crop(zoom_window(image.shape, request.spacing, request.clicks, request.box, request.previous_mask,
                                self.zoom, own_mask=feedback), tuple(image.shape))
        geometry = self._geometry(crop.crop_shape, request.spacing)
        maps = encode_prompt_maps(crop.clicks(request.clicks), crop.box(request.box),
                                  None if feedback else crop.array(request.previous_mask),
                                  crop.crop_shape, geometry.inner_shape, radius=self.radius)
        prompts = geometry.pad(maps)
        if feedback and state.window == crop.window:
            prompts[3] = state.probabilities
        elif feedback:   # the last answer came from another window: through the slice grid into this one
            previous = Crop(state.window, crop.shape)
            on_slice = previous.paste(self._geometry(previous.crop_shape, request.spacing).to_slice(state.probabilities),
                                      np.float32(0.0))
            prompts[3] = np.clip(geometry.to_network(crop.array(on_slice)), 0.0, 1.0)
        net_image = geometry.to_network(crop.array(image))
        if self.input_gamma != 1.0 and request.window_kind == "percentile":   # the padding stays 0
            net_image = np.power(np.clip(net_image, 0.0, 1.0), np.float32(self.input_gamma))
        return net_image[None, None], prompts[None], geometry, crop

    def _with_neighbour_prior(self, request: SliceRequest, text) -> tuple:
        """(request, neighbour area) for positive clicks alone on a slice with no mask, next to one that has a
        mask (propagation stopped short of the structure's end): by the growth check's ``neighbour`` mode, the
        neighbour's mask becomes the previous mask ("prior": as a propagated-slice correction network was
        trained, a structure's mask from a slice 2-20 mm away and the correction click for it) and its area the
        growth check's limit, or only the limit ("area"). Otherwise (request, 0)."""
        mode = self.growth_check.neighbour_mode(self.corrects_propagated)
        if (mode == "off" or text is not None or request.box is not None
                or request.neighbour_mask is None or not request.clicks
                or not all(positive for _, _, positive in request.clicks)
                or (request.previous_mask is not None and np.any(request.previous_mask))):
            return request, 0
        neighbour = np.asarray(request.neighbour_mask, bool)
        if mode == "prior":
            request = replace(request, previous_mask=neighbour, previous_state=None)
        return request, int(np.count_nonzero(neighbour))

    def _threshold_shift(self, request: SliceRequest, text, neighbour_area: int, mask_at) -> float:
        """The logit offset the answer's checks ask for (0.0: none): a box alone must span its box
        (:mod:`.box_fill`); clicks on the neighbour's prior must not grow far past it (:mod:`.growth_check`).
        ``mask_at(offset)``: the slice mask where logits > offset."""
        if request.box is not None and not request.clicks and text is None:
            return box_fill_shift(mask_at, request.box, self.box_fill)
        if neighbour_area:
            return growth_shift(mask_at, neighbour_area, [(r, c) for r, c, positive in request.clicks if positive],
                                self.growth_check)
        return 0.0

    def _localise_alone(self, request: SliceRequest, channels: list, keep: bool = False, code=None) -> SliceResult:
        """A name alone on a slice without a mask: the text localiser's map of it on the whole slice
        (:mod:`.text_localiser`), its parts kept down to the settings' ``min_part_share`` (both kidneys for
        "kidney"). ``keep``: record its parts for the clicks that follow with the same name, ``code``
        (:mod:`.named_parts`)."""
        from .text_localiser import code_logits, main_parts
        image = _slice_image(request, self.name)
        geometry = self._geometry(image.shape, request.spacing)
        net_image = geometry.to_network(image)[None, None]
        if self.keep_inputs:
            self.last_inputs = (net_image.copy(), np.zeros((1, 4) + net_image.shape[2:], np.float32))
        logits = code_logits(self.run_localiser(net_image)[0], channels) - np.float32(self.localiser.threshold)
        probabilities = _zero_padding(_sigmoid(logits), geometry)
        mask = geometry.to_slice(logits) > 0.0
        kept = main_parts(mask, self.localiser.min_part_share)
        if kept is not mask:   # the dropped parts leave the fed-back probabilities too
            probabilities[geometry.mask_to_network(mask & ~kept) > 0.0] = 0.0
            mask = kept
        named = NamedParts.of(mask, name_key(code) if code is not None else ()) if keep else None
        state = ClickNetState(request.axis, request.index, tuple(request.image.shape), probabilities,
                              _mask_digest(mask), None, named)
        return SliceResult(mask=mask, state=state)

    def predict_slice(self, request: SliceRequest) -> SliceResult:
        takes_text = bool(request.text) and self.vocabulary is not None
        if not request.clicks and request.box is None and not takes_text:
            what = "a click, a box or a structure name" if self.vocabulary is not None else "a click or a box"
            raise InputError(f"{self.name} needs {what} on the slice")
        code = self.resolve_text(request.text) if takes_text else None
        text = np.array([code.as_input], np.int64) if code is not None else None
        if (code is not None and self.localiser is not None and not request.clicks and request.box is None
                and (request.previous_mask is None or not np.any(request.previous_mask))):
            channels = self.localiser.channels(code.as_input)
            if channels:   # a name alone on a slice without a mask: the localiser's (else the text stage's)
                return self._localise_alone(request, channels, self.localiser.keep_confirmed and confirmable(code),
                                            code)
        named = self._named_parts(request, code)
        slice_mask = request.previous_mask   # the slice's own mask (not a neighbour's prior) for the shrink check
        request, neighbour_area = self._with_neighbour_prior(request, text)
        own = self.is_own_answer(request)   # one mask digest per prompt, shared with network_inputs
        image, prompts, geometry, crop = self.network_inputs(request, own)
        if self.keep_inputs:
            self.last_inputs = (image.copy(), prompts.copy())
        on_propagated = (text is None and not own and request.previous_mask is not None
                         and bool(np.any(request.previous_mask)))
        logits = np.asarray(self.run_network(image, prompts, text, on_propagated), dtype=np.float32)[0, 0]
        on_slice = geometry.to_slice(logits)   # resized once: the checks try their thresholds on it
        offset = np.float32(self._threshold_shift(request, text, neighbour_area,
                                                  lambda shift: crop.paste(on_slice > shift, False)))
        if offset:
            logits, on_slice = logits - offset, on_slice - offset
        mask = crop.paste(on_slice > 0.0, False)
        probabilities = _zero_padding(_sigmoid(logits), geometry)
        if text is not None or self.prompted_parts == "always":
            # parts of a mask the slice got from elsewhere (propagation) stay; the engine's own last answer was
            # already filtered (or was text alone, which keeps every instance of its class)
            previous = None if own or request.previous_mask is None else np.asarray(request.previous_mask, bool)
            kept = prompted_components(mask, request.clicks, request.box, previous)
            if kept is not mask:   # the dropped parts leave the fed-back probabilities too
                probabilities[geometry.mask_to_network(crop.array(mask & ~kept)) > 0.0] = 0.0
                mask = kept
        kept = named.kept() if named is not None else None
        if kept is not None:   # confirmed parts of the name's answer stay; the next prompt sees this mask as it is
            mask = mask | kept
            probabilities = None
        elif text is None:     # a positive click that took most of the mask away gives it back (.shrink_check)
            checked = shrink_checked(mask, slice_mask, request.clicks, request.new_prompt, self.shrink_check)
            if checked is not mask:
                mask, probabilities = checked, None
        state = ClickNetState(request.axis, request.index, tuple(request.image.shape), probabilities,
                              _mask_digest(mask), crop.window, named)
        return SliceResult(mask=mask, state=state)

    def propagate(self, request: PropagationRequest, progress=None, cancelled=None) -> np.ndarray:
        volume = self.volume
        if volume is None:
            raise InputError(f"{self.name} propagation needs a volume: call set_volume first")
        sources = prompted_sources(request, volume.array.shape)     # checked against the volume
        method = self.propagation_method()
        if method == "walk":
            return walk_slices(request, volume.array.shape, self._walk_step, self.name, progress, cancelled)
        if method == "network":
            out = self._propagate_network(request, progress, cancelled)
        else:
            from .growcut import grow_from_slice_masks
            if cancelled is not None and cancelled():
                raise CancelledError(f"{self.name} propagation cancelled")
            if progress is not None:
                progress(0, 1)
            out = grow_from_slice_masks(volume, request.prompted, request.clicks, cancelled=cancelled)
            if progress is not None:
                progress(1, 1)
        for axis, index, mask in sources:   # the user's slices keep their mask (on every axis)
            slice_of(out, axis, index)[...] = mask
        return out

    def _propagate_network(self, request: PropagationRequest, progress, cancelled) -> np.ndarray:
        """The memory network's sweeps, then (settings.containment "growcut", where installed) the Grow from
        Seeds containment; their seconds go to ``last_propagation``."""
        volume = self.volume
        started = time.perf_counter()
        out = self.propagator.run(volume, request.prompted, progress, cancelled, self.name)
        self.last_propagation = {"network_s": time.perf_counter() - started, "containment_s": None}
        if self.propagator.settings.containment == "growcut" and not self.growcut_available():
            self._warn_no_containment()
        elif self.propagator.settings.containment == "growcut":
            from .growcut import contain_with_growcut
            started = time.perf_counter()
            out = contain_with_growcut(volume, out, request.prompted, request.clicks, cancelled=cancelled,
                                       in_place=True)   # no second volume-sized array
            self.last_propagation["containment_s"] = time.perf_counter() - started
        return out

    def use_propagation_stages(self, stages) -> None:
        """Propagate with the bundle's memory network run by ``stages`` (settings from the bundle)."""
        from ..propagation.propagator import PropagationSettings, Propagator
        self.propagator = Propagator(stages, PropagationSettings.from_dict(self.info["propagation"].get("settings")))

    def use_fusion(self, scorer=None) -> None:
        """Fuse rounds as the bundle's ``fusion`` entry says: its settings (the direction check) and, where the
        bundle has the MRF quality network, that network run by ``scorer`` (None: a bundle without it, whose
        settings must leave the network off)."""
        entry = self.info["fusion"]
        if not isinstance(entry, dict):
            raise InputError(f"{self.bundle_dir or self.name}: the bundle's 'fusion' entry must be an object, "
                             f"got {entry!r}")
        self.fusion_scorer = scorer
        self.configure_fusion(entry.get("settings"))
        self.capabilities = frozenset(self.capabilities | {"fuse"})

    def configure_fusion(self, values) -> None:
        """Replace the fusion settings (a dict of :class:`IMISSegmentLib.fusion.FusionSettings` fields, checked);
        InputError when they ask for the quality network and the bundle has none."""
        from ..fusion import FusionSettings
        settings = FusionSettings.from_dict(values)
        if settings.network and self.fusion_scorer is None:
            raise InputError(f"{self.bundle_dir or self.name}: the fusion settings ask for the MRF quality network "
                             "(\"network\": true), but the bundle has none; set \"network\": false or add the network "
                             "(python -m training.export.mrf)")
        self.fusion_settings = settings

    def fuse_rounds(self, request: PropagationRequest, previous, current, cancelled=None):
        """Per slice along the propagation axis, the previous round's mask where it moved against the round's
        direction or the quality network finds it better, else the new one (:mod:`IMISSegmentLib.fusion.mrf`);
        the user's slices keep their latest mask. Without the bundle's fusion entry: ``current``."""
        if self.fusion_settings is None:
            return current
        from ..fusion import fuse_rounds, round_direction
        from ..propagation.propagator import propagation_axis
        axis = propagation_axis(request.prompted)
        protected = [index for (a, index) in request.prompted if a == axis]
        new = [index for (a, index) in request.new_prompted if a == axis]
        extending = [index for (a, index) in request.new_empty if a == axis]
        fused, self.last_fusion = fuse_rounds(self.volume, previous, current, axis, self.fusion_scorer,
                                              self.fusion_settings, protected, new, cancelled,
                                              direction=round_direction(request.new_prompts), extending=extending)
        for axis, index, mask in prompted_sources(request, self.volume.array.shape):
            slice_of(fused, axis, index)[...] = mask
        return fused

    def propagation_method(self) -> str:
        """"network" when the bundle has the propagation network, else "growcut" when Grow from Seeds is
        available (Slicer, or the slicer-core wheel), else "walk"."""
        if self.propagation == "network" and self.propagator is None:
            raise EngineUnavailableError(f"{self.name}: this bundle has no propagation network")
        if self.propagation in ("network", "growcut", "walk"):
            return self.propagation
        if self.propagator is not None:
            return "network"
        return "growcut" if self.growcut_available() else "walk"

    def _warn_no_containment(self) -> None:
        """Once per engine: the bundle asks for the Grow from Seeds containment and it is not installed."""
        if not self._warned_no_containment:
            self._warned_no_containment = True
            warnings.warn(f"{self.name}: propagating without the Grow from Seeds containment the bundle asks for "
                          f"(it keeps the memory network from running on into look-alike neighbours; needs 3D "
                          f"Slicer or the slicer-core wheel: pip install \"IMISSegment[growcut]\")",
                          RuntimeWarning, stacklevel=2)

    def growcut_available(self) -> bool:
        if self._growcut_available is None:
            from .growcut import growcut_available
            self._growcut_available = growcut_available()
        return self._growcut_available

    def _walk_step(self, axis: int, index: int, previous: np.ndarray) -> np.ndarray:
        """The next slice's mask from the previous one: its box grown by ``propagation_margin_px`` and a click
        at its interior point; a mask that grows past ``propagation_growth_limit`` is a leak and ends the walk."""
        volume = self.volume
        raw = slice_of(volume.array, axis, index)
        rows, cols = plane_axes(axis)
        spacing = (volume.spacing[rows], volume.spacing[cols])
        box = grow_box(mask_bbox(previous), self.propagation_margin_px, previous.shape)
        r, c = interior_point(previous, spacing)
        request = SliceRequest(axis=axis, index=index, image=apply_window(raw, volume.window), raw=raw,
                               spacing=spacing, clicks=[(r, c, True)], box=box,
                               window_kind=volume.window_kind)
        mask = self.predict_slice(request).mask
        if mask.sum() > self.propagation_growth_limit * previous.sum() + 16:
            return np.zeros_like(mask)
        return mask

    def describe(self) -> dict:
        info = super().describe()
        info.update(bundle=str(self.bundle_dir) if self.bundle_dir else None, input_size=self.size,
                    version=self.info.get("version"), stages=sorted(self.info.get("stages", {})))
        return info


def _check_device(device: str) -> str:
    device = str(device)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return device


class OnnxClickEngine(ClickNetEngineBase):
    """A click-network bundle run by onnxruntime.

    ``device``: "auto" (CUDA when onnxruntime has the CUDA provider, else CPU), "cpu", "cuda" or "cuda:N".
    ``num_threads``: onnxruntime intra-op threads (default ``$IMIS_SEGMENT_THREADS`` or 2).
    """

    def __init__(self, bundle_dir, info: Optional[dict] = None, device: str = "auto", num_threads=None) -> None:
        try:
            with deferred():   # an interrupt must not pass for "not installed" (IMISSegmentLib.interrupts)
                import onnxruntime
        except ImportError as error:
            raise EngineUnavailableError(f"onnxruntime is not installed ({error}); install it with: "
                                         f"{ONNX_INSTALL_HINT}") from error
        if info is None:
            from ..models import read_bundle_info
            info = read_bundle_info(bundle_dir)
        super().__init__(bundle_dir, info)
        device = _check_device(device)
        self.num_threads = resolve_threads(num_threads)
        stage = self.info.get("stages", {}).get(SLICE_STAGE)
        if not stage:
            raise InputError(f"{bundle_dir}: the bundle has no '{SLICE_STAGE}' stage")
        available = onnxruntime.get_available_providers()
        wants_cuda = device != "cpu"
        if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise EngineUnavailableError(f"device {device!r} was asked for but onnxruntime has no CUDA provider "
                                         f"(available: {', '.join(available)}); install onnxruntime-gpu")
        providers = []
        if wants_cuda and "CUDAExecutionProvider" in available:
            device_id = int(device.split(":")[1]) if ":" in device else 0
            providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
        providers.append("CPUExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        # no busy-waiting between runs: one run per click, and the CPU is shared with the rest of the app
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session, self._input_names = _click_session(onnxruntime, Path(bundle_dir) / stage["file"], options,
                                                         providers)
        self.propagated_session = None
        if self.corrects_propagated:
            path = Path(bundle_dir) / self.info["stages"][PROPAGATED_STAGE]["file"]
            self.propagated_session, names = _click_session(onnxruntime, path, options, providers)
            if names != ["image", "prompts"]:
                raise InputError(f"{path}: the propagated-slice correction network takes no text; got inputs {names}")
        self.providers = self.session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        if "text" in self.info and "text" in self._input_names:
            from ..text import load_bundle_vocabulary
            self.use_text_vocabulary(load_bundle_vocabulary(bundle_dir, self.info))
        self.localiser_session = None
        self.localiser = self.localiser_settings()
        if self.localiser is not None:
            from .text_localiser import LOCALISER_STAGE
            path = Path(bundle_dir) / self.info["stages"][LOCALISER_STAGE]["file"]
            self.localiser_session = _onnx_session(onnxruntime, path, options, providers)
            names = [i.name for i in self.localiser_session.get_inputs()]
            if names != ["image"]:
                raise InputError(f"{path}: the text localiser takes one input 'image'; got inputs {names}")
            self.localiser.check_maps(self.localiser_session.get_outputs()[0].shape[1], path)
        if "propagation" in self.info:
            from ..propagation.stages import OnnxPropagationStages
            self.use_propagation_stages(OnnxPropagationStages(bundle_dir, self.info, providers, options))
        if "fusion" in self.info:
            from ..fusion.quality import OnnxQualityStage, has_fusion_network
            self.use_fusion(OnnxQualityStage(bundle_dir, self.info, providers, options)
                            if has_fusion_network(self.info) else None)

    def run_network(self, image: np.ndarray, prompts: np.ndarray, text: Optional[np.ndarray] = None,
                    on_propagated: bool = False) -> np.ndarray:
        feed = {"image": np.ascontiguousarray(image, np.float32), "prompts": np.ascontiguousarray(prompts, np.float32)}
        if on_propagated and text is None and self.propagated_session is not None:
            return self.propagated_session.run(None, feed)[0]
        if "text" in self._input_names:   # no text: the zero code, which the network's text stage ignores
            feed["text"] = np.zeros((len(image), 2), np.int64) if text is None else np.ascontiguousarray(text, np.int64)
        return self.session.run(None, feed)[0]

    def run_localiser(self, image: np.ndarray) -> np.ndarray:
        return self.localiser_session.run(None, {"image": np.ascontiguousarray(image, np.float32)})[0]

    def describe(self) -> dict:
        info = super().describe()
        info.update(runtime="onnxruntime", providers=list(self.providers), num_threads=self.num_threads)
        return info


def _onnx_session(onnxruntime, path: Path, options, providers):
    """An onnxruntime session of a bundle's graph; InputError naming the file when it cannot load."""
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: onnxruntime cannot load this model ({type(error).__name__}: {error})") from None


def _click_session(onnxruntime, path: Path, options, providers):
    """(onnxruntime session, input names) for a click-network graph; InputError naming the file otherwise."""
    session = _onnx_session(onnxruntime, path, options, providers)
    names = [i.name for i in session.get_inputs()]
    if names not in (["image", "prompts"], ["image", "prompts", "text"]):
        raise InputError(f"{path}: expected model inputs ['image', 'prompts'] or ['image', 'prompts', 'text'], "
                         f"got {names}")
    return session, names


def load_onnx_bundle(bundle_dir, info: dict, device: str = "auto") -> OnnxClickEngine:
    """The ``register_bundle_engine`` factory for bundles whose engine is "onnx"."""
    return OnnxClickEngine(bundle_dir, info, device=device)


def default_click_engine(device: str = "auto", num_threads=None) -> OnnxClickEngine:
    """The engine named "clicknet": the installed click-network bundle (``$IMIS_SEGMENT_MODEL`` or
    Resources/models/default) run by onnxruntime; EngineUnavailableError when none is installed."""
    from ..models import BUNDLE_INFO, default_bundle_dir

    bundle = default_bundle_dir()
    if not (bundle / BUNDLE_INFO).is_file():
        raise EngineUnavailableError(f"no click-network bundle at {bundle}: train and export one "
                                     "(training/README.md) or set IMIS_SEGMENT_MODEL to a bundle folder")
    return OnnxClickEngine(bundle, device=device, num_threads=num_threads)
