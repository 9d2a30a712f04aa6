"""``imis-segment bench``: how fast an engine answers a click, how long it takes to load, how much memory.

On a synthetic CT-like volume of ``slices`` x ``size`` x ``size`` voxels (soft tissue, air outside a body
ellipse, a bright ellipsoid "organ"), through the public API (:meth:`InteractiveSession.add_click`):

* ``load_s``: :func:`IMISSegmentLib.load_model` (bundle checks, runtime session creation);
* ``first_click_ms``: the first click after loading (runtimes allocate and optimise on first use);
* ``click_to_mask_ms``: median / p95 / mean / min / max over ``repeats`` clicks after that (positive and
  negative clicks inside and around the organ, cycling over the slices; the session is reset every
  ``clicks_per_reset`` clicks outside the timing, so corrections with feedback and first clicks mix);
* ``network_forward_ms``: the network alone (engines that expose ``run_network``), same repeats;
* ``name_alone_ms``: a structure name alone on a slice (:meth:`InteractiveSession.add_text`, the session reset
  before each, after one untimed first call), same repeats, for bundles with the text localiser; else
  ``"not measured: <reason>"``;
* ``memory``: peak resident set size of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: whole
  process, includes the interpreter and libraries; taken before loading, after loading and at the end),
  and ``tracemalloc_peak_mb`` over a few clicks run under :mod:`tracemalloc` (memory allocated through
  Python's allocators, numpy arrays included, but not onnxruntime's or torch's native buffers);
* ``litemedsam``: LiteMedSAM's per-slice time (box prompt, image encoder + decoder, embedding cache
  cleared before each slice) measured in the same run, or ``"not available: <reason>"``.
"""
from __future__ import annotations

import os
import platform
import sys
import time
import tracemalloc
from typing import Optional

import numpy as np

from .errors import EngineUnavailableError, InputError


def synthetic_volume(size: int = 512, slices: int = 4, seed: int = 0):
    """(volume float32 (slices, size, size) in HU, organ mask bool) of a CT-like phantom."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((rows - 0.5) / 0.42) ** 2 + ((cols - 0.5) / 0.47) ** 2 <= 1.0
    volume = np.empty((slices, size, size), np.float32)
    mask = np.zeros((slices, size, size), bool)
    for k in range(slices):
        radius = 0.14 + 0.03 * np.sin(np.pi * (k + 0.5) / slices)
        organ = ((rows - 0.45) / radius) ** 2 + ((cols - 0.55) / (1.3 * radius)) ** 2 <= 1.0
        plane = np.where(body, 40.0, -1000.0).astype(np.float32)
        plane[organ] = 160.0
        plane += rng.normal(0.0, 12.0, plane.shape).astype(np.float32)
        volume[k], mask[k] = plane, organ
    return volume, mask


def _stats(values_ms) -> dict:
    values = np.asarray(values_ms, dtype=np.float64)
    return {"median": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "mean": round(float(values.mean()), 3), "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3), "n": int(values.size)}


def _maxrss_mb() -> Optional[float]:
    try:
        import resource   # POSIX only
    except ImportError:
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0, 1)  # macOS: bytes


def _click_plan(mask: np.ndarray, count: int, seed: int = 1):
    """``count`` clicks (k, j, i, positive): inside the organ (positive) or in the ring around it (negative)."""
    rng = np.random.default_rng(seed)
    plan = []
    for n in range(count):
        k = n % mask.shape[0]
        plane = mask[k]
        positive = n % 3 != 2
        if positive:
            candidates = np.argwhere(plane)
        else:
            from scipy import ndimage
            ring = ndimage.binary_dilation(plane, iterations=max(2, plane.shape[0] // 40)) & ~plane
            candidates = np.argwhere(ring)
        j, i = candidates[rng.integers(len(candidates))]
        plan.append((k, int(j), int(i), positive))
    return plan


def _litemedsam_per_slice(volume: np.ndarray, mask: np.ndarray, repeats: int, device: str):
    """Per-slice seconds of LiteMedSAM with a tight box (embedding cache cleared each time), or a reason string."""
    from .engines.registry import create_engine
    from .session import InteractiveSession

    try:
        engine = create_engine("litemedsam", device=device)
        start = time.perf_counter()
        engine.load()
        load_s = time.perf_counter() - start
    except EngineUnavailableError as error:
        return f"not available: {error}"
    session = InteractiveSession(engine)
    session.set_volume(volume, spacing=(1.0, 1.0, 1.0))
    times = []
    for n in range(repeats):
        k = n % volume.shape[0]
        rows, cols = np.nonzero(mask[k])
        engine.clear_cache()
        start = time.perf_counter()
        session.add_box(k, (int(rows.min()), int(cols.min())), (int(rows.max()), int(cols.max())))
        times.append(1000.0 * (time.perf_counter() - start))
    return {"per_slice_ms": _stats(times), "load_s": round(load_s, 3), "prompt": "tight box",
            "device": str(engine.device)}


def _name_alone_ms(model, session, slices: int, repeats: int):
    """Stats of a localised name alone on a slice (see the module docstring), or why it was not measured."""
    localiser, vocabulary = getattr(model, "localiser", None), getattr(model, "vocabulary", None)
    if localiser is None or vocabulary is None:
        return "not measured: the engine has no text localiser"
    name = vocabulary.code_name(*localiser.codes[0])
    session.reset()
    session.add_text(name, 0)   # untimed: the localiser's runtime allocates on first use (first_click_ms for clicks)
    times = []
    for n in range(repeats):
        session.reset()
        start = time.perf_counter()
        session.add_text(name, n % slices)
        times.append(1000.0 * (time.perf_counter() - start))
    return {"name": name, **_stats(times)}


def run_bench(engine: Optional[str] = None, size: int = 512, repeats: int = 30, slices: int = 4,
              device: str = "auto", clicks_per_reset: int = 5, litemedsam_repeats: int = 3,
              tracemalloc_clicks: int = 3, seed: int = 0) -> dict:
    """Run the benchmark (see the module docstring) and return its report as a JSON-ready dict."""
    from .models import load_model
    from .session import InteractiveSession

    for name, value, low in (("size", size, 16), ("repeats", repeats, 1), ("slices", slices, 1),
                             ("clicks_per_reset", clicks_per_reset, 1), ("litemedsam_repeats", litemedsam_repeats, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
    volume, mask = synthetic_volume(int(size), int(slices), seed)
    rss_before = _maxrss_mb()
    start = time.perf_counter()
    model = load_model(engine, device=device)
    load_s = time.perf_counter() - start
    rss_loaded = _maxrss_mb()
    if "click" not in model.capabilities:
        raise InputError(f"engine '{model.name}' does not take clicks; bench measures click-to-mask latency")
    session = InteractiveSession(model)
    session.set_volume(volume, spacing=(1.0, 1.0, 1.0))

    plan = _click_plan(mask, repeats + 1 + tracemalloc_clicks, seed + 1)
    k, j, i, positive = plan[0]
    start = time.perf_counter()
    session.add_click((k, j, i), positive=True)
    first_ms = 1000.0 * (time.perf_counter() - start)
    session.reset()

    times = []
    for n, (k, j, i, positive) in enumerate(plan[1:repeats + 1]):
        if n % clicks_per_reset == 0:
            session.reset()
            positive = True   # a first click on a slice is a positive one
        start = time.perf_counter()
        session.add_click((k, j, i), positive=positive)
        times.append(1000.0 * (time.perf_counter() - start))

    forward = None
    if hasattr(model, "run_network") and hasattr(model, "size"):
        image = np.random.default_rng(seed).random((1, 1, model.size, model.size), dtype=np.float32)
        prompts = np.zeros((1, 4, model.size, model.size), np.float32)
        prompts[:, 0, 100:110, 100:110] = 1.0
        forward_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.run_network(image, prompts)
            forward_times.append(1000.0 * (time.perf_counter() - start))
        forward = _stats(forward_times)

    name_alone = _name_alone_ms(model, session, int(slices), int(repeats))
    session.reset()
    tracemalloc.start()
    try:
        for k, j, i, positive in plan[repeats + 1:]:
            session.add_click((k, j, i), positive=True)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    report = {
        "engine": model.describe(),
        "volume": {"shape": [int(slices), int(size), int(size)], "kind": "synthetic CT-like, float32 HU"},
        "repeats": int(repeats),
        "load_s": round(load_s, 3),
        "first_click_ms": round(first_ms, 3),
        "click_to_mask_ms": _stats(times),
        "network_forward_ms": forward,
        "name_alone_ms": name_alone,
        "memory": {
            "maxrss_mb_before_load": rss_before,
            "maxrss_mb_after_load": rss_loaded,
            "maxrss_mb_end": _maxrss_mb(),
            "tracemalloc_peak_mb": round(traced_peak / 2 ** 20, 2),
            "method": "maxrss: resource.getrusage(RUSAGE_SELF).ru_maxrss, peak resident set of the whole process; "
                      "tracemalloc_peak_mb: peak of Python-allocator memory (numpy included, native runtime "
                      f"buffers not) over {tracemalloc_clicks} clicks",
        },
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "threads_env": {k: os.environ[k] for k in
                                                               ("OMP_NUM_THREADS", "IMIS_SEGMENT_THREADS",
                                                                "OMP_WAIT_POLICY") if k in os.environ},
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    if getattr(model, "name", None) == "litemedsam" or litemedsam_repeats == 0:
        report["litemedsam"] = "not measured: " + ("it is the engine benched" if litemedsam_repeats
                                                  else "litemedsam_repeats is 0")
    else:
        report["litemedsam"] = _litemedsam_per_slice(volume, mask, int(litemedsam_repeats), device)
    return report
