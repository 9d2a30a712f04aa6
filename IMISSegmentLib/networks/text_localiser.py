"""The text localiser: one slice -> a logit map per structure it knows (semantic segmentation, no prompt).

A typed name alone gives the 2D network nothing to point at: its text stage (click_net.TextConditioning) only
modulates click weights trained to answer a click or a box, and on real scans it finds almost nothing from a
name alone. The localiser is the click network's body (encoder, context, decoder: the same EfficientNet-Lite0
levels, started from the shipped click weights) with a head of one output map per structure code
(``codes``: [category id, side id] of :class:`IMISSegmentLib.text.Vocabulary`), the prompt maps held at zero.
The engine answers a name alone on a slice without a mask with the code's map (engines/text_localiser.py).

Input ``image`` (B, 1, S, S) as the click network's; output ``logits`` (B, len(codes), S, S).
"""
from __future__ import annotations

import copy

from torch import nn

from .click_net import ClickNet, PixelHead, make_config as click_config


def make_config(overrides=None) -> dict:
    """{"body": a click network config (its text stage dropped), "codes": [[category, side], ...]}, checked."""
    overrides = copy.deepcopy(overrides or {})
    unknown = sorted(set(overrides) - {"body", "codes"})
    if unknown:
        raise ValueError(f"text localiser config: unknown keys {unknown} (known: body, codes)")
    body = click_config({**dict(overrides.get("body") or {}), "text": None})
    codes = overrides.get("codes")
    if (not isinstance(codes, (list, tuple)) or not codes
            or not all(isinstance(c, (list, tuple)) and len(c) == 2 for c in codes)):
        raise ValueError(f"text localiser config: codes must be a non-empty list of [category, side], got {codes!r}")
    codes = [[int(c), int(s)] for c, s in codes]
    if any(c < 1 or s not in (0, 1, 2) for c, s in codes) or len({tuple(c) for c in codes}) != len(codes):
        raise ValueError(f"text localiser config: codes must be distinct [category >= 1, side 0..2], got {codes}")
    return {"body": body, "codes": codes}


class TextLocaliser(nn.Module):
    """``forward(image) -> logits`` (B, len(codes), S, S); see the module docstring."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = make_config(config)
        self.body = ClickNet(self.config["body"])
        patch = self.config["body"]["patch"]
        self.body.head = PixelHead(self.config["body"]["widths"][0], patch, len(self.config["codes"]))
        self.prompt_channels = self.config["body"]["in_prompt_channels"]

    @property
    def stride(self) -> int:
        return self.body.stride

    def forward(self, image):
        prompts = image.new_zeros((image.shape[0], self.prompt_channels, image.shape[2], image.shape[3]))
        return self.body.decode(self.body.encode(image, prompts))


def from_click_net(click: ClickNet, codes) -> TextLocaliser:
    """A localiser whose body starts from ``click``'s weights (its head and any text stage left out); the new
    head starts near "nothing here" (bias -4) so that early steps do not flood every map."""
    body = {k: v for k, v in click.config.items() if k != "text"}
    localiser = TextLocaliser({"body": body, "codes": codes})
    state = {k: v for k, v in click.state_dict().items() if not k.startswith(("text.", "head."))}
    missing, unexpected = localiser.body.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"click network weights do not fit the localiser body: missing {missing}, "
                         f"unexpected {unexpected}")
    nn.init.normal_(localiser.body.head.conv.weight, std=0.01)
    nn.init.constant_(localiser.body.head.conv.bias, -4.0)
    return localiser
