"""Train the propagation network (IMISSegmentLib/networks/prop_net.py) on slice sequences (training/data/sequences.py).

    python -m training.loops.propagation --config training/configs/prop_net_cpu.json --out runs/prop_net
    torchrun --nproc_per_node=4 -m training.loops.propagation --config ... --out runs/prop_net   # GPUs (nccl)
    torchrun --nproc_per_node=1 -m training.loops.propagation --config ... --out runs/prop_net   # one CPU (gloo)

Each step: a batch of sequences; frame 0 enters the memory with its (possibly corrupted) ground-truth
mask, every later frame is predicted from the memory and the sensory state and enters the memory with
its predicted probability (gradients flow through the whole sequence); loss = BCE + soft Dice per frame.
``data.anchor_fraction`` of the steps are correction rounds: a second frame (2..T-1) is prompted, with its
(possibly corrupted) ground-truth mask, as a re-propagation after a correction click sees the clicked slice:
in memory from the start and the sweep restarts there (PropNet.forward_sequence's ``anchor``; that frame is
left out of the loss). Validation reports both: from frame 0 alone, and with the middle frame prompted too.
The run folder is laid out as training.loops.click_net's (config.json, train.log, metrics.jsonl, resumable
checkpoint.pt); add it to a bundle with ``python -m training.export.propagation --checkpoint runs/prop_net/checkpoint.pt --bundle BUNDLE``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.networks.prop_net import PropNet, make_config

from training.data.datasets import VolumeSliceDataset
from training.data.sequences import (ROI_SCALES, MixedSequences, PhantomSequenceSource, VolumeSequenceSource,
                                     corrupt_mask)
from training.loops.config_check import _check_network, check_config
from training.loops.run import (due, begin_run, close_run, finish_run, log_window, make_optimizer, open_run,
                                optimizer_step, place_run, read_config, read_initial, record_step, restore,
                                run_training_cli, save_checkpoint, will_resume, write_metrics)

DEFAULTS = {
    "name": "prop_net",
    "network": {},
    "data": {"roots": [], "axes": [0, 1, 2], "min_area": 32, "exclude_cases": [], "phantom_fraction": 0.3,
             "phantom_pool": 96, "length": 6, "end_fraction": 0.0, "balance": "none",
             "roi_scale": list(ROI_SCALES), "anchor_fraction": 0.0},
    # held_out "only": validate on the split's validation cases (training/splits/validation.json)
    "validation": {"roots": [], "include_cases": [], "held_out": "skip", "sequences": 48, "length": 8, "every": 0},
    "loss": {"bce_weight": 1.0, "dice_weight": 1.0},
    "optimizer": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 100, "min_lr_ratio": 0.05, "grad_clip": 1.0},
    "steps": 3000,
    "batch_size": 4,
    "checkpoint_every": 200,
    "log_every": 20,
    "seed": 0,
    "num_threads": 2,
    "device": "auto",
    "init_from": None,
}


def load_matching(network, state: dict) -> list:
    """Load ``state`` into ``network``; a weight whose input channels grew (a new input, e.g. the previous
    mask) gets the old channels copied and the new ones zero, so the network starts where the old one was.
    Returns the names of the widened weights; any other mismatch is an error."""
    own = network.state_dict()
    grown = []
    for name, value in state.items():
        target = own.get(name)
        if target is None:
            raise ValueError(f"init_from: the checkpoint has a weight the network lacks: {name}")
        if target.shape != value.shape:
            if target.dim() != value.dim() or target.shape[0] != value.shape[0] or target.shape[2:] != value.shape[2:]:
                raise ValueError(f"init_from: {name} has shape {tuple(value.shape)}, the network {tuple(target.shape)}")
            widened = torch.zeros_like(target)
            widened[:, :value.shape[1]] = value
            value = widened
            grown.append(name)
        own[name] = value
    network.load_state_dict(own, strict=True)
    return grown


def load_config(path) -> dict:
    return read_config(path, DEFAULTS)


def check_prop_config(config: dict) -> dict:
    """training.loops.click_net's check_config with this loop's DEFAULTS and the PropNet section."""
    return check_config(config, DEFAULTS, lambda c: _check_network(c, make_config, "PropNet"))


def _volumes(roots, axes, min_area, include=None, exclude=(), held_out: str = "skip", balance: str = "none"):
    return VolumeSliceDataset(roots, axes=axes, min_area=min_area, size=8, include=include, exclude=exclude,
                              held_out=held_out, balance=balance)


def build_sources(config: dict) -> MixedSequences:
    data, size = config["data"], int(make_config(config["network"])["input_size"])
    real = phantoms = None
    fraction = float(data.get("phantom_fraction", 0.3))
    if data.get("roots") and fraction < 1.0:
        volumes = _volumes(data["roots"], data.get("axes", (0, 1, 2)), int(data["min_area"]),
                           exclude=tuple(data.get("exclude_cases", ())), balance=data.get("balance", "none"))
        real = VolumeSequenceSource(volumes, int(data["length"]), size, int(data["min_area"]),
                                    float(data.get("end_fraction", 0.0)), data.get("roi_scale", ROI_SCALES))
    if fraction > 0.0 or real is None:
        phantoms = PhantomSequenceSource(int(data["length"]), size, int(data.get("phantom_pool", 96)),
                                         int(config["seed"]), roi_scales=data.get("roi_scale", ROI_SCALES))
    return MixedSequences(real, phantoms, fraction)


def build_validation(config: dict):
    val = config["validation"]
    if not val.get("roots"):
        return None
    size = int(make_config(config["network"])["input_size"])
    volumes = _volumes(val["roots"], (0,), int(config["data"]["min_area"]),
                       include=set(val.get("include_cases") or ()) or None, held_out=val.get("held_out", "skip"))
    source = VolumeSequenceSource(volumes, int(val["length"]), size, int(config["data"]["min_area"]))
    rng = np.random.default_rng([int(config["seed"]), 777])
    samples = [source.sample(rng) for _ in range(int(val["sequences"]))]
    for s in samples:   # validation starts from the exact ground truth
        s["first"] = s["labels"][0].copy()
    return {k: np.stack([s[k] for s in samples]) for k in ("images", "labels", "first")}


def sequence_loss(logits, labels, config: dict):
    """logits / labels (B, T, 1, S, S) -> (loss, bce, dice_loss, dice)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    prob = torch.sigmoid(logits)
    inter = (prob * labels).sum((-1, -2, -3))
    union = prob.sum((-1, -2, -3)) + labels.sum((-1, -2, -3))
    dice_loss = (1 - (2 * inter + 1) / (union + 1)).mean()
    loss = float(config["loss"]["bce_weight"]) * bce + float(config["loss"]["dice_weight"]) * dice_loss
    with torch.no_grad():
        hard = (logits > 0).float()
        i = (hard * labels).sum((-1, -2, -3))
        u = hard.sum((-1, -2, -3)) + labels.sum((-1, -2, -3))
        dice = ((2 * i + 1e-6) / (u + 1e-6)).mean()
    return loss, float(bce.detach()), float(dice_loss.detach()), float(dice)


def draw_anchor(batch: dict, config: dict, rng):
    """A correction round for this step (``data.anchor_fraction`` of the steps): (frame, (B, 1, S, S) mask, its
    ground truth spoilt as a 2D network's answer may be); None for a plain step."""
    length = batch["labels"].shape[1]
    if length < 3 or rng.random() >= float(config["data"].get("anchor_fraction", 0.0)):
        return None
    at = int(rng.integers(2, length))
    masks = np.stack([corrupt_mask(label[0] > 0.5, rng).astype(np.float32)[None] for label in batch["labels"][:, at]])
    return at, masks


def without_frame(tensor, at):
    """(B, T-1, ...) outputs / labels of frames 1..T-1 without frame ``at`` (None: all of them)."""
    if at is None:
        return tensor
    return torch.cat([tensor[:, :at - 1], tensor[:, at:]], 1)


@torch.no_grad()
def validate(network: PropNet, batch: dict, device, anchor_at=None) -> list:
    """Mean Dice per frame (frames 1..T-1) from the ground-truth first mask; with ``anchor_at``, that frame is
    prompted too (its ground truth; a correction round) and is left out of the list."""
    network.eval()
    scores = []
    for start in range(0, len(batch["images"]), 8):
        images = torch.from_numpy(batch["images"][start:start + 8]).to(device)
        first = torch.from_numpy(batch["first"][start:start + 8]).to(device)
        labels = torch.from_numpy(batch["labels"][start:start + 8, 1:]).to(device)
        anchor = None if anchor_at is None else (anchor_at, labels[:, anchor_at - 1])
        hard = (without_frame(network.forward_sequence(images, first, anchor), anchor_at) > 0).float()
        labels = without_frame(labels, anchor_at)
        i = (hard * labels).sum((-1, -2, -3))
        u = hard.sum((-1, -2, -3)) + labels.sum((-1, -2, -3))
        scores.append(((2 * i + 1e-6) / (u + 1e-6)).cpu().numpy())
    network.train()
    return [round(float(v), 4) for v in np.concatenate(scores).mean(0)]


def train(config: dict, out_dir, resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict:
    out_dir = Path(out_dir)
    config = check_prop_config(config)
    initial = read_initial(config["init_from"]) if config.get("init_from") and not will_resume(out_dir, resume) else None
    dist, log, checkpoint_path, saved, config = begin_run(config, out_dir, resume)
    torch.manual_seed(int(config["seed"]))
    network = PropNet(config.get("network"))
    optimizer = make_optimizer(network, config)
    step, history = 0, []
    if saved is None and initial is not None:
        try:
            grown = load_matching(network, initial["model"])
        except (ValueError, RuntimeError) as error:
            raise InputError(f"init_from {config['init_from']}: {error}") from None
        log.info(f"initialised from {config['init_from']}" + (f"; widened: {', '.join(grown)}" if grown else ""))
    if saved is not None:
        step, history = restore(network, optimizer, saved, checkpoint_path)
    model = place_run(network, optimizer, config, out_dir, dist, log, step, saved is not None)
    sources = build_sources(config)
    validation = build_validation(config) if dist.main else None
    metrics, total, end, bar = open_run(config, out_dir, dist, progress, step, stop_at)
    network.train()
    window, started, val_result = [], time.perf_counter(), None
    try:
        while step < end:
            rng = np.random.default_rng([int(config["seed"]), dist.rank, step])
            batch = sources.batch(rng, int(config["batch_size"]))
            images = torch.from_numpy(batch["images"]).to(dist.device)
            labels = torch.from_numpy(batch["labels"][:, 1:]).to(dist.device)
            first = torch.from_numpy(batch["first"]).to(dist.device)
            anchor = draw_anchor(batch, config, rng)
            at = None if anchor is None else anchor[0]
            logits = model(images, first, None if anchor is None else (at, torch.from_numpy(anchor[1]).to(dist.device)))
            loss, bce, dice_loss, dice = sequence_loss(without_frame(logits, at), without_frame(labels, at), config)
            optimizer_step(loss, optimizer, network, config, step)
            step += 1
            stats = {"step": step, "loss": loss.item(), "bce": bce, "dice_loss": dice_loss, "dice": dice}
            record_step(stats, history, window, bar)
            log_due, validate_due, checkpoint_due = due(config, step, end)
            if dist.main and log_due:
                started = log_window(log, metrics, window, ("loss", "bce", "dice_loss", "dice"), step, total,
                                     optimizer.param_groups[0]["lr"], started,
                                     lambda m: f"loss {m['loss']:.4f} bce {m['bce']:.4f} dice_loss {m['dice_loss']:.4f} "
                                     f"train_dice {m['dice']:.3f}")
            if validation is not None and validate_due:
                val_result = validate(network, validation, dist.device)
                record, middle = {"step": step, "validation": val_result}, validation["labels"].shape[1] // 2
                line = f"step {step} validation dice per frame 1..{len(val_result)}: {val_result} (mean {np.mean(val_result):.4f})"
                if middle >= 2:   # sequences of 4 frames or more: a frame before and after the prompted one
                    record["validation_anchored"] = validate(network, validation, dist.device, anchor_at=middle)
                    line += f"; frame {middle} prompted too: mean {np.mean(record['validation_anchored']):.4f}"
                log.info(line)
                write_metrics(metrics, record)
            if dist.main and checkpoint_due:
                save_checkpoint(checkpoint_path, network, optimizer, step, config, history)
    finally:
        close_run(bar, metrics, dist)
    return finish_run(log, dist, step, history, val_result, checkpoint_path)


def main(argv=None) -> int:
    return run_training_cli("training.loops.propagation", __doc__.splitlines()[0], load_config, train, argv)


if __name__ == "__main__":
    sys.exit(main())
