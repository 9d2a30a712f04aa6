"""The bundle's text localiser as the text loop's source of previous masks ("localised+click" mode).

At inference a name typed alone on an empty slice is answered by the text localiser (engines/text_localiser.py),
and the clicks that follow correct that answer through the click network with the name: the localiser's
probabilities are the previous-mask channel. The text stage was trained only on clicks from scratch, and with
the localiser's ring of myocardium as the previous mask a click on it erased the ring (validation, 0.7.0:
myocardium 0.6-0.8 Dice from the name alone, 0.1-0.3 after a name and a click). This module gives the loop the
same previous masks the engine would: the localiser run on the batch's whole slices, the code's maps
(both sides for a side-less name), the bundle's threshold and ``min_part_share`` applied as the engine does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.engines.text_localiser import LocaliserSettings, code_logits, main_parts
from IMISSegmentLib.engines.torch_engine import localiser_from_bundle
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.models import read_bundle_info


class LocalisedPrior:
    """``answers(images, codes)`` -> (probabilities (B, S, S) float32, localised (B,) bool) for a batch."""

    def __init__(self, bundle, device="cpu") -> None:
        bundle = Path(bundle)
        info = read_bundle_info(bundle)
        entry = (info.get("text") or {}).get("localiser")
        if entry is None:
            raise InputError(f"{bundle}: the bundle has no text localiser (mode localised+click needs one)")
        self.settings = LocaliserSettings.from_entry(entry, str(bundle))
        self.network = localiser_from_bundle(bundle, info).to(device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def answers(self, images: torch.Tensor, codes: np.ndarray) -> tuple:
        """The engine's name-alone answer on each slice: sigmoid(map - threshold) with the parts that
        ``min_part_share`` drops zeroed; a code the localiser has no map for gives zeros and False."""
        with torch.no_grad():
            logits = self.network(images).float().cpu().numpy()
        size = logits.shape[-2:]
        probabilities = np.zeros((len(codes),) + size, np.float32)
        localised = np.zeros(len(codes), bool)
        for n, code in enumerate(codes):
            channels = self.settings.channels((int(code[0]), int(code[1])))
            if not channels:
                continue
            shifted = code_logits(logits[n], channels) - np.float32(self.settings.threshold)
            mask = shifted > 0.0
            kept = main_parts(mask, self.settings.min_part_share)
            answer = 1.0 / (1.0 + np.exp(-shifted))
            answer[mask & ~kept] = 0.0
            probabilities[n], localised[n] = answer, True
        return probabilities, localised
