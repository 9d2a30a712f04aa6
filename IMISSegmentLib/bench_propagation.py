"""Propagation speed and memory for ``imis-segment bench --propagation-slices``.

Each volume length runs in a fresh Python process, so its peak resident set (``ru_maxrss``) is its own:
a synthetic int16 CT-like volume of ``slices`` x ``size`` x ``size`` with a tube-like structure that
runs through every slice (its radius and centre drift along the volume), a box on the middle slice, then
one timed :meth:`InteractiveSession.propagate`. Reported per length: ``slices_per_s`` (slices the network
segmented / propagation seconds), ``propagate_s``, its split into ``network_s`` (the memory network's sweeps;
``network_slices_per_s``) and ``containment_s`` (the Grow from Seeds containment, when it runs), the peak resident set of the process before and after
the propagation (it includes the volume, the result and the session's undo copy, which grow with the
length by design), ``working_memory_mb``: what the engine itself allocates at its peak (tracemalloc over
one more propagation, less the result array it returns: the memory manager, per-slice buffers), and the
Dice of the propagated mask against the tube (a sanity check, not an accuracy figure): a uniform tube through
every slice from a box on the middle one must be followed with Dice >= ``TUBE_DICE_MIN`` at every length, and
the report's ``sanity`` says whether it was (with the Dice of the box's own slice, to tell a bad start from a
propagation that loses the tube).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from .bench import _maxrss_mb
from .errors import InputError

TUBE_DICE_MIN = 0.95


def tube_volume(slices: int, size: int, seed: int = 0):
    """(int16 volume in HU, bool mask) of a body with a bright tube through every slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((rows - 0.5) / 0.42) ** 2 + ((cols - 0.5) / 0.47) ** 2 <= 1.0
    volume = np.empty((slices, size, size), np.int16)
    mask = np.zeros((slices, size, size), bool)
    for k in range(slices):
        phase = 2 * np.pi * k / max(1, slices)
        radius = 0.08 + 0.02 * np.sin(3 * phase)
        centre = (0.45 + 0.05 * np.sin(phase), 0.55 + 0.05 * np.cos(phase))
        tube = ((rows - centre[0]) / radius) ** 2 + ((cols - centre[1]) / (1.2 * radius)) ** 2 <= 1.0
        plane = np.where(body, 40.0, -1000.0) + rng.normal(0.0, 12.0, (size, size))
        plane[tube] += 120.0
        volume[k] = np.round(plane).astype(np.int16)
        mask[k] = tube
    return volume, mask


def _peak_rss_mb():
    """This process's peak resident set (VmHWM from /proc/self/status, which starts afresh at exec; Linux
    keeps ru_maxrss across fork + exec, so a child would report its parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return _maxrss_mb()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def measure(engine, slices: int, size: int, device: str = "auto") -> dict:
    """One propagation run in this process (see the module docstring)."""
    from .models import load_model
    from .session import InteractiveSession

    volume, mask = tube_volume(slices, size)
    model = load_model(engine, device=device)
    if "propagate" not in model.capabilities:
        raise InputError(f"engine '{model.name}' cannot propagate")
    session = InteractiveSession(model)
    session.set_volume(volume, spacing=(1.0, 1.0, 1.0))
    middle = slices // 2
    rows, cols = np.nonzero(mask[middle])
    session.add_box(middle, (int(rows.min()), int(cols.min())), (int(rows.max()), int(cols.max())))
    start_dice = _dice(session.result[middle] > 0, mask[middle])
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    session.propagate()
    seconds = time.perf_counter() - start
    rss_after = _peak_rss_mb()
    result = session.result.astype(bool)
    dice = _dice(result, mask)
    method = model.propagation_method() if hasattr(model, "propagation_method") else model.name
    propagator = getattr(model, "propagator", None)
    stats = dict(propagator.last_run) if method == "network" and propagator is not None else {}
    count = stats.get("slices_segmented", slices - 1)
    timing = dict(getattr(model, "last_propagation", {}) or {})
    # the engine's own working memory: Python-allocated peak of one more propagation, less the result it returns
    request = session.propagation_request()
    tracemalloc.start()
    try:
        out = model.propagate(request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"slices": slices, "size": size, "method": method, "propagate_s": round(seconds, 3),
            "slices_segmented": count, "slices_per_s": round(count / seconds, 2) if seconds > 0 else None,
            "network_s": _round(timing.get("network_s")), "containment_s": _round(timing.get("containment_s")),
            "network_slices_per_s": round(count / timing["network_s"], 2) if timing.get("network_s") else None,
            "max_memory_columns": stats.get("max_memory_columns"),
            "maxrss_mb_before_propagate": rss_before, "maxrss_mb_after_propagate": rss_after,
            "working_memory_mb": round((peak - np.asarray(out).nbytes) / 2 ** 20, 3),
            "volume_mb": round(volume.nbytes / 2 ** 20, 1), "tube_dice": round(float(dice), 4),
            "start_slice_dice": round(float(start_dice), 4)}


def sanity(runs) -> dict:
    """Whether the tube was followed at every length (``TUBE_DICE_MIN``); ``problem``: what went wrong, or None."""
    failed = [run for run in runs if run["tube_dice"] < TUBE_DICE_MIN]
    problem = None
    if failed:
        problem = "; ".join(
            f"{run['slices']} slices: Dice {run['tube_dice']:.3f}"
            + (f" (the box's own slice already {run['start_slice_dice']:.3f}: the 2D answer is wrong)"
               if run.get("start_slice_dice", 1.0) < TUBE_DICE_MIN else " (the propagation loses the tube)")
            for run in failed)
    return {"tube_dice_min": TUBE_DICE_MIN, "passed": not failed, "problem": problem}


def run_propagation_bench(engine, lengths, size: int = 512, device: str = "auto") -> dict:
    """:func:`measure` for each length, each in its own process; plus the memory growth between lengths."""
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 3:
        raise InputError(f"propagation bench lengths must be whole numbers >= 3, got {lengths}")
    runs = []
    for slices in lengths:
        code = ("import json, sys; from IMISSegmentLib.bench_propagation import measure; "
                f"print(json.dumps(measure({engine!r}, {slices}, {int(size)}, {device!r})))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr.strip().splitlines() or ["no output"])
            raise RuntimeError(f"propagation bench on {slices} slices failed: {lines[-1]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {"runs": runs, "method": "each length in a fresh process; maxrss = peak resident set of that process "
                                      "(VmHWM); working_memory_mb = tracemalloc peak of one more engine propagation "
                                      "less the result it returns"}
    report["sanity"] = sanity(runs)
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        report["maxrss_ratio_longest_to_shortest"] = round(last["maxrss_mb_after_propagate"]
                                                           / first["maxrss_mb_after_propagate"], 3)
        report["working_memory_ratio_longest_to_shortest"] = round(last["working_memory_mb"]
                                                                   / max(0.1, first["working_memory_mb"]), 3)
    return report
