"""Run folders of the loops that train nothing (training/loops/average.py, from_bundle.py): the same checks of
``--out`` and the same writing order, so that a folder with a checkpoint is complete.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.io.atomic import atomic_path, check_output_path, write_json, write_text

from training.loops.checkpoints import read_checkpoint
from training.loops.run import CHECKPOINT


def checked_folder(out_dir, loop: str, what: str) -> Path:
    """The checkpoint path in ``out_dir`` after checking that this loop (``loop``: the config's "loop"; ``what``:
    how its runs are called in messages) may write there: a new or empty folder, or an earlier run of the same
    loop; a training run, finished or begun (its config.json written first), is refused."""
    out_dir = Path(out_dir)
    check_output_path(out_dir, folder=True)
    target = out_dir / CHECKPOINT
    if not target.exists() and (out_dir / "config.json").is_file():
        try:
            earlier = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
        except ValueError:
            earlier = {}
        if not isinstance(earlier, dict) or earlier.get("loop") != loop:
            raise InputError(f"--out {out_dir} holds another run's config.json (a training run that has not written "
                             "its checkpoint yet?); choose another folder")
    if target.exists() and (read_checkpoint(target).get("config") or {}).get("loop") != loop:
        raise InputError(f"--out {out_dir} holds a training run, not {what}; choose another folder")
    return target


def write_folder(out_dir, config: dict, log: list, state: dict, metrics: str | None = None) -> dict:
    """Write ``config.json``, ``metrics.jsonl`` (when given), ``train.log`` (``log``: its lines) and, last and
    atomically, ``checkpoint.pt`` (``state``); an earlier checkpoint goes first, so no mixed folder is left.
    Returns {"checkpoint": path}; InputError when the folder cannot be written."""
    out_dir = Path(out_dir)
    target = out_dir / CHECKPOINT
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        write_json(out_dir / "config.json", config)
        if metrics is not None:
            write_text(out_dir / "metrics.jsonl", metrics)
        write_text(out_dir / "train.log", "\n".join(log) + "\n")
        with atomic_path(target) as temp:
            torch.save(state, temp)
    except OSError as error:
        raise InputError(f"cannot write the run folder {out_dir}: {error.strerror or error}") from None
    return {"checkpoint": str(target)}
