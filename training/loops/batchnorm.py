"""Batch-norm statistics for an interactive network.

Why this module exists: in iterative training every forward pass holds one round of the interaction for
the whole batch (round 0: box or click alone, the previous-mask channel empty; later rounds: the fed-back
probabilities). Batch statistics therefore differ sharply from round to round and the network learns to
rely on them, while the running averages that inference uses mix all rounds. The first CPU models were
good in training mode and empty for a box alone in eval mode (held-out box Dice 0.08 in eval mode, 0.60
with per-slice statistics, 0.68 after :func:`recalibrate_batchnorm`).

The cure used here (as detection models freeze batch norm when fine-tuning): recompute the running
statistics as an exact average over simulated interactions (:func:`recalibrate_batchnorm`), then keep
batch norm in eval mode for the rest of training (:func:`freeze_batchnorm`), so training sees exactly what
inference sees. The affine weights still learn; batch norm still folds into the convolutions on export.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from IMISSegmentLib.networks.click_net import batchnorm_layers

from training.loops.interaction import InteractionConfig, add_correction_clicks, first_prompt, prompt_maps


def freeze_batchnorm(network: nn.Module, frozen: bool = True) -> int:
    """Keep every batch-norm layer of ``network`` (a ClickNet) in eval mode from now on, also through
    ``train()`` calls (running statistics used, not updated); returns how many layers there are."""
    network.batchnorm_frozen = bool(frozen)
    network.train(network.training)
    return len(batchnorm_layers(network))


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, source, interaction: InteractionConfig, rng, batches: int = 64,
                          batch_size: int = 16, device="cpu", rounds: int | None = None) -> None:
    """Replace the running statistics by their exact average over ``batches`` simulated interactions.

    Each batch from ``source`` (``MixedSource``) gets a first prompt drawn as in training and 0 ..
    ``rounds`` correction rounds (default ``interaction.max_rounds``; 0 = first prompts only, the statistics
    a box or a first click alone needs); every round's forward pass (batch statistics, so the predictions
    that drive the simulated user are the ones training saw) adds to the average.
    """
    layers = batchnorm_layers(network)
    if not layers:
        return
    saved = [(layer, layer.momentum) for layer in layers]
    was_training, was_frozen = network.training, getattr(network, "batchnorm_frozen", False)
    network.batchnorm_frozen = False
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None          # cumulative average instead of an exponential one
    max_rounds = interaction.max_rounds if rounds is None else int(rounds)
    network.train()
    try:
        for _ in range(int(batches)):
            batch = source.batch(rng, int(batch_size))
            images = torch.from_numpy(batch["image"]).to(device)
            labels = batch["label"][:, 0] > 0.5
            valid = batch["valid"][:, 0] > 0.5
            size = images.shape[-1]
            prompts = [first_prompt(lab, ok, rng, interaction) for lab, ok in zip(labels, valid)]
            previous = None
            for round_ in range(int(rng.integers(0, max_rounds + 1)) + 1):
                if round_:
                    add_correction_clicks(prompts, previous > 0.5, labels, valid)
                maps = torch.from_numpy(prompt_maps(prompts, previous, size, interaction.click_radius_px)).to(device)
                probability = torch.sigmoid(network(images, maps))[:, 0].float().cpu().numpy()
                previous = (probability * valid).astype(np.float32)
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
        network.batchnorm_frozen = was_frozen
        network.train(was_training)
