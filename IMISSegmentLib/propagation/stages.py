"""The propagation network's stages behind one small interface, run by onnxruntime or by torch.

``encode_key(image (1, 1, S, S))`` -> dict of f2, f4, f8, key, shrinkage, selection;
``encode_value(image, mask probability, f8)`` -> value (1, Cv, h, w);
``decode(f2, f4, f8, readout, sensory, previous mask probability)`` -> (logits (1, 1, S, S), sensory);
``initial_sensory()``.

A bundle holds them as three ONNX graphs (``PROPAGATION_STAGES``: stage name -> file role) plus the torch
state dict of the whole :class:`IMISSegmentLib.networks.prop_net.PropNet` on the key stage, and a
``propagation`` entry: ``{"network": {"class": "PropNet", "config": {...}}, "settings": {...}}``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

PROPAGATION_STAGES = {"key": "prop_key", "value": "prop_value", "decoder": "prop_decoder"}
KEY_OUTPUTS = ("f2", "f4", "f8", "key", "shrinkage", "selection")


def propagation_config(bundle_dir, info: dict) -> dict:
    """The bundle's PropNet config, checked; InputError naming what is missing."""
    entry = info.get("propagation")
    if not isinstance(entry, dict):
        raise InputError(f"{bundle_dir}: the bundle has no 'propagation' entry")
    network = entry.get("network") or {}
    if network.get("class", "PropNet") != "PropNet":
        raise InputError(f"{bundle_dir}: propagation network class {network.get('class')!r} is not supported")
    missing = [s for s in PROPAGATION_STAGES.values() if s not in info.get("stages", {})]
    if missing:
        raise InputError(f"{bundle_dir}: propagation stages missing from 'stages': {', '.join(missing)}")
    config = dict(network.get("config") or {})
    for key in ("input_size", "sensory_dim", "top_k"):
        if key not in config:
            raise InputError(f"{bundle_dir}: propagation network config lacks '{key}'")
    return config


class _StagesBase:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.size = int(config["input_size"])
        self.top_k = int(config["top_k"])

    def initial_sensory(self) -> np.ndarray:
        side = self.size // 8
        return np.zeros((1, int(self.config["sensory_dim"]), side, side), np.float32)


class OnnxPropagationStages(_StagesBase):
    def __init__(self, bundle_dir, info: dict, providers, options) -> None:
        import onnxruntime

        super().__init__(propagation_config(bundle_dir, info))
        self.sessions = {}
        for role, stage in PROPAGATION_STAGES.items():
            path = Path(bundle_dir) / info["stages"][stage]["file"]
            try:
                self.sessions[role] = onnxruntime.InferenceSession(str(path), options, providers=providers)
            except Exception as error:  # onnxruntime raises its own exception types
                raise InputError(f"{path}: onnxruntime cannot load this model ({type(error).__name__}: {error})") from None

    def encode_key(self, image):
        out = self.sessions["key"].run(None, {"image": np.ascontiguousarray(image, np.float32)})
        return dict(zip(KEY_OUTPUTS, out))

    def encode_value(self, image, mask, f8):
        return self.sessions["value"].run(None, {"image": image, "mask": np.ascontiguousarray(mask, np.float32),
                                                 "f8": f8})[0]

    def decode(self, f2, f4, f8, readout, sensory, previous):
        logits, sensory = self.sessions["decoder"].run(None, {"f2": f2, "f4": f4, "f8": f8,
                                                              "readout": np.ascontiguousarray(readout, np.float32),
                                                              "sensory": sensory,
                                                              "previous": np.ascontiguousarray(previous, np.float32)})
        return logits, sensory


class TorchPropagationStages(_StagesBase):
    def __init__(self, network, device="cpu") -> None:
        import torch

        super().__init__(dict(network.config))
        self.torch, self.network, self.device = torch, network.eval().to(device), device

    def _run(self, function, *arrays):
        torch = self.torch
        with torch.inference_mode():
            out = function(*[torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device) for a in arrays])
        if isinstance(out, tuple):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()

    def encode_key(self, image):
        return dict(zip(KEY_OUTPUTS, self._run(self.network.encode_key, image)))

    def encode_value(self, image, mask, f8):
        return self._run(self.network.encode_value, image, mask, f8)

    def decode(self, f2, f4, f8, readout, sensory, previous):
        return self._run(self.network.decode, f2, f4, f8, readout, sensory, previous)


def torch_propagation_network(bundle_dir, info: dict, map_location="cpu"):
    """The bundle's PropNet with its weights (the key stage's state_dict), in eval mode."""
    from ..models import load_stage_weights
    from ..networks.prop_net import PropNet

    return load_stage_weights(PropNet(propagation_config(bundle_dir, info)), bundle_dir, info,
                              PROPAGATION_STAGES["key"], map_location)
