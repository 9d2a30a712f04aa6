"""Weight averaging of two checkpoints of one network (WiSE-FT, Wortsman et al. 2022).

Why: fine-tuning the 2D network on corrections (previous masks from propagation) made it answer those better but
lost some of what the earlier network did well (a box alone in a coronal or sagittal view of a thick-slice MR).
Averaging the fine-tuned weights with the weights it started from keeps much of the gain and most of the old
behaviour, at no training cost: ``weight`` x ``init_from`` + (1 - ``weight``) x ``average_with``, parameter by
parameter. Both checkpoints must hold the same network (config, names and shapes) and the same batch-norm
statistics: averaged statistics would be ones neither network was trained with, so they must be equal, as they
are when the fine-tune starts from its parent with batch norm frozen (training/loops/batchnorm.py).

The result is a run folder like a training run's (config.json, train.log, metrics.jsonl, checkpoint.pt), so
the exports, ``init_from`` and the model card read it as any other run::

    python -m training.loops.average --config training/configs/click_net_lite0_wise.json --out runs/click_net_lite0_wise
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

import torch

from IMISSegmentLib.errors import InputError

from training.export.bundle import run_command
from training.loops.checkpoints import read_checkpoint
from training.loops.record_run import checked_folder, write_folder
from training.loops.run import CHECKPOINT, checkpoint_state, read_config

KEYS = {"name", "bundle_name", "bundle_version", "init_from", "average_with", "weight", "loop"}


def check_average_config(config) -> dict:
    """The config, or InputError naming what is wrong (unknown keys, a key of the wrong type, weight outside 0..1,
    the same checkpoint twice)."""
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise InputError(f"average config: unknown keys {unknown} (known: {', '.join(sorted(KEYS))})")
    for key in ("name", "init_from", "average_with"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise InputError(f"average config: {key} must be a non-empty string")
    for key in ("bundle_name", "bundle_version"):
        if key in config and not isinstance(config[key], str):
            raise InputError(f"average config: {key} must be a string, got {config[key]!r}")
    if config.get("loop", "average") != "average":
        raise InputError(f"average config: loop must be \"average\" (or left out), got {config['loop']!r}")
    weight = config.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0.0 <= weight <= 1.0:
        raise InputError(f"average config: weight (the share of init_from) must be a number in 0..1, got {weight!r}")
    if Path(config["init_from"]).resolve() == Path(config["average_with"]).resolve():
        raise InputError("average config: init_from and average_with are the same checkpoint")
    return config


def average_states(fine: dict, base: dict, weight: float) -> dict:
    """``weight`` x ``fine`` + (1 - ``weight``) x ``base`` for the weights of two state dicts of one network;
    batch-norm statistics (which must be equal) and integer buffers are taken from ``fine``. InputError when the
    names, shapes or statistics differ."""
    if set(fine) != set(base):
        missing, extra = sorted(set(fine) - set(base)), sorted(set(base) - set(fine))
        raise InputError(f"the two checkpoints hold different networks (only in init_from: {missing[:5]}; only in "
                         f"average_with: {extra[:5]})")
    out = {}
    for name, tensor in fine.items():
        other = base[name]
        if tensor.shape != other.shape:
            raise InputError(f"the two checkpoints hold different networks ({name}: {tuple(tensor.shape)} against "
                             f"{tuple(other.shape)})")
        if name.endswith(("running_mean", "running_var")):
            if not torch.equal(tensor, other):
                raise InputError(f"the two checkpoints have different batch-norm statistics ({name}): averaging "
                                 "them would give statistics neither network was trained with; average a fine-tune "
                                 "that kept its parent's batch norm frozen with that parent")
            out[name] = tensor.clone()
        elif tensor.is_floating_point():
            out[name] = (weight * tensor.double() + (1.0 - weight) * other.double()).to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def average_run(config: dict, out_dir) -> dict:
    """Write the averaged run folder (see the module docstring); returns {"checkpoint": path}. The checkpoint is
    written last, so a folder with one is complete; a folder holding another kind of run, or one of the two
    inputs, is refused."""
    config = check_average_config(dict(config))
    out_dir = Path(out_dir)
    target = out_dir / CHECKPOINT
    if target.exists() and target.resolve() in (Path(config["init_from"]).resolve(),
                                                Path(config["average_with"]).resolve()):
        raise InputError(f"--out {out_dir} holds one of the checkpoints being averaged; write the average to "
                         "its own run folder")
    checked_folder(out_dir, "average", "an earlier average")
    fine = read_checkpoint(config["init_from"], "init_from")
    base = read_checkpoint(config["average_with"], "average_with")
    for what, state in (("init_from", fine), ("average_with", base)):
        if "model" not in state:
            raise InputError(f"{what} {config[what]} is not a training checkpoint (no 'model')")
    if fine.get("network_config") != base.get("network_config"):
        raise InputError("the two checkpoints hold different networks (their network configs differ)")
    if bool(fine.get("batchnorm_frozen")) != bool(base.get("batchnorm_frozen")):
        raise InputError("one checkpoint has frozen batch-norm statistics and the other not: averaging them would "
                         "give statistics that neither network was trained with")
    weight = float(config["weight"])
    model = average_states(fine["model"], base["model"], weight)
    # the average's own record: what the exports read (network, input size, bundle name) and the two parents; the
    # fine-tune's data and training settings stay in its own run's record
    parent = fine.get("config") or {}
    run_config = {**{k: parent[k] for k in ("network", "input_size", "bundle_name", "bundle_version") if k in parent},
                  **config, "loop": "average", "steps": 0}   # no training step
    state = checkpoint_state(model, fine.get("network_config"), 0, run_config, [], fine.get("batchnorm_frozen"))
    losses = [((s.get("history") or [{}])[-1]).get("loss") for s in (fine, base)]
    count = sum(t.numel() for name, t in model.items() if t.is_floating_point() and "running" not in name)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,000")
    log = [f"{stamp} started: averaging {count} weights, config {out_dir / 'config.json'}",
           f"{stamp} {weight:g} x {config['init_from']} (step {fine.get('step')}, last loss {losses[0]}) + "
           f"{1 - weight:g} x {config['average_with']} (step {base.get('step')}, last loss {losses[1]})",
           f"{stamp} finished; checkpoint {target}"]
    return write_folder(out_dir, run_config, log, state, json.dumps({"step": 0, "weight": weight}) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.loops.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="average config (.json or .yaml): name, init_from, "
                        "average_with, weight (the share of init_from), bundle_name, bundle_version")
    parser.add_argument("--out", required=True, help="run folder to write (config.json, train.log, checkpoint.pt)")
    args = parser.parse_args(argv)

    def action() -> str:
        try:
            config = read_config(args.config, {})
        except OSError as error:
            raise InputError(f"cannot read the config {args.config}: {error.strerror or error}") from None
        return f"checkpoint {average_run(config, args.out)['checkpoint']}"
    return run_command("training.loops.average", action)

if __name__ == "__main__":
    sys.exit(main())
