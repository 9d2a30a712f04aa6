"""Atomic file writes: write beside the target, then rename; a failure leaves no partial file.

An output that cannot be written (a folder where a file is wanted, a read-only place) is an
:class:`InputError` naming the path: :func:`check_output_path` tells before long work, and
:func:`atomic_path` when the file cannot be made or moved into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import InputError
from ..interrupts import deferred


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, error: OSError) -> InputError:
    return InputError(f"cannot write {path}: {error.strerror or error}")


def check_output_path(path, folder: bool = False) -> None:
    """InputError unless ``path`` can be written as a file (``folder``: as a folder to write files in): it is not
    an existing folder (file), and its nearest existing folder takes new files (tried with a temporary file,
    removed at once; nothing is created)."""
    path = Path(path)
    base = path if folder else path.parent
    try:
        if path.exists() and path.is_dir() != folder:
            raise InputError(f"cannot write {path}: it is an existing "
                             + ("file; give a folder" if folder else "folder; give a file name"))
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise InputError(f"cannot write {path}: {base} is a file, not a folder")
        with deferred():   # a Ctrl-C between making and removing the probe must not leave it behind
            handle, probe = tempfile.mkstemp(prefix=".imis-write-test.", dir=base)
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise InputError(f"cannot write {path}: no file can be made in {base} ({error.strerror or error})") from None


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.
    Where ``path`` itself cannot be made (its folder not writable, ``path`` a folder, ...), an InputError
    naming it; what the caller's writing raises passes unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    except FileExistsError:   # from mkdir: a part of the folder path is a file
        raise InputError(f"cannot write {path}: {path.parent} is not a folder") from None
    except OSError as error:
        raise _cannot_write(path, error) from None
    os.close(handle)
    try:
        yield Path(temp)
        try:
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            os.replace(temp, path)
        except OSError as error:
            raise _cannot_write(path, error) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
