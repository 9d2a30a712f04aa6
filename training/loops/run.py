"""What the training loops share (click_net, propagation, mrf, text): the run config (read, merged over a loop's
defaults, ``--set`` overrides), the run folder with its log, metrics and resumable checkpoint, the process group
(DDP under torchrun), the optimiser and its schedule, and the command line every loop takes."""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.io.atomic import check_output_path
from IMISSegmentLib.networks.click_net import count_parameters

from training.loops.checkpoints import read_checkpoint
from training.loops.config_check import RESUMABLE, _get, _show, check_resume



def read_config(path, defaults: dict) -> dict:
    """A run config from JSON (``.json``) or YAML (``.yaml`` / ``.yml``, needs PyYAML), merged over ``defaults``
    (each training loop passes its own)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or write the config as JSON") from None
        values = yaml.safe_load(text) or {}
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config must be a mapping")
    return _merge(defaults, values)


CHECKPOINT = "checkpoint.pt"
# the settings a resumed run may change (everything else must match the checkpoint's config)


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_override(text: str):
    """'a.b=value' -> (['a', 'b'], value parsed as JSON when it is JSON, else the string)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except ValueError:
        pass
    keys = [k.strip() for k in key.split(".")]
    if not all(keys):
        raise InputError(f"--set {text!r}: expected key.path=value (a key is empty)")
    return keys, value


def apply_overrides(config: dict, overrides) -> dict:
    config = copy.deepcopy(config)
    for text in overrides or []:
        keys, value = _parse_override(text)
        target = config
        for depth, key in enumerate(keys[:-1]):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise InputError(f"--set {text!r}: {'.'.join(keys[:depth + 1])} is not a section "
                                 f"(it is {json.dumps(target)})")
        target[keys[-1]] = value
    return config


# ---- config checks (shared by the training loops) -------------------------------------------------------


def _read_run_checkpoint(path: Path) -> dict:
    state = read_checkpoint(path, "the run's checkpoint")
    missing = [k for k in ("model", "optimizer", "step", "config") if k not in state]
    if missing or not isinstance(state.get("config"), dict):
        raise InputError(f"the run's checkpoint {path} is not a training checkpoint (it lacks {missing or ['config']}); "
                         "move it away or use --no-resume")
    return state


def restore(network, optimizer, saved: dict, checkpoint_path: Path):
    """Model and optimiser state from a run's checkpoint; (step, history). InputError when the weights do not
    fit the network (another loop's checkpoint)."""
    try:
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise InputError(f"{checkpoint_path}: its weights do not fit this network (a run of another training loop or "
                         f"network?): {str(error).splitlines()[0][:200]}; use --no-resume or another --out") from None
    return int(saved["step"]), list(saved.get("history", []))


class _Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or a single plain process."""

    def __init__(self, device_name: str) -> None:
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device_name == "auto":
            device_name = "cuda" if torch.cuda.is_available() else "cpu"
        shared_gpu = False
        if device_name == "cuda":
            # more processes than GPUs (e.g. several per GPU to spread the simulated user over CPU cores):
            # ranks share the GPUs round-robin and talk through gloo (nccl refuses two ranks on one GPU)
            count = max(1, torch.cuda.device_count())
            shared_gpu = int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) > count
            device_name = f"cuda:{self.local_rank % count}"
            torch.cuda.set_device(self.local_rank % count)
        self.device = torch.device(device_name)
        if self.enabled:
            import torch.distributed as dist
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" and not shared_gpu else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        # no buffer broadcast in every forward: ranks draw different numbers of interaction rounds (forward
        # passes) per step, and a broadcast per forward then deadlocks; batch-norm buffers are broadcast
        # explicitly where they are set (broadcast_buffers below)
        if self.device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[self.device.index], broadcast_buffers=False)
        return DistributedDataParallel(model, broadcast_buffers=False)

    def broadcast_buffers(self, module) -> None:
        """Rank 0's buffers (batch-norm statistics) to every rank."""
        if self.enabled:
            import torch.distributed as dist
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


def learning_rate(step: int, config: dict) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` x lr at ``steps``."""
    opt = config["optimizer"]
    lr, warmup, total = float(opt["lr"]), int(opt["warmup_steps"]), max(1, int(config["steps"]))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = float(opt.get("min_lr_ratio", 0.0))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class _Pool:
    """A fixed pool of pre-generated samples (quick runs and tests); ``sample`` draws from it."""

    def __init__(self, source, count: int, seed: int, rank: int = 0) -> None:
        rng = np.random.default_rng([seed, 7] if rank == 0 else [seed, 7, rank])
        self.samples = [source.sample(rng) for _ in range(count)]

    def sample(self, rng) -> dict:
        return self.samples[int(rng.integers(len(self.samples)))]


def checkpoint_state(model_state: dict, network_config, step: int, config: dict, history: list,
                     batchnorm_frozen: bool, optimizer_state: dict | None = None) -> dict:
    """The checkpoint layout every reader expects (training/loops/checkpoints.py, the exports, ``init_from``);
    ``optimizer_state`` None (a run that trains nothing, training/loops/average.py) leaves the optimiser out."""
    state = {"model": model_state, "step": step, "config": config, "network_config": network_config,
             "history": history, "torch_version": torch.__version__, "batchnorm_frozen": bool(batchnorm_frozen)}
    if optimizer_state is not None:
        state["optimizer"] = optimizer_state
    return state


def save_checkpoint(path: Path, model, optimizer, step: int, config: dict, history: list) -> None:
    """Model, optimiser, step and config, written atomically (shared by every training loop)."""
    state = checkpoint_state(model.state_dict(), model.config, step, config, history[-1000:],
                             getattr(model, "batchnorm_frozen", False), optimizer.state_dict())
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(state, temp)
    os.replace(temp, path)


def _logger(out_dir: Path, main: bool, fresh: bool = False) -> logging.Logger:
    """The run's logger (train.log; ``fresh``: the old log is started afresh)."""
    logger = logging.getLogger(f"training.loops.click_net.{out_dir}")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.propagate = False
    if main:
        handler = logging.FileHandler(out_dir / "train.log", mode="w" if fresh else "a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def begin_run(config: dict, out_dir: Path, resume: bool, derived=()):
    """The start shared by the training loops (call it with a checked config, see check_config): the run
    folder, the process group, threads, the log and the checkpoint to resume from. Returns (dist, log,
    checkpoint path, saved state or None, config). A resumed run must have the checkpoint's config apart from
    RESUMABLE (check_resume; ``derived``: top-level keys the loop computes itself); a fresh one starts
    train.log (and, in open_run, metrics.jsonl) afresh."""
    out_dir = Path(out_dir)
    check_output_path(out_dir, folder=True)
    checkpoint_path = out_dir / CHECKPOINT
    saved = _read_run_checkpoint(checkpoint_path) if resume and checkpoint_path.is_file() else None
    changed = check_resume(saved, config, checkpoint_path, derived) if saved is not None else []
    dist = _Distributed(str(config.get("device", "auto")))
    try:
        if dist.main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(f"cannot make the run folder {out_dir}: {error.strerror or error}") from None
        dist.barrier()
        torch.set_num_threads(int(config.get("num_threads", 2)))
        log = _logger(out_dir, dist.main, fresh=saved is None)
    except BaseException:
        dist.close()
        raise
    for key in changed:
        log.info(f"resuming with {key} {_show(_get(saved['config'], key))} -> {_show(_get(config, key))}"
                 + (" (the learning-rate schedule follows the new total)" if key == "steps" else ""))
    return dist, log, checkpoint_path, saved, config


def will_resume(out_dir, resume: bool) -> bool:
    """Whether begin_run will resume (the run folder has a checkpoint and ``resume``)."""
    return bool(resume) and (Path(out_dir) / CHECKPOINT).is_file()


def read_initial(path) -> dict:
    """``init_from``'s checkpoint (a training checkpoint, or a bundle's bare state dict as {"model": ...,
    "batchnorm_frozen": True}); InputError naming the file when it is missing or unreadable."""
    state = read_checkpoint(path, "init_from")
    if "model" not in state:   # a bundle's state dict (e.g. click_net_propagated.pt): frozen batch norm
        state = {"model": state, "batchnorm_frozen": True}
    return state


def make_optimizer(network, config: dict):
    return torch.optim.AdamW(network.parameters(), lr=float(config["optimizer"]["lr"]),
                             weight_decay=float(config["optimizer"]["weight_decay"]))


def optimizer_step(loss, optimizer, network, config: dict, step: int) -> None:
    """One update: the schedule's learning rate for ``step``, backward, gradient clipping, step."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = float(config["optimizer"].get("grad_clip", 0) or 0)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
    optimizer.step()


def record_step(stats: dict, history: list, window: list, bar, shown=("loss", "dice"), history_keys=None) -> None:
    """A finished step: its stats into the history (only ``history_keys`` when given) and the log window, the
    progress bar advanced, showing ``shown``."""
    history.append(stats if history_keys is None else {k: stats[k] for k in history_keys})
    window.append(stats)
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in shown})


def log_window(log, metrics, window: list, keys, step: int, total: int, lr: float, started: float, describe) -> float:
    """Log and record the means of ``keys`` over the steps in ``window`` (then emptied); ``describe(mean)`` is
    the log line's middle. Returns the new window's start time."""
    mean = {k: float(np.mean([w[k] for w in window])) for k in keys}
    seconds = (time.perf_counter() - started) / max(1, len(window))
    log.info(f"step {step}/{total} {describe(mean)} lr {lr:.2e} {seconds:.2f} s/step")
    write_metrics(metrics, {"step": step, **mean, "lr": lr, "s_per_step": seconds})
    window.clear()
    return time.perf_counter()


def run_training_cli(prog: str, description: str, load, train_function, argv=None) -> int:
    """The command line shared by the training loops: --config, --out, --steps, --set, --stop-at, --no-resume,
    --no-progress; ``load(path)`` reads the config, ``train_function(config, out, resume=, progress=, stop_at=)``
    runs it."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--config", required=True, help="run config (.json, or .yaml with PyYAML)")
    parser.add_argument("--out", required=True, help="run folder (config.json, train.log, checkpoint.pt)")
    parser.add_argument("--steps", type=int, default=None, help="override the config's step count")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (JSON values), e.g. --set batch_size=4; repeatable")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after this step, keeping the schedule of the full run (resume later)")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over even if the run folder has a checkpoint (train.log and metrics.jsonl start "
                             "afresh). Without it a run folder with a checkpoint is resumed, and the config must "
                             f"match the checkpoint's except {', '.join(RESUMABLE)} (steps may grow)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load(args.config), args.set)
        if args.steps is not None:
            config["steps"] = args.steps
    except (OSError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        if args.stop_at is not None and args.stop_at < 1:
            raise InputError(f"--stop-at must be a step >= 1, got {args.stop_at}")
        check_output_path(args.out, folder=True)
        result = train_function(config, args.out, resume=not args.no_resume, progress=not args.no_progress,
                                stop_at=args.stop_at)
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"step {result['step']}: checkpoint {result['checkpoint']}")
    return 0


def place_run(network, optimizer, config: dict, out_dir: Path, dist, log, step: int, resumed: bool):
    """Network and optimiser state on the run's device, the DDP wrapper, config.json written, the start
    logged; returns the model to call (DDP-wrapped under torchrun)."""
    network.to(dist.device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(dist.device)
    model = dist.wrap(network)
    if dist.main:
        (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        log.info(f"{'resumed at step ' + str(step) if resumed else 'started'}: {count_parameters(network)} parameters, "
                 f"device {dist.device}, world size {dist.world}, config {out_dir / 'config.json'}")
    return model


def open_run(config: dict, out_dir: Path, dist, progress: bool, step: int, stop_at):
    """(metrics file or None, total steps, the step to stop after, tqdm bar or None). metrics.jsonl starts
    afresh for a run from step 0; a resumed run drops the records after its checkpoint's ``step`` (those
    steps run again)."""
    metrics = _open_metrics(Path(out_dir) / "metrics.jsonl", step) if dist.main else None
    total = int(config["steps"])
    end = total if stop_at is None else min(total, int(stop_at))
    bar = None
    if dist.main and progress:
        from tqdm import tqdm
        bar = tqdm(total=end, initial=min(step, end), desc=config.get("name", "train"), unit="step", dynamic_ncols=True)
    return metrics, total, end, bar


def _open_metrics(path: Path, step: int):
    if step <= 0 or not path.is_file():
        return open(path, "w")
    kept = []
    for line in path.read_text().splitlines():
        try:
            record_step_ = int(json.loads(line).get("step", 0))
        except (ValueError, TypeError, AttributeError):
            continue   # a line cut short by a kill
        if record_step_ <= step:
            kept.append(line)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text("".join(line + "\n" for line in kept))
    os.replace(temp, path)
    return open(path, "a")


def write_metrics(metrics, record: dict) -> None:
    """One JSON line in metrics.jsonl, flushed (a crashed run keeps its records)."""
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()


def finish_run(log, dist, step: int, history: list, validation, checkpoint_path: Path) -> dict:
    if dist.main:
        log.info(f"finished at step {step}; checkpoint {checkpoint_path}")
    return {"step": step, "history": history, "validation": validation, "checkpoint": str(checkpoint_path)}


def close_run(bar, metrics, dist) -> None:
    """End of a training loop, also on error: progress bar and metrics file closed, processes released."""
    if bar is not None:
        bar.close()
    if metrics is not None:
        metrics.close()
    dist.barrier()
    dist.close()


def due(config: dict, step: int, end: int) -> tuple:
    """(log, validate, checkpoint): which of a loop's periodic jobs are due after ``step``; each comes every
    ``log_every`` / ``validation.every`` (0: never) / ``checkpoint_every`` steps and at ``end``, the step the run
    stops at (its last, or ``--stop-at``)."""
    every = int(config.get("validation", {}).get("every", 0) or 0)
    return (step % int(config["log_every"]) == 0 or step == end,
            bool(every) and (step % every == 0 or step == end),
            step % int(config["checkpoint_every"]) == 0 or step == end)
