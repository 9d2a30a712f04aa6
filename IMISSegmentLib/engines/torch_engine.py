"""The click network run by torch from the same bundle (its state dict), for parity checks and GPU training
loops; the pipeline around the network is :class:`~IMISSegmentLib.engines.onnx_engine.ClickNetEngineBase`'s.

torch is imported only when the engine is built. A bundle's torch weights are the ``state_dict`` entry of
its slice stage (``{"file": "click_net.pt", "sha256": ...}``), checked by ``read_bundle_info``; the
network architecture comes from the bundle's ``network`` entry (class and config dict).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import EngineUnavailableError, InputError
from ..interrupts import deferred
from .onnx_engine import PROPAGATED_STAGE, SLICE_STAGE, ClickNetEngineBase, _check_device

TORCH_INSTALL_HINT = 'pip install "IMISSegment[train]" (torch 2.13.0)'


def _import_torch():
    try:
        with deferred():   # an interrupt must not pass for "not installed" (IMISSegmentLib.interrupts)
            import torch
    except ImportError as error:
        raise EngineUnavailableError(f"torch is not installed ({error}); install it with: {TORCH_INSTALL_HINT}") from error
    return torch


def network_from_bundle(bundle_dir, info: dict, map_location="cpu", stage: str = SLICE_STAGE):
    """The ClickNet of a bundle's ``stage`` (the slice network, or ``slice_propagated``: its entry
    ``propagated_correction``) with its weights loaded, in eval mode."""
    _import_torch()
    from ..models import load_stage_weights
    from ..networks.click_net import ClickNet

    entry = info if stage == SLICE_STAGE else (info.get("propagated_correction") or {})
    network = entry.get("network") or {}
    if network.get("class", "ClickNet") != "ClickNet":
        raise InputError(f"{bundle_dir}: network class {network.get('class')!r} is not supported (expected ClickNet)")
    return load_stage_weights(ClickNet(network.get("config")), bundle_dir, info, stage, map_location)


def localiser_from_bundle(bundle_dir, info: dict, map_location="cpu"):
    """The bundle's text localiser (IMISSegmentLib.networks.text_localiser) with its weights, in eval mode."""
    _import_torch()
    from ..models import load_stage_weights
    from ..networks.text_localiser import TextLocaliser
    from .text_localiser import LOCALISER_STAGE

    network = (info.get("stages", {}).get(LOCALISER_STAGE) or {}).get("network") or {}
    if network.get("class") != "TextLocaliser":
        raise InputError(f"{bundle_dir}: the text localiser's network class {network.get('class')!r} is not supported "
                         f"(expected TextLocaliser)")
    try:
        localiser = TextLocaliser(network.get("config"))
    except ValueError as error:
        raise InputError(f"{bundle_dir}: the text localiser's config cannot be read ({error})") from None
    return load_stage_weights(localiser, bundle_dir, info, LOCALISER_STAGE, map_location)


class TorchClickEngine(ClickNetEngineBase):
    """A click-network bundle run by torch. ``device``: "auto", "cpu", "cuda", "cuda:N"; ``num_threads``
    sets ``torch.set_num_threads`` (process-wide) when given."""

    def __init__(self, bundle_dir, info: Optional[dict] = None, device: str = "auto", num_threads=None) -> None:
        torch = _import_torch()
        if info is None:
            from ..models import read_bundle_info
            info = read_bundle_info(bundle_dir)
        super().__init__(bundle_dir, info)
        device = _check_device(device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailableError(f"device {device!r} was asked for but torch sees no CUDA device")
        if num_threads is not None:
            if int(num_threads) < 1:
                raise InputError(f"num_threads must be at least 1, got {num_threads!r}")
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        self.device = torch.device(device)
        self.network = network_from_bundle(bundle_dir, self.info).to(self.device)
        self.propagated_network = (network_from_bundle(bundle_dir, self.info, stage=PROPAGATED_STAGE).to(self.device)
                                   if self.corrects_propagated else None)
        if "text" in self.info and self.network.text is not None:
            from ..text import load_bundle_vocabulary
            self.use_text_vocabulary(load_bundle_vocabulary(bundle_dir, self.info))
        self.localiser_network = None
        self.localiser = self.localiser_settings()
        if self.localiser is not None:
            self.localiser_network = localiser_from_bundle(bundle_dir, self.info).to(self.device)
            self.localiser.check_maps(self.localiser_network.config["codes"], bundle_dir)
        if "propagation" in self.info:
            from ..propagation.stages import TorchPropagationStages, torch_propagation_network
            self.use_propagation_stages(TorchPropagationStages(torch_propagation_network(bundle_dir, self.info),
                                                               self.device))
        if "fusion" in self.info:
            from ..fusion.quality import TorchQualityStage, has_fusion_network, torch_fusion_network
            self.use_fusion(TorchQualityStage(torch_fusion_network(bundle_dir, self.info), self.device)
                            if has_fusion_network(self.info) else None)

    def run_network(self, image: np.ndarray, prompts: np.ndarray, text: Optional[np.ndarray] = None,
                    on_propagated: bool = False) -> np.ndarray:
        torch = self._torch
        network = self.network
        if on_propagated and text is None and self.propagated_network is not None:
            network = self.propagated_network
        if text is not None:
            text = torch.from_numpy(np.ascontiguousarray(text, np.int64)).to(self.device)
        with torch.inference_mode():
            logits = network(torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(self.device),
                             torch.from_numpy(np.ascontiguousarray(prompts, np.float32)).to(self.device), text)
        return logits.float().cpu().numpy()

    def run_localiser(self, image: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.localiser_network(torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(self.device))
        return logits.float().cpu().numpy()

    def describe(self) -> dict:
        info = super().describe()
        info.update(runtime="torch", device=str(self.device))
        return info


def load_torch_bundle(bundle_dir, info: dict, device: str = "auto") -> TorchClickEngine:
    """The ``register_bundle_engine`` factory for bundles whose engine is "torch"."""
    return TorchClickEngine(bundle_dir, info, device=device)
