"""The MRF quality network's inputs and its stage, run by onnxruntime or by torch (numpy in, numpy out).

``fusion_inputs`` builds one slice's (3, S, S) input: the image and both masks cropped to a square ROI (in
mm) around the union of the masks and resampled to S x S. It is shared by inference
(:mod:`IMISSegmentLib.fusion.mrf`) and training (``training/data/mrf_data.py``), so both see the same geometry.

``slice_context`` gives the two distances (to this round's prompted slices and to older ones) the network also
takes. A bundle holds the network as one ONNX graph (stage ``mrf_quality``: ``inputs`` (B, 3, S, S),
``context`` (B, 2) -> ``logits`` (B, 1)) with the torch state dict beside it, and a ``fusion`` entry:
``{"network": {"class": "MrfNet", "config": {...}}, "settings": {...}}``. A bundle without the network may
still have the entry with its settings alone (the direction check, ``"network": false``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..propagation.roi import roi_around

FUSION_STAGE = "mrf_quality"
FUSION_ROI_SCALE = 1.5       # ROI side / extent of the two masks together
FUSION_ROI_MARGIN_MM = 10.0
CONTEXT_SCALE_MM = 30.0      # context distances are given in units of this, capped at CONTEXT_CAP
CONTEXT_CAP = 3.0
CONTEXT_FEATURES = 2


def slice_context(index: int, new_indices, other_indices, spacing_mm: float) -> np.ndarray:
    """(2,) float32: the distance along the propagation axis from this slice to the nearest slice prompted in
    this round, and to the nearest slice prompted before, in units of 30 mm, capped at 3 (none: 3).

    Where the new round's correction is near, its mask is likely the better one; far from it, behind an
    older prompt, the previous round's mask was made by prompts that have not changed."""
    def nearest(indices):
        distances = [abs(int(index) - int(i)) * float(spacing_mm) for i in indices]
        return min(min(distances) / CONTEXT_SCALE_MM, CONTEXT_CAP) if distances else CONTEXT_CAP
    return np.array([nearest(new_indices), nearest(other_indices)], np.float32)


def fusion_inputs(image: np.ndarray, previous: np.ndarray, current: np.ndarray, spacing, size: int,
                  scale: float = FUSION_ROI_SCALE, margin_mm: float = FUSION_ROI_MARGIN_MM) -> np.ndarray:
    """(3, size, size) float32: image (0..1), previous and current mask, around the union of the masks.

    At least one mask must be non-empty (slices where both are empty need no decision)."""
    union = np.logical_or(previous, current)
    roi = roi_around(union, spacing, scale=scale, margin_mm=margin_mm)
    return np.stack([roi.crop(np.asarray(image, np.float32), size),
                     roi.crop(np.asarray(previous, np.float32), size),
                     roi.crop(np.asarray(current, np.float32), size)])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def has_fusion_network(info: dict) -> bool:
    """Whether the bundle's ``fusion`` entry names the MRF quality network (else its settings stand alone)."""
    entry = info.get("fusion")
    return isinstance(entry, dict) and "network" in entry


def fusion_config(bundle_dir, info: dict) -> dict:
    """The bundle's MrfNet config, checked; InputError naming what is missing."""
    entry = info.get("fusion")
    if not isinstance(entry, dict):
        raise InputError(f"{bundle_dir}: the bundle has no 'fusion' entry")
    network = entry.get("network") or {}
    if network.get("class", "MrfNet") != "MrfNet":
        raise InputError(f"{bundle_dir}: fusion network class {network.get('class')!r} is not supported")
    if FUSION_STAGE not in info.get("stages", {}):
        raise InputError(f"{bundle_dir}: the fusion stage '{FUSION_STAGE}' is missing from 'stages'")
    config = dict(network.get("config") or {})
    if "input_size" not in config:
        raise InputError(f"{bundle_dir}: fusion network config lacks 'input_size'")
    return config


class OnnxQualityStage:
    """``score(inputs (N, 3, S, S), context (N, 2))`` -> (N,) probability that the previous mask is the better one."""

    def __init__(self, bundle_dir, info: dict, providers, options) -> None:
        import onnxruntime

        self.config = fusion_config(bundle_dir, info)
        self.size = int(self.config["input_size"])
        path = Path(bundle_dir) / info["stages"][FUSION_STAGE]["file"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise InputError(f"{path}: onnxruntime cannot load this model ({type(error).__name__}: {error})") from None

    def score(self, inputs: np.ndarray, context: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"inputs": np.ascontiguousarray(inputs, np.float32),
                                         "context": np.ascontiguousarray(context, np.float32)})[0]
        return _sigmoid(logits.reshape(-1))


class TorchQualityStage:
    def __init__(self, network, device="cpu") -> None:
        import torch

        self.config = dict(network.config)
        self.size = int(self.config["input_size"])
        self.torch, self.network, self.device = torch, network.eval().to(device), device

    def score(self, inputs: np.ndarray, context: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(self.device),
                                  torch.from_numpy(np.ascontiguousarray(context, np.float32)).to(self.device))
        return _sigmoid(logits.float().cpu().numpy().reshape(-1))


def torch_fusion_network(bundle_dir, info: dict, map_location="cpu"):
    """The bundle's MrfNet with its weights (the stage's state_dict), in eval mode."""
    from ..models import load_stage_weights
    from ..networks.mrf_net import MrfNet

    return load_stage_weights(MrfNet(fusion_config(bundle_dir, info)), bundle_dir, info, FUSION_STAGE, map_location)
