"""Ctrl-C (SIGINT) that is never lost, never half-imports a package and never leaves a half-made output.

Two things can go wrong when Python's default handler raises ``KeyboardInterrupt`` at an arbitrary point:

* inside the import of a compiled package (``import slicer`` loads about a hundred VTK / MRML modules from C),
  the loader turns the interrupt into an ``ImportError`` ("Failed to load vtkIOExport", "cannot load module more
  than once per process"), which reads as "not installed", or it leaves the package half-initialised and the
  process crashes later;
* between two steps that belong together (moving a run's files into place) it leaves them half done.

:func:`deferred` holds SIGINT back for a block and raises ``KeyboardInterrupt`` when the block ends; the engines
wrap their lazy imports in it. It acts only in the main thread and only where SIGINT has Python's default
handler or :func:`install`'s (an application such as Slicer that handles SIGINT itself is left alone).

:func:`install` (the command line) puts in a handler that does the same for every import without being asked,
remembers that an interrupt came (:func:`pending`, so one that some code swallowed is still seen at the end) and,
after :func:`closing`, only remembers it: the command then takes back what it wrote and exits 130.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import types
from typing import Optional

_REDELIVER_S = 0.02   # a deferred interrupt is tried again this often until the import that held it has ended


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.previous = None
        self.pending = False      # a SIGINT came since install() or clear()
        self.waiting = False      # ... and has not been raised yet
        self.depth = 0            # deferred() blocks open
        self.closing = False      # the command is done: remember interrupts, raise none
        self.timer: Optional[threading.Timer] = None


_state = _State()


def _in_import(frame: Optional[types.FrameType]) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _redeliver() -> None:
    _state.timer = None
    if _state.waiting and _state.installed:
        with contextlib.suppress(OSError, ValueError):
            if hasattr(signal, "pthread_kill"):   # to the main thread, where the handler runs
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            else:                                 # (Windows: os.kill would terminate the process)
                signal.raise_signal(signal.SIGINT)


def _handler(signum, frame) -> None:
    _state.pending = True
    if _state.closing or _state.depth:
        _state.waiting = not _state.closing
        return
    if _in_import(frame):
        _state.waiting = True
        if _state.timer is None:
            _state.timer = threading.Timer(_REDELIVER_S, _redeliver)
            _state.timer.daemon = True
            _state.timer.start()
        return
    _state.waiting = False
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> bool:
    """Put in the command line's SIGINT handler (main thread only); False where it is there already or cannot be.
    :func:`uninstall` puts the previous one back."""
    if _state.installed or not _main_thread():
        return False
    _state.previous = signal.signal(signal.SIGINT, _handler)
    _state.installed = True
    clear()
    return True


def uninstall() -> None:
    if _state.installed and _main_thread():
        signal.signal(signal.SIGINT, _state.previous if _state.previous is not None else signal.default_int_handler)
        _state.installed = False
        _state.closing = False
        _state.waiting = False


def clear() -> None:
    """Forget interrupts seen so far (a new command in the same process)."""
    _state.pending = _state.waiting = _state.closing = False
    _state.depth = 0


def pending() -> bool:
    """Whether a SIGINT came since :func:`install` or :func:`clear`, whether or not it was raised and caught."""
    return _state.pending


def closing() -> None:
    """From now on an interrupt is only remembered (:func:`pending`): the command is done and about to exit."""
    _state.closing = True


@contextlib.contextmanager
def deferred():
    """Hold SIGINT back for the block; raise ``KeyboardInterrupt`` as it ends if one came (see the module doc)."""
    if not _main_thread():
        yield
        return
    if _state.installed and signal.getsignal(signal.SIGINT) is _handler:
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
            if not _state.depth and _state.waiting and not _state.closing:
                _state.waiting = False
                raise KeyboardInterrupt
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield   # someone else's handler (an application's, or SIG_IGN): theirs to decide
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt
