"""The propagation network (DESIGN.md, network 2): carries a mask from slice to slice with an XMem-style memory.

Everything runs on a square region of interest (ROI) around the structure, resampled to ``input_size``
(128 x 128 by default; :mod:`IMISSegmentLib.propagation.roi`), so the cost per slice does not depend on
the scan's matrix and small structures are seen at full detail.

Stages (named submodules, as Cutie splits its network; each is exported as its own ONNX graph):

* ``key_encoder`` -- :meth:`PropNet.encode_key`: image (B, 1, S, S) -> features at 1/2, 1/4, 1/8 and the
  memory key at 1/8 with XMem's two extra terms: ``shrinkage`` (B, 1, h, w), >= 1, how sharply this
  position's memory matches, and ``selection`` (B, Ck, h, w) in 0..1, which key channels a query uses;
* ``value_encoder`` -- :meth:`PropNet.encode_value`: image + mask probability + the query's 1/8 features
  -> the memory value (B, Cv, h, w) stored with the key;
* memory read-out -- :func:`read_memory`: anisotropic L2 affinity between the query key and every memory
  key (``-shrinkage * sum_c selection_c (k_c - q_c) ** 2 / sqrt(Ck)``), top-k softmax over the memory,
  weighted sum of the memory values. It has no weights; inference does it in numpy
  (:mod:`IMISSegmentLib.propagation.memory`, same formula) so the memory lives outside the graphs;
* ``decoder`` -- :meth:`PropNet.decode`: read-out + sensory memory + query features + the previous
  slice's mask (a direct prior: without it the network first had to learn to beat copying that mask),
  upsampled with skips from 1/4 and 1/2, a pixel-shuffle head -> logits (B, 1, S, S); and the
  ``sensory`` update (a convolutional GRU over the decoder's 1/8 features and the new mask) run every slice.

Normalisation is GroupNorm: no batch statistics, so training and inference behave alike.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CONFIG = {
    "input_size": 128,
    # key encoder widths at 1/2, 1/4, 1/8 of the input
    "widths": [16, 32, 64],
    # residual blocks per level
    "blocks": [1, 1, 2],
    "key_dim": 32,
    "value_dim": 64,
    "sensory_dim": 16,
    # value encoder's own mask branch widths at 1/2, 1/4, 1/8
    "mask_widths": [8, 16, 32],
    "top_k": 30,
}


def make_config(overrides=None) -> dict:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config.update(copy.deepcopy(overrides or {}))
    for key in ("widths", "blocks", "mask_widths"):
        if len(config[key]) != 3:
            raise ValueError(f"prop net config: '{key}' must have 3 entries (1/2, 1/4, 1/8), got {config[key]}")
    size = int(config["input_size"])
    if size < 16 or size % 8:
        raise ValueError(f"prop net config: input_size must be a multiple of 8 and >= 16, got {size}")
    for key in ("key_dim", "value_dim", "sensory_dim", "top_k"):
        if int(config[key]) < 1:
            raise ValueError(f"prop net config: {key} must be >= 1, got {config[key]}")
    return config


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(4, channels), channels)


def _conv_norm_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_norm_relu(channels, channels),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _norm(channels))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _level(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(_conv_norm_relu(cin, cout, 2), *[Residual(cout) for _ in range(blocks)])


class KeyEncoder(nn.Module):
    """Image -> (f2, f4, f8, key, shrinkage, selection)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        w, b = config["widths"], config["blocks"]
        self.levels = nn.ModuleList([_level(1, w[0], b[0]), _level(w[0], w[1], b[1]), _level(w[1], w[2], b[2])])
        self.key = nn.Conv2d(w[2], config["key_dim"], 3, 1, 1)
        self.shrinkage = nn.Conv2d(w[2], 1, 3, 1, 1)
        self.selection = nn.Conv2d(w[2], config["key_dim"], 3, 1, 1)

    def forward(self, image):
        f2 = self.levels[0](image)
        f4 = self.levels[1](f2)
        f8 = self.levels[2](f4)
        shrinkage = self.shrinkage(f8) ** 2 + 1.0
        return f2, f4, f8, self.key(f8), shrinkage, torch.sigmoid(self.selection(f8))


class ValueEncoder(nn.Module):
    """(image, mask probability, query features f8) -> memory value."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        m, w = config["mask_widths"], config["widths"]
        self.mask_branch = nn.Sequential(_conv_norm_relu(2, m[0], 2), _conv_norm_relu(m[0], m[1], 2),
                                         _conv_norm_relu(m[1], m[2], 2))
        self.fuse = nn.Sequential(_conv_norm_relu(m[2] + w[2], config["value_dim"]), Residual(config["value_dim"]))

    def forward(self, image, mask, f8):
        return self.fuse(torch.cat([self.mask_branch(torch.cat([image, mask], 1)), f8], 1))


class SensoryGRU(nn.Module):
    """Convolutional GRU: the sensory memory, updated from the decoder's 1/8 features and the new mask."""

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, 1, 1)
        self.candidate = nn.Conv2d(cin + hidden, hidden, 3, 1, 1)

    def forward(self, x, h):
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], 1)))
        return (1.0 - update) * h + update * candidate


class Decoder(nn.Module):
    """(f2, f4, f8, read-out, sensory, previous) -> (logits at full size, new sensory).

    ``previous`` (B, 1, S, S) is the mask probability of the slice before, in this slice's ROI: a
    direct prior beside the memory (neighbouring CT / MR slices differ little), entering at 1/8 and 1/2."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        w = config["widths"]
        self.bottleneck = nn.Sequential(
            _conv_norm_relu(w[2] + config["value_dim"] + config["sensory_dim"] + 1, w[2]), Residual(w[2]))
        self.up4 = nn.Conv2d(w[2], w[1], 1, bias=False)
        self.fuse4 = _conv_norm_relu(w[1], w[1])
        self.up2 = nn.Conv2d(w[1], w[0], 1, bias=False)
        self.previous2 = nn.Conv2d(1, w[0], 3, 1, 1)
        self.fuse2 = _conv_norm_relu(w[0], w[0])
        self.head = nn.Sequential(nn.Conv2d(w[0], 4, 1), nn.PixelShuffle(2))
        self.sensory = SensoryGRU(w[2] + 1, config["sensory_dim"])

    def forward(self, f2, f4, f8, readout, sensory, previous):
        x8 = self.bottleneck(torch.cat([f8, readout, sensory, F.avg_pool2d(previous, 8)], 1))
        x = F.interpolate(x8, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.fuse4(self.up4(x) + f4)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.fuse2(self.up2(x) + f2 + self.previous2(F.avg_pool2d(previous, 2)))
        logits = self.head(x)
        small = F.adaptive_avg_pool2d(torch.sigmoid(logits), x8.shape[-2:])
        return logits, self.sensory(torch.cat([x8, small], 1), sensory)


def read_memory(query_key, selection, memory_keys, memory_shrinkage, memory_values, top_k: int):
    """XMem read-out in torch (training). query_key / selection (B, Ck, N); memory_keys (B, Ck, M);
    memory_shrinkage (B, 1, M); memory_values (B, Cv, M) -> (B, Cv, N).

    The numpy twin used at inference is :func:`IMISSegmentLib.propagation.memory.read_memory`."""
    dim = query_key.shape[1]
    a_sq = memory_keys.pow(2).transpose(1, 2) @ selection                      # (B, M, N)
    two_ab = 2.0 * memory_keys.transpose(1, 2) @ (query_key * selection)       # (B, M, N)
    b_sq = (selection * query_key.pow(2)).sum(1, keepdim=True)                # (B, 1, N)
    similarity = (-a_sq + two_ab - b_sq) * memory_shrinkage.transpose(1, 2) / math.sqrt(dim)
    k = min(int(top_k), similarity.shape[1])
    values, indices = similarity.topk(k, dim=1)
    weights = torch.softmax(values, dim=1)
    affinity = torch.zeros_like(similarity).scatter_(1, indices, weights)
    return memory_values @ affinity


class PropNet(nn.Module):
    """The propagation network; see the module docstring for the stages."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = make_config(config)
        self.key_encoder = KeyEncoder(self.config)
        self.value_encoder = ValueEncoder(self.config)
        self.decoder = Decoder(self.config)

    @property
    def feature_size(self) -> int:
        return self.config["input_size"] // 8

    def encode_key(self, image):
        return self.key_encoder(image)

    def encode_value(self, image, mask, f8):
        return self.value_encoder(image, mask, f8)

    def decode(self, f2, f4, f8, readout, sensory, previous):
        return self.decoder(f2, f4, f8, readout, sensory, previous)

    def initial_sensory(self, batch: int, device=None):
        size = self.feature_size
        return torch.zeros(batch, self.config["sensory_dim"], size, size, device=device)

    def forward_sequence(self, images, first_mask, anchor=None):
        """Training / testing path: images (B, T, 1, S, S), first_mask (B, 1, S, S) probability of frame 0
        -> logits (B, T - 1, 1, S, S) for frames 1..T-1. Every frame enters the memory (frame 0 with the
        given mask, later frames with their predicted probability).

        ``anchor`` (index, mask (B, 1, S, S)), 1 <= index < T: a second prompted frame, as a re-propagation after
        a correction sees it (IMISSegmentLib.propagation.propagator): it is in memory from the start (the frames
        before it read it too), and the sweep restarts there from its mask (fresh sensory state, the mask as
        the previous-frame prior). Its own logits in the output are the anchor mask's (a +/-10 stand-in): leave
        that frame out of a loss."""
        batch, length = images.shape[:2]
        f2, f4, f8, key, shrink, select = self.encode_key(images.flatten(0, 1))
        unflat = lambda t: t.view(batch, length, *t.shape[1:])   # noqa: E731
        f2, f4, f8, key, shrink, select = map(unflat, (f2, f4, f8, key, shrink, select))
        keys = [key[:, 0].flatten(2)]
        shrinks = [shrink[:, 0].flatten(2)]
        values = [self.encode_value(images[:, 0], first_mask, f8[:, 0]).flatten(2)]
        at = None
        if anchor is not None:
            at, anchor_mask = int(anchor[0]), anchor[1]
            if not 1 <= at < length:
                raise ValueError(f"anchor frame {at} is outside 1..{length - 1}")
            keys.append(key[:, at].flatten(2))
            shrinks.append(shrink[:, at].flatten(2))
            values.append(self.encode_value(images[:, at], anchor_mask, f8[:, at]).flatten(2))
        sensory = self.initial_sensory(batch, images.device)
        previous = first_mask
        outputs = []
        for t in range(1, length):
            if t == at:   # the prompted frame: its mask stands, already in memory; the sweep restarts from it
                outputs.append((anchor_mask * 2.0 - 1.0) * 10.0)
                sensory, previous = self.initial_sensory(batch, images.device), anchor_mask
                continue
            readout = read_memory(key[:, t].flatten(2), select[:, t].flatten(2), torch.cat(keys, 2),
                                  torch.cat(shrinks, 2), torch.cat(values, 2), self.config["top_k"])
            readout = readout.view(batch, -1, *f8.shape[-2:])
            logits, sensory = self.decode(f2[:, t], f4[:, t], f8[:, t], readout, sensory, previous)
            outputs.append(logits)
            previous = torch.sigmoid(logits)
            if t < length - 1:
                keys.append(key[:, t].flatten(2))
                shrinks.append(shrink[:, t].flatten(2))
                values.append(self.encode_value(images[:, t], previous, f8[:, t]).flatten(2))
        return torch.stack(outputs, 1)

    def forward(self, images, first_mask, anchor=None):
        """:meth:`forward_sequence` (so DistributedDataParallel wraps the training path)."""
        return self.forward_sequence(images, first_mask, anchor)


def build_prop_net(config=None, seed=None) -> PropNet:
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return PropNet(config)
    return PropNet(config)
