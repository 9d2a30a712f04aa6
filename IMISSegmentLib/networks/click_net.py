"""The 2D interactive network (DESIGN.md, network 1): one slice + prompt maps -> mask logits.

Inputs at network resolution (256 x 256 by default, any size divisible by ``2 ** (len(widths) - 1)``):

* ``image``   (B, 1, H, W): the slice normalised to 0..1 (``IMISSegmentLib.normalize``);
* ``prompts`` (B, 4, H, W): :func:`IMISSegmentLib.prompts.encode_prompt_maps` channels: positive click
  disks, negative click disks, box map, previous mask or previous probability (sigmoid of the last logits);

* ``text``    (B, 2) int64, optional (networks built with a ``text`` config): the text prompt as (category id,
  side id) of :class:`IMISSegmentLib.text.Vocabulary`; (0, 0) = no text;

output ``logits`` (B, 1, H, W).

Design (RITM / LIM-Net style, sized for a CPU at 256 x 256):

* ``stem``: early fusion. The image and the prompt maps are stacked and folded losslessly into
  ``patch`` x ``patch`` pixel blocks (space-to-depth: 5 x 256 x 256 -> 20 x 128 x 128), then a 3 x 3
  convolution sees image and prompts together (RITM's Conv1S fuses the same way: a sum of convolutions
  is one convolution of the stacked maps). Every full-resolution detail, the 5 px click disks included,
  reaches the network, but no convolution runs at full resolution: on this CPU full-resolution layers
  cost more than the whole rest of the network.
* ``encoder``: strided levels whose widths and depths come from a small config dict (saved in the bundle);
* ``context``: a global-context branch at the bottleneck (a first click on a large organ needs the
  whole slice in view);
* ``decoder``: coarse to fine, each level upsamples, projects and adds the skip (FPN-style addition keeps
  the high-resolution convolutions narrow);
* ``head``: a 1 x 1 convolution to ``patch ** 2`` logits per block, unfolded (depth-to-space) back to
  full resolution, so the output keeps per-pixel detail.

* ``text`` (optional, :class:`TextConditioning`): IMIS-Net's two uses of a text prompt, sized for this CNN: a
  prompt embedding (category + side) that modulates the deep encoder levels and every decoder level
  (FiLM: per-channel scale and shift), and, for text alone, a class-aware term on the mask logits (the
  embedding, projected, dotted with the head's per-pixel features). Text alone and text with clicks / a box
  are different tasks (find the structure vs. shape the one clicked), so the embedding goes to separate
  projections for the two (the prompt maps tell which). Every projection is bias-free and starts at zero, and
  "no text" is the zero embedding, so without text the network computes exactly what it did before the text
  stage was added: a text stage can be trained on top of frozen click weights without changing them.

Stages are named submodules, as Cutie splits its network.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import INPUT_MEAN, INPUT_STD, LEVEL_WIDTHS, LiteStem, lite0_levels

ENCODERS = ("conv", "efficientnet_lite0")
LEVEL_BLOCKS = [1, 2, 2, 6, 5]   # MBConv blocks per level of efficientnet_lite0 (for the record)

DEFAULT_CONFIG = {
    "in_image_channels": 1,
    "in_prompt_channels": 4,
    # space-to-depth factor of the stem: level 0 runs at 1 / patch of the input resolution
    "patch": 2,
    # channels per level: level 0 is the stem's resolution, each next level halves it
    "widths": [16, 32, 64, 96, 128],
    # residual blocks per level after its entry convolution
    "blocks": [0, 1, 1, 2, 2],
    "global_context": True,
    # "conv": the levels above, trained from scratch; "efficientnet_lite0": EfficientNet-Lite0's blocks as the
    # five levels (widths, blocks and patch then fixed by it; ImageNet weights loaded by training), the prompt
    # maps entering through a side branch of its stem (networks/efficientnet_lite.py)
    "encoder": "conv",
    # the efficientnet_lite0 stem's input scaling (x - mean) / std of a 0..1 slice; None: the published weights' own
    # (networks/efficientnet_lite.py INPUT_MEAN, INPUT_STD); unused by the conv encoder
    "input_mean": None,
    "input_std": None,
    # text conditioning: None, or {"categories": rows of the category embedding, "sides": 3, "dim": 64,
    # "film_from": first encoder level modulated (0 = the stem's)}
    "text": None,
}


def make_config(overrides=None) -> dict:
    """DEFAULT_CONFIG updated by ``overrides``, checked."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    config.update(copy.deepcopy(overrides or {}))
    if config["encoder"] not in ENCODERS:
        raise ValueError(f"click net config: encoder must be one of {', '.join(ENCODERS)}, got {config['encoder']!r}")
    if config["encoder"] == "efficientnet_lite0":
        fixed = {"widths": list(LEVEL_WIDTHS), "blocks": list(LEVEL_BLOCKS), "patch": 2}
        given = {k: (overrides or {})[k] for k in fixed if k in (overrides or {})}
        clash = [k for k, v in given.items() if (list(v) if isinstance(v, (list, tuple)) else v) != fixed[k]]
        if clash:
            raise ValueError(f"click net config: the efficientnet_lite0 encoder fixes {', '.join(clash)} "
                             f"({', '.join(f'{k} {fixed[k]}' for k in clash)}); leave them out")
        config.update(fixed)
        if config["input_mean"] is None:
            config["input_mean"] = INPUT_MEAN
        if config["input_std"] is None:
            config["input_std"] = INPUT_STD
        if not float(config["input_std"]) > 0:
            raise ValueError(f"click net config: input_std must be > 0, got {config['input_std']}")
        config["input_mean"], config["input_std"] = float(config["input_mean"]), float(config["input_std"])
    widths, blocks = list(config["widths"]), list(config["blocks"])
    if len(widths) < 2 or len(widths) != len(blocks):
        raise ValueError(f"click net config: 'widths' and 'blocks' must have the same length >= 2, "
                         f"got {widths} and {blocks}")
    if any(int(w) < 1 for w in widths) or any(int(b) < 0 for b in blocks):
        raise ValueError(f"click net config: widths must be >= 1 and blocks >= 0, got {widths} and {blocks}")
    config["widths"], config["blocks"] = [int(w) for w in widths], [int(b) for b in blocks]
    if int(config["patch"]) < 1:
        raise ValueError(f"click net config: patch must be >= 1, got {config['patch']}")
    config["patch"] = int(config["patch"])
    if config.get("text"):
        text = {"categories": 0, "sides": 3, "dim": 64, "film_from": 2, **dict(config["text"])}
        if int(text["categories"]) < 2 or int(text["dim"]) < 1 or not 0 <= int(text["film_from"]) < len(widths):
            raise ValueError(f"click net config: text needs categories >= 2, dim >= 1 and film_from in "
                             f"0..{len(widths) - 1}, got {config['text']}")
        config["text"] = {k: int(v) for k, v in text.items()}
    else:
        config["text"] = None
    return config


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3 x 3 convolutions with batch norm and an identity shortcut (ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.conv2(self.conv1(x)))


class FusionStem(nn.Module):
    """Early fusion: image and prompt maps stacked, one ``2 patch`` x ``2 patch`` convolution of stride ``patch``
    (patchify: every input pixel reaches the network), batch norm, ReLU."""

    def __init__(self, image_channels: int, prompt_channels: int, width: int, patch: int) -> None:
        super().__init__()
        kernel = 2 * patch if patch > 1 else 3
        self.conv = nn.Conv2d(image_channels + prompt_channels, width, kernel, patch, (kernel - patch) // 2 if patch > 1 else 1,
                              bias=False)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, image, prompts):
        return F.relu(self.norm(self.conv(torch.cat([image, prompts], dim=1))))


class PixelHead(nn.Module):
    """1 x 1 conv to ``channels * patch ** 2`` logits per position, depth-to-space back to the input resolution
    (``channels`` output maps: 1 for the click network, one per structure for the text localiser)."""

    def __init__(self, width: int, patch: int, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, channels * patch * patch, 1)
        self.unfold = nn.PixelShuffle(patch) if patch > 1 else nn.Identity()

    def forward(self, x):
        return self.unfold(self.conv(x))


class EncoderLevel(nn.Module):
    """A strided 3 x 3 convolution (halves the resolution) and ``blocks`` residual blocks."""

    def __init__(self, cin: int, cout: int, blocks: int) -> None:
        super().__init__()
        self.down = _conv_bn_relu(cin, cout, stride=2)
        self.blocks = nn.Sequential(*[ResidualBlock(cout) for _ in range(blocks)])

    def forward(self, x):
        return self.blocks(self.down(x))


class GlobalContext(nn.Module):
    """Adds a whole-slice summary (global average pool -> 1 x 1 conv) to every bottleneck position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        return x + self.project(F.adaptive_avg_pool2d(x, 1))


class DecoderLevel(nn.Module):
    """Upsample x2 (bilinear), project to the skip's width (1 x 1), add the skip, one 3 x 3 conv."""

    def __init__(self, cin: int, cskip: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(cin, cskip, 1, bias=False)
        self.fuse = _conv_bn_relu(cskip, cskip)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.fuse(self.project(x) + skip)


class TextConditioning(nn.Module):
    """The text stage (see the module docstring): embeddings, FiLM projections per modulated level and the
    class-aware logit term. Zero-initialised and bias-free: no text (id 0) changes nothing."""

    def __init__(self, categories: int, sides: int, dim: int, encoder_widths: list, decoder_widths: list,
                 head_width: int, patch: int) -> None:
        super().__init__()
        self.category = nn.Embedding(categories, dim)
        self.side = nn.Embedding(sides, dim)
        self.mix = nn.Linear(dim, dim, bias=False)
        # inputs: the embedding where the slice has no click / box, then where it has (2 x dim)
        self.encoder_film = nn.ModuleList(nn.Linear(2 * dim, 2 * w, bias=False) for w in encoder_widths)
        self.decoder_film = nn.ModuleList(nn.Linear(2 * dim, 2 * w, bias=False) for w in decoder_widths)
        # text alone only: with a click or a box the click says where, and a class-wide term would light up
        # every look-alike of the class on the slice (all ribs for "rib" + a click on one)
        self.logit_term = nn.Linear(dim, head_width * patch * patch, bias=False)
        self.patch, self.head_width = patch, head_width
        for layer in [*self.encoder_film, *self.decoder_film, self.logit_term]:
            nn.init.zeros_(layer.weight)
        nn.init.normal_(self.category.weight, std=0.5)
        nn.init.normal_(self.side.weight, std=0.5)

    def embed(self, text, prompts):
        """(B, 2) int64 (category, side) and the prompt maps -> (B, 2 dim): the embedding in the first half
        for slices without clicks or a box, in the second for slices with; exactly zero where the category is 0."""
        present = (text[:, 0:1] > 0).to(self.category.weight.dtype)
        raw = (self.category(text[:, 0]) + self.side(text[:, 1])) * present
        embedding = raw + F.relu(self.mix(raw))
        prompted = (prompts[:, :3].flatten(1).amax(1, keepdim=True) > 0).to(embedding.dtype)
        return torch.cat([embedding * (1 - prompted), embedding * prompted], dim=1)

    @staticmethod
    def film(x, projection, embedding):
        scale, shift = projection(embedding).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1 + scale) + shift

    def logits(self, features, embedding):
        """Class-aware term: per sub-pixel of the head, the features dotted with the projected embedding."""
        batch, _, height, width = features.shape
        weights = self.logit_term(embedding[:, :self.logit_term.in_features])
        weights = weights.view(batch, self.patch * self.patch, self.head_width)
        term = torch.bmm(weights, features.flatten(2)).view(batch, self.patch * self.patch, height, width)
        return F.pixel_shuffle(term, self.patch) if self.patch > 1 else term


class ClickNet(nn.Module):
    """The 2D interactive network: ``forward(image, prompts) -> logits`` (see the module docstring)."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = make_config(config)
        widths, blocks = self.config["widths"], self.config["blocks"]
        patch = self.config["patch"]
        if self.config["encoder"] == "efficientnet_lite0":
            self.stem = LiteStem(self.config["in_image_channels"], self.config["in_prompt_channels"],
                                 mean=self.config["input_mean"], std=self.config["input_std"])
            levels = lite0_levels()
            self.stem_blocks, self.encoder = levels[0], nn.ModuleList(levels[1:])
        else:
            self.stem = FusionStem(self.config["in_image_channels"], self.config["in_prompt_channels"], widths[0],
                                   patch)
            self.stem_blocks = nn.Sequential(*[ResidualBlock(widths[0]) for _ in range(blocks[0])])
            self.encoder = nn.ModuleList(EncoderLevel(widths[i - 1], widths[i], blocks[i])
                                         for i in range(1, len(widths)))
        self.context = GlobalContext(widths[-1]) if self.config["global_context"] else nn.Identity()
        self.decoder = nn.ModuleList(DecoderLevel(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = PixelHead(widths[0], patch)
        text = self.config["text"]
        self.film_from = text["film_from"] if text else len(widths)
        self.text = TextConditioning(text["categories"], text["sides"], text["dim"], widths[self.film_from:],
                                     list(reversed(widths[:-1])), widths[0], patch) if text else None
        # training/loops/batchnorm.py: when True, batch norm stays in eval mode even in train() (frozen statistics)
        self.batchnorm_frozen = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.batchnorm_frozen:
            for layer in batchnorm_layers(self):
                layer.eval()
        return self

    @property
    def stride(self) -> int:
        """Input sizes must be multiples of this."""
        return self.config["patch"] * 2 ** (len(self.config["widths"]) - 1)

    def encode(self, image, prompts, embedding=None) -> list:
        """Features of every level, finest (the stem's) first; ``embedding`` (text) modulates the deep ones."""
        features = [self.stem_blocks(self.stem(image, prompts))]
        for level in self.encoder:
            features.append(level(features[-1]))
        features[-1] = self.context(features[-1])
        if embedding is not None:
            for offset, projection in enumerate(self.text.encoder_film):
                level = self.film_from + offset
                features[level] = self.text.film(features[level], projection, embedding)
        return features

    def decode(self, features: list, embedding=None):
        x = features[-1]
        for number, (level, skip) in enumerate(zip(self.decoder, reversed(features[:-1]))):
            x = level(x, skip)
            if embedding is not None:
                x = self.text.film(x, self.text.decoder_film[number], embedding)
        logits = self.head(x)
        if embedding is not None:
            logits = logits + self.text.logits(x, embedding)
        return logits

    def forward(self, image, prompts, text=None):
        embedding = None
        if self.text is not None:
            if text is None:
                text = torch.zeros((image.shape[0], 2), dtype=torch.long, device=image.device)
            embedding = self.text.embed(text, prompts)
        return self.decode(self.encode(image, prompts, embedding), embedding)


def batchnorm_layers(module: nn.Module) -> list:
    """Every batch-norm layer inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_click_net(config=None, seed=None) -> ClickNet:
    """A ClickNet from a config dict; ``seed`` makes the random initialisation reproducible."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return ClickNet(config)
    return ClickNet(config)
