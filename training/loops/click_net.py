"""Train the 2D interactive network with simulated interaction (training/loops/interaction.py).

    python -m training.loops.click_net --config training/configs/click_net_default.json --out runs/click_net
    torchrun --nproc_per_node=4 -m training.loops.click_net --config ... --out runs/click_net      # GPUs (nccl)
    torchrun --nproc_per_node=1 -m training.loops.click_net --config ... --out runs/click_net      # one CPU process (gloo)

The run folder gets ``config.json`` (the resolved config: defaults + the file + command-line overrides),
``train.log`` (human-readable log), ``metrics.jsonl`` (one JSON record per log / validation line) and
``checkpoint.pt`` (model, optimiser, step; written atomically every ``checkpoint_every`` steps and at the
end). Running the same command again resumes from ``checkpoint.pt`` (``--no-resume`` starts over, with a
fresh train.log and metrics.jsonl). A resumed run must have the checkpoint's config: only the settings in
RESUMABLE (``steps``, which may grow, ``log_every``, ``checkpoint_every``, ``validation.every``,
``num_threads``, ``device``) may change; any other difference is refused, naming the keys. Each
step's random numbers derive from (seed, rank, step), so a resumed run draws the same samples as an
uninterrupted one. Relative data roots are resolved against the current directory (run from the
repository root). Export the result with ``python -m training.export.click_net``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.networks import click_net as click_net_module
from IMISSegmentLib.networks.click_net import ClickNet

from training.loops.batchnorm import freeze_batchnorm, recalibrate_batchnorm
from training.loops.config_check import _check_network, check_config
from training.data.datasets import MixedSource, PhantomSource, VolumeSliceDataset, checked_weights
from training.data.defects import DefectConfig
from training.data.zoom_crops import ZoomCrops
from training.loops.interaction import InteractionConfig, evaluate_clicks, interactive_step, shown_images
from training.loops.pretrained import load_pretrained_encoder
from training.loops.run import (due, _Pool, begin_run, close_run, finish_run, log_window, make_optimizer, open_run,
                                optimizer_step, place_run, read_config, read_initial, record_step, restore,
                                run_training_cli, save_checkpoint, will_resume, write_metrics)


DEFAULTS = {
    "name": "click_net",
    "bundle_name": "imis-clicknet",
    "bundle_version": "0.1.0",
    "network": {},
    "input_size": 256,
    "data": {"roots": [], "axes": [0, 1, 2], "min_area": 16, "exclude_cases": [], "phantom_fraction": 0.5,
             "augment": True, "phantom_pool": 0,
             # the share of real samples whose previous mask is the structure's mask on a slice this many mm away
             # (training/data/datasets.py: propagated priors)
             "propagated_fraction": 0.0, "propagated_offset_mm": [2.0, 20.0],
             # of those, the share whose previous mask is the slice's own mask spoilt by training/data/defects.py
             # (``defects``: DefectConfig settings; the generator's defaults when empty)
             "defective_fraction": 0.0, "defects": {},
             # how real slices are drawn (training/data/datasets.py BALANCE): "none" (every slice entry alike),
             # "set" (every data set alike), "structure" (every set, and every structure within it, alike)
             "balance": "none",
             # with balance "structure": {structure name: weight} draws a set's structures in proportion to their
             # weights (1 for those not named), e.g. {"heart_myocardium": 3} for a structure the network finds hard
             "structure_weights": {},
             # a share of real slices cut to a window around their structure, as the inference zoom-in shows them
             # (training/data/zoom_crops.py ZoomCrops: fraction, expansion [low, high], min_crop_mm [low, high], jitter;
             # priors: true cuts the slices with a previous mask too, around both masks)
             "zoom": {}},
    # held_out "only": the validation split's cases (training/splits/validation.json), "skip": include_cases
    "validation": {"roots": [], "include_cases": [], "held_out": "skip", "phantoms": 0, "clicks": 5, "every": 0,
                   "batch_size": 16},
    "interaction": {},
    "optimizer": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 200, "min_lr_ratio": 0.02, "grad_clip": 1.0},
    "steps": 1000,
    "batch_size": 8,
    "checkpoint_every": 500,
    "log_every": 20,
    "seed": 0,
    "num_threads": 2,
    "device": "auto",
    "init_from": None,
    # the network's images raised to this power (0..1 intensities), as a bundle's ``input_gamma`` shows them at
    # inference: a fine-tune of a bundle whose click network runs with input_gamma 0.6 trains with 0.6
    "input_gamma": 1.0,
    # a fresh run (no checkpoint, no init_from) of a network whose encoder has published weights starts from them
    # (training/loops/pretrained.py: efficientnet_lite0 from ImageNet)
    "pretrained_encoder": True,
    # training/loops/batchnorm.py: from step ``freeze_from`` on (null: never), batch norm keeps fixed statistics,
    # first recalibrated over ``recalibrate_batches`` simulated interactions with 0..``recalibrate_rounds``
    # correction rounds (null: the interaction's max_rounds)
    "batchnorm": {"freeze_from": None, "recalibrate_batches": 32, "recalibrate_rounds": 0},
}


DEFAULTS["validation"]["real_samples"] = 128   # real validation slices drawn from validation.roots


def load_config(path, defaults: dict | None = None) -> dict:
    """A run config (see run.read_config) merged over this loop's DEFAULTS unless ``defaults`` is given."""
    return read_config(path, DEFAULTS if defaults is None else defaults)


def check_click_network(config: dict) -> None:
    """The ClickNet section, and ``input_size`` a multiple of its stride (as training.export.click_net requires)."""
    network = ClickNet(_check_network(config, click_net_module.make_config, "ClickNet"))
    check_input_size(config, network)


def check_input_size(config: dict, network) -> None:
    size = int(config.get("input_size", 256))
    if size % network.stride:
        raise InputError(f"config: input_size {size} must be a multiple of the network's stride {network.stride} "
                         f"(e.g. {max(1, round(size / network.stride)) * network.stride})")


def check_train_config(config: dict) -> dict:
    config = check_config(config, DEFAULTS, check_click_network)
    data = config.get("data", {})
    try:
        ZoomCrops.from_dict(data.get("zoom"))
        checked_weights(data.get("structure_weights"), data.get("balance", DEFAULTS["data"]["balance"]))
    except (TypeError, ValueError) as error:
        raise InputError(f"config: {error}") from None
    return config


def build_sources(config: dict, rank: int = 0):
    """The training sources; under DDP each ``rank`` > 0 gets its own phantom pool (rank 0's is the
    single-process pool)."""
    data, size = config["data"], int(config["input_size"])
    real = None
    if data.get("roots") and float(data.get("phantom_fraction", 0.5)) < 1.0:
        real = VolumeSliceDataset(data["roots"], axes=data.get("axes", (0, 1, 2)), min_area=data.get("min_area", 16),
                                  size=size, exclude=tuple(data.get("exclude_cases", ())),
                                  balance=data.get("balance", "none"), zoom=ZoomCrops.from_dict(data.get("zoom")),
                                  structure_weights=data.get("structure_weights"))
    phantoms = None
    if float(data.get("phantom_fraction", 0.5)) > 0.0 or real is None:
        phantoms = PhantomSource(size, data.get("min_area", 16))
        pool = int(data.get("phantom_pool", 0))
        if pool > 0:
            phantoms = _Pool(phantoms, pool, int(config["seed"]), rank)
    return MixedSource(real, phantoms, float(data.get("phantom_fraction", 0.5)), bool(data.get("augment", True)),
                       propagated_fraction=float(data.get("propagated_fraction", 0.0)),
                       offset_mm=tuple(data.get("propagated_offset_mm", (2.0, 20.0))),
                       defective_fraction=float(data.get("defective_fraction", 0.0)),
                       defects=DefectConfig.from_dict(data.get("defects")))


def build_validation(config: dict):
    """A fixed validation batch (phantoms with a fixed seed, and / or real cases), or None."""
    val, size = config["validation"], int(config["input_size"])
    samples = []
    if int(val.get("phantoms", 0)) > 0:
        source = PhantomSource(size, config["data"].get("min_area", 16))
        rng = np.random.default_rng([int(config["seed"]), 12345])
        samples += [source.sample(rng) for _ in range(int(val["phantoms"]))]
    if val.get("roots"):
        real = VolumeSliceDataset(val["roots"], min_area=config["data"].get("min_area", 16), size=size,
                                  include=set(val.get("include_cases") or ()) or None,
                                  held_out=val.get("held_out", "skip"))
        rng = np.random.default_rng([int(config["seed"]), 54321])
        picks = rng.choice(len(real), size=min(len(real), int(val.get("real_samples", 128))), replace=False)
        samples += [real[int(i)] for i in picks]
    if not samples:
        return None
    return {k: np.stack([s[k] for s in samples]) for k in ("image", "label", "valid")}


class ShownSource:
    """A batch source whose images are shown as an engine with ``input_gamma`` = ``gamma`` shows them
    (:func:`~training.loops.interaction.shown_images`)."""

    def __init__(self, source, gamma: float) -> None:
        self.source, self.gamma = source, float(gamma)

    def shown(self, batch: dict) -> dict:
        return dict(batch, image=shown_images(batch, self.gamma)) if self.gamma != 1.0 else batch

    def batch(self, rng, size: int) -> dict:
        return self.shown(self.source.batch(rng, size))


def _validate(model, batch: dict, config: dict, interaction: InteractionConfig, device) -> dict:
    val = config["validation"]
    size = int(val.get("batch_size", 16))
    out = {}
    for first in ("click", "box"):
        totals = None
        for start in range(0, len(batch["image"]), size):
            part = {k: v[start:start + size] for k, v in batch.items()}
            means = evaluate_clicks(model, part, np.random.default_rng(0), interaction, int(val.get("clicks", 5)),
                                    device, first) * len(part["image"])
            totals = means if totals is None else totals + means
        out[first] = [round(float(v), 4) for v in totals / len(batch["image"])]
    model.train()
    return out


def _freeze_batchnorm(network, sources, interaction, config: dict, step: int, dist, log) -> None:
    """Recalibrate the batch-norm statistics (rank 0, then broadcast to every rank) and freeze them."""
    settings = config.get("batchnorm", {})
    if dist.main:
        started = time.perf_counter()
        rounds = settings.get("recalibrate_rounds")
        recalibrate_batchnorm(network, sources, interaction, np.random.default_rng([int(config["seed"]), 99, step]),
                              int(settings.get("recalibrate_batches", 32)), int(config["batch_size"]) * 2,
                              dist.device, None if rounds is None else int(rounds))
        log.info(f"step {step}: batch-norm statistics recalibrated over {settings.get('recalibrate_batches', 32)} "
                 f"batches ({time.perf_counter() - started:.0f} s) and frozen")
    dist.barrier()
    dist.broadcast_buffers(network)
    freeze_batchnorm(network)


def train(config: dict, out_dir, resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict:
    """Run (or resume) training; returns {"step", "history", "validation", "checkpoint"}.

    ``stop_at``: stop after that step (checkpoint written) without changing the learning-rate schedule,
    which still runs to ``config["steps"]``; a later call resumes from there."""
    out_dir = Path(out_dir)
    config = check_train_config(config)
    initial = read_initial(config["init_from"]) if config.get("init_from") and not will_resume(out_dir, resume) else None
    dist, log, checkpoint_path, saved, config = begin_run(config, out_dir, resume)
    interaction = InteractionConfig.from_dict(config.get("interaction"))
    torch.manual_seed(int(config["seed"]))   # before the network: its initial weights follow the seed
    network = ClickNet(config.get("network"))
    optimizer = make_optimizer(network, config)
    step, history = 0, []
    if saved is None and initial is not None:   # fine-tuning: weights only, a fresh optimiser and schedule
        try:
            network.load_state_dict(initial["model"])
        except RuntimeError as error:
            raise InputError(f"init_from {config['init_from']}: its weights do not fit the network "
                             f"({str(error).splitlines()[0][:200]})") from None
        network.batchnorm_frozen = bool(initial.get("batchnorm_frozen", False))
    pretrained = ""
    if saved is None and initial is None and config.get("pretrained_encoder"):
        pretrained = load_pretrained_encoder(network)
    if saved is not None:
        step, history = restore(network, optimizer, saved, checkpoint_path)
        network.batchnorm_frozen = bool(saved.get("batchnorm_frozen", False))
    model = place_run(network, optimizer, config, out_dir, dist, log, step, saved is not None)
    if pretrained:
        log.info(pretrained)
    sources = ShownSource(build_sources(config, dist.rank), config.get("input_gamma", 1.0))
    validation = build_validation(config) if dist.main else None
    if validation is not None:
        validation = sources.shown(validation)
    metrics, total, end, bar = open_run(config, out_dir, dist, progress, step, stop_at)
    val_result = None
    model.train()
    started = time.perf_counter()
    window = []
    freeze_from = config.get("batchnorm", {}).get("freeze_from")
    try:
        while step < end:
            if freeze_from is not None and step >= int(freeze_from) and not network.batchnorm_frozen:
                _freeze_batchnorm(network, sources, interaction, config, step, dist, log)
            rng = np.random.default_rng([int(config["seed"]), dist.rank, step])
            batch = sources.batch(rng, int(config["batch_size"]))
            loss, stats = interactive_step(model, batch, rng, interaction, dist.device)
            optimizer_step(loss, optimizer, network, config, step)
            step += 1
            stats["step"], stats["lr"] = step, optimizer.param_groups[0]["lr"]
            record_step(stats, history, window, bar,
                        history_keys=("step", "loss", "focal", "dice_loss", "dice", "rounds"))
            log_due, validate_due, checkpoint_due = due(config, step, end)
            if dist.main and log_due:
                started = log_window(log, metrics, window, ("loss", "focal", "dice_loss", "dice", "clicks"), step, total,
                                     stats["lr"], started, lambda m: f"loss {m['loss']:.4f} focal {m['focal']:.4f} "
                                     f"dice_loss {m['dice_loss']:.4f} train_dice {m['dice']:.3f} clicks {m['clicks']:.1f}")
            if validation is not None and validate_due:
                val_result = _validate(network, validation, config, interaction, dist.device)
                log.info(f"step {step} validation dice after 1..{len(val_result['click'])} interactions: "
                         f"first click {val_result['click']}, first box {val_result['box']}")
                write_metrics(metrics, {"step": step, "validation": val_result})
            if dist.main and checkpoint_due:
                save_checkpoint(checkpoint_path, network, optimizer, step, config, history)
    finally:
        close_run(bar, metrics, dist)
    return finish_run(log, dist, step, history, val_result, checkpoint_path)


def main(argv=None) -> int:
    return run_training_cli("training.loops.click_net", __doc__.splitlines()[0], load_config, train, argv)


if __name__ == "__main__":
    sys.exit(main())
