"""Simulated interaction for training (IMIS-Net's scheme, with the evaluation's simulated user).

One training step on a batch (:func:`interactive_step`):

1. first prompt per sample: for a sample with a propagated prior (``has_prior``, training/data/datasets.py), the
   prior is the previous-mask channel (binary, as a session feeds a propagated mask) and the first prompt
   is the simulated user's correction click for it (negative where the structure has ended), or with
   probability ``confirm_click_prob`` a positive click on the structure as a first click is placed, whatever
   the prior has right there (a name's answer and then a click on the structure: the prior must stay where it
   is right); otherwise a
   box (probability ``box_prob``; the tight box with each side moved by up to ``box_jitter_px`` = 5 px) or a click (with probability ``center_click_prob`` at the distance-transform
   maximum, as :mod:`IMISSegmentLib.evaluation.simulated_user` places it, otherwise a random pixel of the
   structure's interior, as IMIS samples its first point);
2. ``n`` correction rounds, ``n`` drawn from 0 .. ``max_rounds`` (K = 8): the network predicts (no gradient,
   eval mode, as RITM simulates), then each sample gets the click
   :func:`IMISSegmentLib.evaluation.simulated_user.next_click` gives for its prediction, and the sigmoid of
   the logits is fed back as the previous-mask channel (IMIS feeds its low-resolution logits back);
3. a final prediction with gradient; loss = ``focal_weight`` x focal + ``dice_weight`` x dice (20 : 1), over
   the valid (unpadded) pixels. With ``grad_rounds="all"`` every round is predicted with gradient and the
   losses are averaged (IMIS-style, slower).

Prompt maps come from :func:`IMISSegmentLib.prompts.encode_prompt_maps`, the function the engines use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from IMISSegmentLib.evaluation.simulated_user import interior_point, next_click
from IMISSegmentLib.prompts import CLICK_RADIUS_PX, encode_prompt_maps
from IMISSegmentLib.settings import settings_from_dict


@dataclass
class InteractionConfig:
    max_rounds: int = 8
    box_prob: float = 0.5
    box_jitter_px: int = 5
    center_click_prob: float = 0.5
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    grad_rounds: str = "last"          # "last" (RITM) or "all" (IMIS)
    click_radius_px: float = CLICK_RADIUS_PX
    confirm_click_prob: float = 0.0    # a sample with a prior: a first click on the structure, not a correction

    @classmethod
    def from_dict(cls, values=None) -> "InteractionConfig":
        config = settings_from_dict(cls, values, "interaction")
        if config.grad_rounds not in ("last", "all"):
            raise ValueError(f"grad_rounds must be 'last' or 'all', got {config.grad_rounds!r}")
        if not 0.0 <= config.confirm_click_prob <= 1.0:
            raise ValueError(f"confirm_click_prob must be in 0..1, got {config.confirm_click_prob!r}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prompts:
    """One sample's prompts at network resolution: clicks (row, col, positive) and an optional box."""

    clicks: list
    box: tuple | None = None


def first_prompt(label: np.ndarray, valid: np.ndarray, rng, config: InteractionConfig) -> Prompts:
    """The first prompt for a (S, S) bool ``label`` (see the module docstring)."""
    if rng.random() < config.box_prob:
        rows, cols = np.nonzero(label)
        limit_r = int(np.nonzero(valid.any(axis=1))[0].max())
        limit_c = int(np.nonzero(valid.any(axis=0))[0].max())
        jitter = lambda: int(rng.integers(-config.box_jitter_px, config.box_jitter_px + 1))  # noqa: E731
        r0, r1 = rows.min() + jitter(), rows.max() + jitter()
        c0, c1 = cols.min() + jitter(), cols.max() + jitter()
        r0, r1 = sorted((int(np.clip(r0, 0, limit_r)), int(np.clip(r1, 0, limit_r))))
        c0, c1 = sorted((int(np.clip(c0, 0, limit_c)), int(np.clip(c1, 0, limit_c))))
        return Prompts([], (r0, c0, r1, c1))
    if rng.random() < config.center_click_prob:
        r, c = interior_point(label)
    else:
        interior = ndimage.binary_erosion(label, iterations=2)
        candidates = np.argwhere(interior if interior.any() else label)
        r, c = candidates[rng.integers(len(candidates))]
    return Prompts([(int(r), int(c), True)])


def first_prompts(batch: dict, labels: np.ndarray, valid: np.ndarray, rng, config: InteractionConfig):
    """(prompts, previous (B, S, S) or None) for a batch: a sample with a propagated prior starts from it and
    the correction click for it; the others from :func:`first_prompt`."""
    flags = batch.get("has_prior")
    if flags is None or not np.any(flags):
        return [first_prompt(lab, ok, rng, config) for lab, ok in zip(labels, valid)], None
    priors = batch["prior"][:, 0] > 0.5
    previous = np.zeros(labels.shape, np.float32)
    prompts = []
    for lab, ok, prior, flag, out in zip(labels, valid, priors, flags, previous):
        click = next_click(prior & ok, lab) if flag else None
        if click is None:   # no prior, or the prior is already right: an ordinary first prompt
            prompts.append(first_prompt(lab, ok, rng, config) if lab.any() else Prompts([]))
            continue
        out[...] = prior & ok
        if lab.any() and config.confirm_click_prob > 0 and rng.random() < config.confirm_click_prob:
            # a click on the structure over the prior (no draw at 0: earlier runs' random streams stay as they were)
            prompts.append(first_prompt(lab, ok, rng, replace(config, box_prob=0.0)))
            continue
        prompts.append(Prompts([(int(click.point[0]), int(click.point[1]), bool(click.positive))]))
    return prompts, previous


def shown_images(batch: dict, gamma: float) -> np.ndarray:
    """The batch's images as an engine whose bundle has ``input_gamma`` = ``gamma`` shows them to the click network:
    raised to ``gamma`` where the sample's volume was normalised by its percentiles (``percentile``, set by
    training/data/datasets.make_sample), as they are for CT in Hounsfield units, phantoms and samples that do
    not say (the engine applies the gamma to "percentile" slices only)."""
    images = batch["image"]
    flags = np.asarray(batch.get("percentile", np.zeros(len(images), bool)), bool).reshape(-1)
    if float(gamma) == 1.0 or not flags.any():
        return images
    out = np.array(images, np.float32, copy=True)
    out[flags] = np.power(np.clip(out[flags], 0.0, 1.0), np.float32(gamma))
    return out


def prompt_maps(prompts: list, previous: np.ndarray | None, size: int, radius: float) -> np.ndarray:
    """(B, 4, S, S) float32 maps for a batch; ``previous`` (B, S, S) probabilities or None."""
    maps = np.stack([encode_prompt_maps(p.clicks, p.box, None, (size, size), (size, size), radius) for p in prompts])
    if previous is not None:
        maps[:, 3] = previous
    return maps


def focal_loss(logits, target, weight, gamma: float = 2.0, alpha: float = 0.25):
    """Sigmoid focal loss (RetinaNet / SAM), mean over the pixels where ``weight`` is 1."""
    probability = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = probability * target + (1 - probability) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def dice_loss(logits, target, weight, eps: float = 1.0):
    """1 - soft Dice per sample over the valid pixels, averaged over the batch."""
    probability = torch.sigmoid(logits) * weight
    target = target * weight
    dims = tuple(range(1, logits.dim()))
    intersection = (probability * target).sum(dims)
    union = probability.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + eps) / (union + eps)).mean()


def interaction_loss(logits, target, weight, config: InteractionConfig):
    focal = focal_loss(logits, target, weight, config.focal_gamma, config.focal_alpha)
    dice = dice_loss(logits, target, weight)
    return config.focal_weight * focal + config.dice_weight * dice, focal, dice


def dice_scores(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-sample Dice of (B, S, S) bool arrays (1 where both are empty)."""
    inter = np.logical_and(prediction, label).sum(axis=(1, 2))
    total = prediction.sum(axis=(1, 2)) + label.sum(axis=(1, 2))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def add_correction_clicks(prompts: list, prediction: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> None:
    """Append the simulated user's next click to each sample's prompts (in place)."""
    for p, pred, gt, ok in zip(prompts, prediction, labels, valid):
        click = next_click(pred & ok, gt)
        if click is not None:
            p.clicks.append((int(click.point[0]), int(click.point[1]), bool(click.positive)))


def interactive_step(model, batch: dict, rng, config: InteractionConfig, device="cpu", rounds: int | None = None):
    """Simulate one interaction sequence on ``batch`` and return (loss tensor, stats dict).

    ``batch``: numpy ``image``, ``label``, ``valid`` (B, 1, S, S). ``rounds``: correction rounds before the
    loss (default: drawn from 0 .. max_rounds).
    """
    images = torch.from_numpy(batch["image"]).to(device)
    target = torch.from_numpy(batch["label"]).to(device)
    weight = torch.from_numpy(batch["valid"]).to(device)
    labels = batch["label"][:, 0] > 0.5
    valid = batch["valid"][:, 0] > 0.5
    size = images.shape[-1]
    prompts, previous = first_prompts(batch, labels, valid, rng, config)
    rounds = int(rng.integers(0, config.max_rounds + 1)) if rounds is None else int(rounds)
    losses = []
    was_training = model.training
    for _ in range(rounds):
        maps = torch.from_numpy(prompt_maps(prompts, previous, size, config.click_radius_px)).to(device)
        if config.grad_rounds == "all":
            logits = model(images, maps)
            losses.append(interaction_loss(logits, target, weight, config)[0])
            logits = logits.detach()
        else:
            model.eval()
            with torch.no_grad():
                logits = model(images, maps)
            model.train(was_training)
        probability = torch.sigmoid(logits)[:, 0].float().cpu().numpy()
        add_correction_clicks(prompts, probability > 0.5, labels, valid)
        previous = probability * valid
    maps = torch.from_numpy(prompt_maps(prompts, previous, size, config.click_radius_px)).to(device)
    logits = model(images, maps)
    loss, focal, dice = interaction_loss(logits, target, weight, config)
    if losses:
        loss = (sum(losses) + loss) / (len(losses) + 1)
    with torch.no_grad():
        scores = dice_scores((logits[:, 0] > 0).cpu().numpy() & valid, labels)
    return loss, {"loss": float(loss.detach()), "focal": float(focal.detach()), "dice_loss": float(dice.detach()),
                  "dice": float(scores.mean()), "rounds": rounds,
                  "clicks": float(np.mean([len(p.clicks) for p in prompts]))}


@torch.no_grad()
def evaluate_clicks(model, batch: dict, rng, config: InteractionConfig, clicks: int = 5, device="cpu",
                    first: str = "click") -> np.ndarray:
    """Mean Dice after each of ``clicks`` interactions (first prompt ``first``: "click" at the DT maximum or
    "box", tight), as the evaluation protocol runs on a slice; returns an array of ``clicks`` values."""
    model.eval()
    images = torch.from_numpy(batch["image"]).to(device)
    labels = batch["label"][:, 0] > 0.5
    valid = batch["valid"][:, 0] > 0.5
    size = images.shape[-1]
    fixed = InteractionConfig.from_dict({**config.to_dict(), "box_prob": 1.0 if first == "box" else 0.0,
                                         "box_jitter_px": 0, "center_click_prob": 1.0})
    prompts = [first_prompt(lab, ok, rng, fixed) for lab, ok in zip(labels, valid)]
    previous, means = None, []
    for step in range(clicks):
        if step:
            add_correction_clicks(prompts, previous > 0.5, labels, valid)
        maps = torch.from_numpy(prompt_maps(prompts, previous, size, config.click_radius_px)).to(device)
        probability = torch.sigmoid(model(images, maps))[:, 0].float().cpu().numpy() * valid
        means.append(float(dice_scores(probability > 0.5, labels).mean()))
        previous = probability
    return np.array(means)
