"""Train the text localiser (IMISSegmentLib.networks.text_localiser): a typed name alone -> the structure's map.

    python -m training.loops.text_localiser --config training/configs/text_localiser_lite0.json \
        --out runs/text_localiser_lite0

The localiser's body starts from the click network of ``init_bundle`` (the shipped default) and learns as a
whole, with a new head of one map per structure code the training cases label (``codes``, computed from the
data and saved in config.json and the checkpoint); with ``init_localiser`` true it starts from the bundle's
own localiser instead (a fine-tune; same maps). ``data.source_shift`` shows slices as other scanners would
(field of view, resolution, contrast: training/data/source_shift.py). Each step draws slices balanced over categories
(training/data/localiser_data.py); the loss on every map the slice's case labels is binary cross-entropy over
the slice plus ``loss.dice_weight`` x soft Dice on the maps whose structure is on the slice. The log records
the hard Dice of those maps. The validation split's cases are never read (training/splits/validation.json).

Same run folder, checkpoint and resume behaviour as training/loops/click_net.py; export with
``python -m training.export.text_localiser``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from IMISSegmentLib.engines.text_localiser import LOCALISER_STAGE
from IMISSegmentLib.engines.torch_engine import localiser_from_bundle, network_from_bundle
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.models import read_bundle_info
from IMISSegmentLib.networks.text_localiser import from_click_net
from IMISSegmentLib.text import Vocabulary

from training.data.localiser_data import LocaliserSlices
from training.data.source_shift import SourceShift
from training.data.text_data import TextSliceDataset
from training.loops.click_net import DEFAULTS, load_config
from training.loops.config_check import _show, check_config
from training.loops.text import check_sides_and_bundle
from training.loops.run import (_merge, begin_run, close_run, due, finish_run, log_window, make_optimizer, open_run,
                                optimizer_step, place_run, record_step, restore, run_training_cli, save_checkpoint)

LOCALISER_DEFAULTS = {
    "name": "text_localiser",
    "init_bundle": "Resources/models/default",
    "init_localiser": False,
    "data": {"roots": [], "axes": [0, 1, 2], "min_area": 16, "exclude_cases": [], "augment": True, "sides": False,
             "phantom_fraction": 0.0,
             "source_shift": {"fov": 0.0, "fov_range": [0.6, 1.7], "blur": 0.0, "blur_range": [1.3, 3.0],
                              "contrast": 0.0, "noise": 0.0}},
    "loss": {"dice_weight": 1.0},
    "optimizer": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 100, "min_lr_ratio": 0.05, "grad_clip": 1.0},
    "steps": 3000,
    "batch_size": 8,
}
DERIVED = ("codes", "init_localiser_run")   # computed by the loop (its maps; the run it fine-tunes), not settings


def load_localiser_config(path) -> dict:
    return load_config(path, _merge(DEFAULTS, LOCALISER_DEFAULTS))


def check_localiser_config(config: dict) -> dict:
    """check_config for this loop (``loss.dice_weight`` >= 0 among its rules), plus ``init_bundle`` (a bundle whose
    network's stride divides ``input_size``), ``data.roots`` (real volumes: the localiser learns from labelled
    scans only) and ``data.sides``."""
    def network(config: dict) -> None:
        if config.get("network"):
            raise InputError(f"config: network is not used by the text localiser (its body comes from init_bundle), "
                             f"got {_show(config['network'])}")
        data = config.get("data", {})
        if not data.get("roots"):
            raise InputError("config: data.roots must name the labelled volumes the localiser learns from")
        for key in ("zoom", "propagated_fraction", "defective_fraction", "phantom_fraction"):
            if data.get(key):
                raise InputError(f"config: data.{key} is not used by the text localiser, got {_show(data[key])}")
        try:
            SourceShift.from_config(data.get("source_shift"))
        except (TypeError, ValueError) as error:
            raise InputError(f"config: {error}") from None
        if not isinstance(config.get("init_localiser", False), bool):
            raise InputError(f"config: init_localiser must be true or false, got {_show(config.get('init_localiser'))}")
        check_sides_and_bundle(config, "the localiser starts from")
    return check_config(config, _merge(DEFAULTS, LOCALISER_DEFAULTS), network)


def localiser_loss(logits, batch: dict, dice_weight: float):
    """(loss, bce, soft dice loss, hard Dice per present map as numpy) over the maps the cases label."""
    device = logits.device
    target = torch.from_numpy(batch["label"]).to(device)
    valid = torch.from_numpy(batch["valid"]).to(device)
    known = torch.from_numpy(batch["known"]).to(device)
    weight = valid * known[:, :, None, None]
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() \
        / weight.sum().clamp(min=1.0)
    present = (target * valid).flatten(2).sum(-1) > 0   # (B, C): maps whose structure is on the slice
    present = present & (known > 0)
    probability = torch.sigmoid(logits) * valid
    overlap = (probability * target).flatten(2).sum(-1)
    sizes = probability.flatten(2).sum(-1) + (target * valid).flatten(2).sum(-1)
    soft = 1.0 - (2.0 * overlap + 1.0) / (sizes + 1.0)
    dice_loss = soft[present].mean() if bool(present.any()) else logits.sum() * 0.0
    with torch.no_grad():
        hard = ((logits > 0).float() * valid)
        overlap = (hard * target).flatten(2).sum(-1)
        sizes = hard.flatten(2).sum(-1) + (target * valid).flatten(2).sum(-1)
        scores = (2.0 * overlap / sizes.clamp(min=1.0))[present].cpu().numpy()
    return bce + float(dice_weight) * dice_loss, bce, dice_loss, scores


def build_localiser_data(config: dict, vocabulary: Vocabulary, codes=None) -> LocaliserSlices:
    data = config["data"]
    text_slices = TextSliceDataset(data["roots"], vocabulary, data.get("axes", (0, 1, 2)), data.get("min_area", 16),
                                   int(config.get("input_size", 256)), tuple(data.get("exclude_cases", ())),
                                   sides=data.get("sides", False))
    return LocaliserSlices(text_slices, codes, bool(data.get("augment", True)), data.get("source_shift"))


def starting_localiser(config: dict):
    """The network a run starts from: ``init_bundle``'s click network with a new head (``init_localiser`` false),
    or the bundle's own text localiser to fine-tune (true; its maps must be the run's)."""
    bundle = Path(config["init_bundle"])
    info = read_bundle_info(bundle)
    if not config.get("init_localiser"):
        return from_click_net(network_from_bundle(bundle, info), config["codes"])
    if LOCALISER_STAGE not in info.get("stages", {}):
        raise InputError(f"config: init_localiser is true but {bundle} holds no text localiser to start from")
    codes = [list(c) for c in info["text"]["localiser"]["codes"]]
    config["init_localiser_run"] = (info["text"].get("localiser_training") or {}).get("run_name")
    if codes != [list(c) for c in config["codes"]]:
        raise InputError(f"config: {bundle}'s text localiser has maps {codes}, the training cases label "
                         f"{config['codes']}: init_localiser needs the same maps")
    return localiser_from_bundle(bundle, info).train()


def train_localiser(config: dict, out_dir, resume: bool = True, progress: bool = True,
                    stop_at: int | None = None) -> dict:
    out_dir = Path(out_dir)
    config = check_localiser_config({k: v for k, v in config.items() if k not in DERIVED})
    dist, log, checkpoint_path, saved, config = begin_run(config, out_dir, resume, derived=DERIVED)
    vocabulary = Vocabulary.default()
    codes = saved["config"]["codes"] if saved is not None else None   # a resumed run keeps its maps
    slices = build_localiser_data(config, vocabulary, codes)
    config["codes"] = [list(c) for c in slices.codes]
    torch.manual_seed(int(config["seed"]))
    network = starting_localiser(config)
    if saved is not None and saved["config"].get("init_localiser_run"):   # a resumed run keeps its record
        config["init_localiser_run"] = saved["config"]["init_localiser_run"]
    optimizer = make_optimizer(network, config)
    step, history = 0, []
    if saved is not None:
        step, history = restore(network, optimizer, saved, checkpoint_path)
    model = place_run(network, optimizer, config, out_dir, dist, log, step, saved is not None)
    if dist.main:
        log.info("maps: " + ", ".join(vocabulary.code_name(*c) for c in config["codes"]))
    metrics, total, end, bar = open_run(config, out_dir, dist, progress, step, stop_at)
    model.train()
    started, window = time.perf_counter(), []
    dice_weight = float(config.get("loss", {}).get("dice_weight", 1.0))
    try:
        while step < end:
            rng = np.random.default_rng([int(config["seed"]), dist.rank, step])
            batch = slices.batch(rng, int(config["batch_size"]))
            images = torch.from_numpy(batch["image"]).to(dist.device)
            loss, bce, dice_loss, scores = localiser_loss(model(images), batch, dice_weight)
            optimizer_step(loss, optimizer, network, config, step)
            step += 1
            stats = {"step": step, "lr": optimizer.param_groups[0]["lr"], "loss": float(loss.detach()),
                     "bce": float(bce.detach()), "dice_loss": float(dice_loss.detach()),
                     "dice": float(scores.mean()) if scores.size else 0.0}
            record_step(stats, history, window, bar, history_keys=("step", "loss", "dice"))
            log_due, _, checkpoint_due = due(config, step, end)
            if dist.main and log_due:
                started = log_window(log, metrics, window, ("loss", "bce", "dice_loss", "dice"), step, total,
                                     stats["lr"], started,
                                     lambda m: f"loss {m['loss']:.4f} (bce {m['bce']:.4f}, dice loss "
                                               f"{m['dice_loss']:.3f}) dice {m['dice']:.3f}")
            if dist.main and checkpoint_due:
                save_checkpoint(checkpoint_path, network, optimizer, step, config, history)
    finally:
        close_run(bar, metrics, dist)
    return finish_run(log, dist, step, history, None, checkpoint_path)


def main(argv=None) -> int:
    return run_training_cli("training.loops.text_localiser", __doc__.splitlines()[0], load_localiser_config,
                            train_localiser, argv)


if __name__ == "__main__":
    sys.exit(main())
