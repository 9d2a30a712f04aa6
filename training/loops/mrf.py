"""Train the MRF quality network (IMISSegmentLib/networks/mrf_net.py) on previous / current mask pairs.

    python -m training.data.mrf_data --out runs/mrf/round_pairs.npz           # real round pairs (once)
    python -m training.loops.mrf --config training/configs/mrf_net_cpu.json --out runs/mrf_net
    torchrun --nproc_per_node=1 -m training.loops.mrf --config ... --out runs/mrf_net   # DDP (gloo on CPU)

Data (training/data/mrf_data.py): a bank of synthetic pairs drawn once at the start (defective masks of real
slices and phantoms), plus the real round pairs of the structures not held out for validation; each batch
mixes them (``data.round_fraction``) with random flips and transposes. Loss: binary cross-entropy weighted by
each pair's weight. Validation, on the round pairs of the held-out structures: accuracy, and the wrong
pixels left when following the network against always taking the current mask and against the oracle.
The run folder is laid out as training.loops.click_net's (config.json, train.log, metrics.jsonl, resumable
checkpoint.pt); add the network to a bundle with ``python -m training.export.mrf``.
"""
from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.networks.mrf_net import MrfNet, make_config

from training.data.datasets import PhantomSource, VolumeSliceDataset
from training.data.mrf_data import PAIR_ARRAYS, SyntheticPairSource, load_round_pairs
from training.loops.config_check import _check_network, _check_strings, check_config
from training.loops.run import (due, _Pool, begin_run, close_run, finish_run, log_window, make_optimizer, open_run,
                                optimizer_step, place_run, read_config, record_step, restore, run_training_cli,
                                save_checkpoint, write_metrics)

DEFAULTS = {
    "name": "mrf_net",
    "network": {},
    # round_pairs: .npz files of training.data.mrf_data (one path or a list)
    "data": {"roots": [], "axes": [0, 1, 2], "min_area": 16, "exclude_cases": [], "phantom_fraction": 0.3,
             "phantom_pool": 128, "synthetic_pairs": 8000, "round_pairs": None, "round_fraction": 0.5},
    # round pairs of structures whose name hashes into this share are held out for validation
    "validation": {"share": 0.25, "every": 200, "threshold": 0.5},
    "optimizer": {"lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 50, "min_lr_ratio": 0.05, "grad_clip": 1.0},
    "steps": 2000,
    "batch_size": 64,
    "checkpoint_every": 200,
    "log_every": 20,
    "seed": 0,
    "num_threads": 2,
    "device": "auto",
}


def load_config(path) -> dict:
    return read_config(path, DEFAULTS)


def check_mrf_config(config: dict) -> dict:
    """training.loops.click_net's check_config with this loop's DEFAULTS, the MrfNet section and ``data.round_pairs``
    (existing files)."""
    def network(config: dict) -> None:
        _check_network(config, make_config, "MrfNet")
        pairs = config["data"].get("round_pairs")
        _check_strings("data.round_pairs", pairs, allow_none=True)
        for path in [pairs] if isinstance(pairs, str) else pairs or []:
            if not Path(path).is_file():
                raise InputError(f"config: data.round_pairs: {path} does not exist or is not a file "
                                 "(make it with python -m training.data.mrf_data)")
    return check_config(config, DEFAULTS, network)


def read_round_pairs(paths) -> dict:
    """load_round_pairs, with an InputError naming the files when one cannot be read as round pairs."""
    try:
        return load_round_pairs(paths)
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise InputError(f"data.round_pairs {paths}: not round pairs of training.data.mrf_data "
                         f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__})") from None


def held_out(structure_key: str, share: float) -> bool:
    """Stable split by structure ("case/structure"): the same on every machine and run."""
    return (zlib.crc32(structure_key.encode()) % 1000) < share * 1000


def split_round_pairs(pairs: dict, share: float):
    """(training pairs, validation pairs), split by structure."""
    keys = [f"{m['case']}/{m['structure']}" for m in pairs["meta"]]
    val = np.array([held_out(k, share) for k in keys], bool)
    pick = lambda mask: {k: pairs[k][mask] for k in PAIR_ARRAYS}  # noqa: E731
    return pick(~val), pick(val)


def synthetic_bank(config: dict, size: int, rank: int = 0) -> dict | None:
    """The bank of synthetic pairs (None when ``data.synthetic_pairs`` is 0)."""
    data = config["data"]
    if int(data.get("synthetic_pairs", 0)) <= 0:
        return None
    dataset = phantoms = None
    if data.get("roots") and float(data.get("phantom_fraction", 0.3)) < 1.0:
        dataset = VolumeSliceDataset(data["roots"], axes=data.get("axes", (0, 1, 2)), min_area=int(data["min_area"]),
                                     size=8, exclude=tuple(data.get("exclude_cases", ())))
    if float(data.get("phantom_fraction", 0.3)) > 0.0 or dataset is None:
        phantoms = _Pool(PhantomSource(256), int(data.get("phantom_pool", 128)), int(config["seed"]), rank)
    source = SyntheticPairSource(dataset, phantoms, float(data.get("phantom_fraction", 0.3)), size)
    rng = np.random.default_rng([int(config["seed"]), 31, rank])
    bank = source.batch(rng, int(data["synthetic_pairs"]))
    bank["inputs"] = np.round(bank["inputs"] * 255).astype(np.uint8)   # 4x less memory; 0..1 again per batch
    return bank


def _as_float(inputs: np.ndarray) -> np.ndarray:
    """Stored pairs are uint8 0..255 (4x less memory); the network takes float32 0..1."""
    if inputs.dtype == np.uint8:
        return inputs.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(inputs, np.float32)


def _augment(inputs: np.ndarray, rng) -> np.ndarray:
    if rng.random() < 0.5:
        inputs = inputs[..., ::-1]
    if rng.random() < 0.5:
        inputs = inputs[..., ::-1, :]
    if rng.random() < 0.5:
        inputs = inputs.swapaxes(-1, -2)
    return np.ascontiguousarray(inputs)


def draw_batch(bank: dict | None, rounds: dict | None, rng, size: int, round_fraction: float) -> dict:
    from_rounds = 0 if rounds is None or not len(rounds["target"]) else int(round(size * round_fraction))
    if bank is None:
        if not from_rounds:
            raise ValueError("no training pairs: data.synthetic_pairs is 0 and there are no round pairs")
        from_rounds = size
    parts = []
    for source, count in ((bank, size - from_rounds), (rounds, from_rounds)):
        if count:
            pick = rng.integers(len(source["target"]), size=count)
            inputs = _as_float(source["inputs"][pick])
            parts.append((inputs, source["context"][pick], source["target"][pick], source["weight"][pick]))
    inputs = _augment(np.concatenate([p[0] for p in parts]), rng)
    return {"inputs": inputs, "context": np.concatenate([p[1] for p in parts]).astype(np.float32),
            "target": np.concatenate([p[2] for p in parts]).astype(np.float32),
            "weight": np.concatenate([p[3] for p in parts]).astype(np.float32)}


def pair_loss(logits, target, weight):
    loss = F.binary_cross_entropy_with_logits(logits.reshape(-1), target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1e-6)


@torch.no_grad()
def pair_probabilities(network: MrfNet, pairs: dict, device) -> np.ndarray:
    """P(previous better) for every pair."""
    network.eval()
    probabilities = []
    for start in range(0, len(pairs["target"]), 256):
        inputs = torch.from_numpy(_as_float(pairs["inputs"][start:start + 256])).to(device)
        context = torch.from_numpy(np.ascontiguousarray(pairs["context"][start:start + 256], np.float32)).to(device)
        probabilities.append(torch.sigmoid(network(inputs, context)).reshape(-1).cpu().numpy())
    network.train()
    return np.concatenate(probabilities)


def threshold_sweep(probabilities: np.ndarray, errors: np.ndarray, grid=np.arange(0.3, 0.96, 0.05)) -> dict:
    """Wrong pixels left at each decision threshold ({threshold: errors}); the best one is the bundle's."""
    return {round(float(t), 2): int(np.where(probabilities > t, errors[:, 0], errors[:, 1]).sum()) for t in grid}


def validate(network: MrfNet, pairs: dict, device, threshold: float) -> dict:
    """Accuracy (weighted) and the wrong pixels left: following the network, always current, the oracle."""
    keep_previous = pair_probabilities(network, pairs, device) > threshold
    errors = pairs["errors"]
    chosen = np.where(keep_previous, errors[:, 0], errors[:, 1]).sum()
    weight = pairs["weight"]
    accuracy = float((weight * (keep_previous == (pairs["target"] > 0.5))).sum() / max(weight.sum(), 1e-6))
    return {"pairs": int(len(keep_previous)), "accuracy": round(accuracy, 4),
            "errors_fused": int(chosen), "errors_current": int(errors[:, 1].sum()),
            "errors_previous": int(errors[:, 0].sum()), "errors_oracle": int(errors.min(1).sum()),
            "kept_previous": round(float(keep_previous.mean()), 4)}


def train(config: dict, out_dir, resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict:
    out_dir = Path(out_dir)
    config = check_mrf_config(config)
    # read before the run folder is touched: a bad file is an error naming it, with nothing written
    pairs = read_round_pairs(config["data"]["round_pairs"]) if config["data"].get("round_pairs") else None
    dist, log, checkpoint_path, saved, config = begin_run(config, out_dir, resume)
    torch.manual_seed(int(config["seed"]))
    network = MrfNet(config.get("network"))
    size = int(make_config(config["network"])["input_size"])
    optimizer = make_optimizer(network, config)
    step, history = 0, []
    if saved is not None:
        step, history = restore(network, optimizer, saved, checkpoint_path)
    model = place_run(network, optimizer, config, out_dir, dist, log, step, saved is not None)
    started = time.perf_counter()
    bank = synthetic_bank(config, size, dist.rank)
    rounds = validation = None
    if pairs is not None:
        rounds, validation = split_round_pairs(pairs, float(config["validation"]["share"]))
        if not len(validation["target"]):
            validation = None
    log.info(f"data: {0 if bank is None else len(bank['target'])} synthetic pairs ({time.perf_counter() - started:.0f} s), "
             f"{0 if rounds is None else len(rounds['target'])} round pairs for training, "
             f"{0 if validation is None else len(validation['target'])} for validation")
    threshold = float(config["validation"].get("threshold", 0.5))
    metrics, total, end, bar = open_run(config, out_dir, dist, progress, step, stop_at)
    network.train()
    window, started, val_result = [], time.perf_counter(), None
    try:
        while step < end:
            rng = np.random.default_rng([int(config["seed"]), dist.rank, step])
            batch = draw_batch(bank, rounds, rng, int(config["batch_size"]), float(config["data"]["round_fraction"]))
            logits = model(torch.from_numpy(batch["inputs"]).to(dist.device),
                           torch.from_numpy(batch["context"]).to(dist.device))
            target = torch.from_numpy(batch["target"]).to(dist.device)
            loss = pair_loss(logits, target, torch.from_numpy(batch["weight"]).to(dist.device))
            optimizer_step(loss, optimizer, network, config, step)
            step += 1
            with torch.no_grad():
                accuracy = float(((logits.reshape(-1) > 0).float() == target).float().mean())
            stats = {"step": step, "loss": loss.item(), "accuracy": accuracy}
            record_step(stats, history, window, bar, shown=("loss", "accuracy"))
            log_due, validate_due, checkpoint_due = due(config, step, end)
            if dist.main and log_due:
                started = log_window(log, metrics, window, ("loss", "accuracy"), step, total,
                                     optimizer.param_groups[0]["lr"], started,
                                     lambda m: f"loss {m['loss']:.4f} train_accuracy {m['accuracy']:.3f}")
            if dist.main and validation is not None and validate_due:
                val_result = validate(network, validation, dist.device, threshold)
                log.info(f"step {step} validation {json.dumps(val_result)}")
                write_metrics(metrics, {"step": step, "validation": val_result})
            if dist.main and checkpoint_due:
                save_checkpoint(checkpoint_path, network, optimizer, step, config, history)
        if dist.main and validation is not None:
            sweep = threshold_sweep(pair_probabilities(network, validation, dist.device), validation["errors"])
            best = min(sweep, key=sweep.get)
            log.info(f"threshold sweep on the validation pairs (wrong pixels left): {json.dumps(sweep)}; best {best}")
            write_metrics(metrics, {"step": step, "threshold_sweep": sweep, "best_threshold": best})
    finally:
        close_run(bar, metrics, dist)
    return finish_run(log, dist, step, history, val_result, checkpoint_path)


def main(argv=None) -> int:
    return run_training_cli("training.loops.mrf", __doc__.splitlines()[0], load_config, train, argv)


if __name__ == "__main__":
    sys.exit(main())
