"""An evaluate run's output folder: written in full or not at all, never mixed with an earlier run's files.

A run writes everything (masks, results.json, tables, summary, plot) into ``OUT/unfinished-run/``, which holds an
``UNFINISHED.txt`` saying so, and moves it into ``OUT`` only when it has finished: the earlier run's files are
replaced, and those it had that this run does not write (its ``masks/`` when this run has ``--no-masks``) are
removed. A run that fails or is interrupted removes its folder and leaves ``OUT`` as it was; one that was killed
leaves ``unfinished-run/``, which the next run into the same ``OUT`` removes (or refuses to touch while the run
that wrote it is still going).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError
from ..interrupts import deferred

UNFINISHED_DIR = "unfinished-run"
MARKER = "UNFINISHED.txt"
RESULTS_FILE = "results.json"
# what a finished run leaves in OUT (report.write_report's files and the masks); an earlier run's are replaced
RUN_OUTPUTS = (RESULTS_FILE, "per_structure.csv", "steps.csv", "summary.md", "dice_vs_clicks.png", "masks")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running."""
    if os.name == "nt":   # os.kill would terminate it there
        import ctypes
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5              # access denied: it exists
        code = ctypes.c_ulong()
        running = kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) and code.value == 259   # STILL_ACTIVE
        kernel32.CloseHandle(handle)
        return bool(running)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer(staging: Path) -> tuple[str, int]:
    """(host, process id) of the run that made ``staging``, from its marker; ("", 0) when unknown."""
    fields = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (staging / MARKER).read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    try:
        return fields.get("host", ""), int(fields.get("process", "0"))
    except ValueError:
        return fields.get("host", ""), 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _clear_staging(staging: Path) -> None:
    """Remove ``staging``, its marker last (a removal cut short still says the folder is unfinished)."""
    with deferred():
        for entry in list(staging.iterdir()) if staging.is_dir() else []:
            if entry.name != MARKER:
                _remove(entry)
        _remove(staging / MARKER)
        with contextlib.suppress(FileNotFoundError):
            staging.rmdir()


def earlier_run(out_dir) -> list[str]:
    """The outputs of an earlier run in ``out_dir`` (names from :data:`RUN_OUTPUTS`)."""
    return [name for name in RUN_OUTPUTS if (Path(out_dir) / name).exists()]


@contextlib.contextmanager
def staged_run(out_dir, command: str = "imis-segment evaluate", echo: Optional[Callable[[str], None]] = None):
    """Yield the folder to write the run into (``OUT/unfinished-run``); see the module doc. ``echo`` gets a line
    when an unfinished run's folder is removed and when an earlier run's outputs are replaced."""
    out_dir = Path(out_dir)
    staging = out_dir / UNFINISHED_DIR
    if staging.exists():
        host, pid = _writer(staging)
        if (host and host != socket.gethostname()) or (pid and pid != os.getpid() and _alive(pid)):
            who = f"process {pid}" + ("" if host == socket.gethostname() else f" on {host or 'an unknown host'}")
            raise InputError(f"{staging} is the folder of another run writing into {out_dir} ({who}); wait for it "
                             f"to finish, give another --out, or remove {staging} if that run is no longer going")
        if echo:
            echo(f"note: removing {staging}: the partial outputs of an earlier run that did not finish")
        _clear_staging(staging)
    try:
        staging.mkdir(parents=True)
    except FileExistsError:
        raise InputError(f"cannot write {out_dir}: {staging} appeared while this run started (another run?)") from None
    except OSError as error:
        raise InputError(f"cannot write {out_dir}: {error.strerror or error}") from None
    try:
        (staging / MARKER).write_text(
            f"This folder holds the partial outputs of a run that has not finished: it is still going, or it was\n"
            f"interrupted or killed. They are not results. A finished run moves its outputs into {out_dir.name}/;\n"
            f"the next run into {out_dir.name}/ removes this folder.\n\n"
            f"command: {command}\nhost: {socket.gethostname()}\nprocess: {os.getpid()}\n"
            f"started: {time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8")
        yield staging
        _commit(out_dir, staging, echo)
    except BaseException:
        _clear_staging(staging)
        raise


def _commit(out_dir: Path, staging: Path, echo) -> None:
    """Move the finished run from ``staging`` into ``out_dir``: the earlier run's results.json goes first (it no
    longer describes the folder), the new one comes last; interrupts wait until it is done."""
    with deferred():
        earlier = earlier_run(out_dir)
        trash = staging / ".replaced"
        trash.mkdir()
        if (out_dir / RESULTS_FILE).exists():
            os.replace(out_dir / RESULTS_FILE, trash / RESULTS_FILE)
        produced = sorted((p.name for p in staging.iterdir() if p.name not in (MARKER, trash.name)),
                          key=lambda name: name == RESULTS_FILE)
        for name in [n for n in RUN_OUTPUTS if n not in produced] + produced:
            target = out_dir / name
            if target.exists() or target.is_symlink():
                os.replace(target, trash / name)
            if name in produced:
                os.replace(staging / name, target)
        if echo and earlier:
            echo(f"note: replaced the outputs of an earlier run in {out_dir} ({', '.join(earlier)})")
        _clear_staging(staging)
