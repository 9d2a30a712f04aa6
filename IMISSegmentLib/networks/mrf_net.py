"""The multi-round fusion (MRF) quality network (DESIGN.md, network 3), after LIM-Net.

Given one slice and two candidate masks of it -- the previous round's and the current round's -- it
scores how likely the previous mask is the better one. Inference keeps, slice by slice, the mask it
prefers (:mod:`IMISSegmentLib.fusion`), so a correction on one slice cannot spoil slices it never fixed.

Input: (B, 3, S, S) = image (0..1), previous mask, current mask, cropped around the union of the two masks
(square in mm, :func:`IMISSegmentLib.fusion.quality.fusion_inputs`) and resampled to ``input_size``
(64 x 64 by default). The graph adds the masks' difference as a fourth channel. ``context`` (B, 2): the slice's
distances to this round's and to older prompted slices (:func:`IMISSegmentLib.fusion.quality.slice_context`),
joined to the pooled features. Output: (B, 1) logit of "the previous mask is better".

Stages (named submodules): ``stem`` (stride 2) -> ``levels`` (ResNet-style, stride 2 each) -> ``head``
(global average and max pooling, two linear layers). GroupNorm throughout: no batch statistics. About 30
MFLOPs per slice at 64 x 64, so fusing a round's 30-100 changed slices costs tens of milliseconds on a CPU.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .prop_net import Residual, _conv_norm_relu, _level

DEFAULT_CONFIG = {
    "input_size": 64,
    # widths of the stem and of each stride-2 level
    "stem": 12,
    "widths": [16, 32, 48],
    "blocks": [1, 1, 1],
    "hidden": 32,
    # scalar context features joined to the pooled image features
    "context": 2,
}


def make_config(overrides=None) -> dict:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config.update(copy.deepcopy(overrides or {}))
    if len(config["widths"]) != len(config["blocks"]) or not config["widths"]:
        raise ValueError(f"mrf net config: 'widths' and 'blocks' must be non-empty and of equal length, "
                         f"got {config['widths']} and {config['blocks']}")
    size = int(config["input_size"])
    step = 2 ** (len(config["widths"]) + 1)   # the stem and every level halve the grid
    if size < 2 * step or size % step:
        raise ValueError(f"mrf net config: input_size must be a multiple of {step} and >= {2 * step}, got {size}")
    return config


class MrfNet(nn.Module):
    """(image, previous mask, current mask) -> logit that the previous mask is the better one."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = make_config(config)
        c = self.config
        self.stem = nn.Sequential(_conv_norm_relu(4, c["stem"], 2), Residual(c["stem"]))
        levels, width = [], c["stem"]
        for out, blocks in zip(c["widths"], c["blocks"]):
            levels.append(_level(width, out, blocks))
            width = out
        self.levels = nn.Sequential(*levels)
        self.head = nn.Sequential(nn.Linear(2 * width + int(c["context"]), c["hidden"]), nn.ReLU(inplace=True),
                                  nn.Linear(c["hidden"], 1))

    def forward(self, inputs, context):
        """(B, 3, S, S) image, previous, current and (B, context) features -> (B, 1) logits."""
        previous, current = inputs[:, 1:2], inputs[:, 2:3]
        x = self.levels(self.stem(torch.cat([inputs, previous - current], 1)))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), context], 1)
        return self.head(pooled)


def build_mrf_net(config=None, seed=None) -> MrfNet:
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return MrfNet(config)
    return MrfNet(config)
