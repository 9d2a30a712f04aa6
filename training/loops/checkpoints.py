"""Reading a training checkpoint (``checkpoint.pt``), for the training loops (resume, ``init_from``) and the
exports alike: a missing, corrupt or non-checkpoint file is an InputError naming it."""
from __future__ import annotations

from pathlib import Path

import torch

from IMISSegmentLib.errors import InputError


def read_checkpoint(path, what: str = "checkpoint") -> dict:
    """``torch.load(path)``; InputError naming the file when it is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:   # corrupt, truncated, not a torch file: many exception types
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{what} {path} cannot be read (corrupt or not a torch checkpoint: {detail[:200]})") from None
    if not isinstance(state, dict):
        raise InputError(f"{what} {path} is not a checkpoint (it holds a {type(state).__name__})")
    return state
