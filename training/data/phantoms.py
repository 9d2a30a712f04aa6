"""Synthetic CT- and MR-like 2D slices with labelled structures, for training beside the few real scans.

:func:`make_phantom` draws, on a square canvas:

* a body: an ellipse with a wobbly outline (low-order Fourier perturbation of its radius), a fat layer
  under the skin, air outside (CT: -1000 HU; MR: near 0);
* organs: 2-5 smooth blobs (thresholded smoothed noise inside a random ellipse), each with its own mean
  intensity and texture (smoothed noise); some touch, so boundaries between organs of similar
  intensity must be found;
* lesions: small round blobs inside organs, hypo- or hyper-intense;
* vessels: tubes 1.5-5 px wide along smooth random curves, bright (contrast-enhanced);
* bones (CT: 300-1000 HU cortex; MR: dark): a vertebra-like ring and thin rib-like arcs near the body
  outline, the thin structures interactive networks find hardest;
* partial-volume blur (Gaussian, sigma 0.4-1.2 px), an MR bias field, and noise (Gaussian for CT,
  Rician for MR).

Every structure gets its own label value (later structures overwrite earlier ones where they overlap,
as in a real label map), and ``names`` tells what each is ("organ", "lesion", "vessel", "vertebra", "rib", "body").
Intensities are raw (HU for CT), so the normalisation used at inference (``IMISSegmentLib.normalize``)
is exercised by training too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class Phantom:
    image: np.ndarray            # (H, W) float32, raw intensities (HU for CT)
    label: np.ndarray            # (H, W) uint16, 0 background, one value per structure
    names: dict = field(default_factory=dict)   # label value -> kind
    modality: str = "ct"


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / (field_.std() + 1e-6)


def _wobbly_ellipse(rows, cols, centre, radii, angle, rng, wobble=0.08, harmonics=4) -> np.ndarray:
    dr, dc = rows - centre[0], cols - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dr * cos + dc * sin) / radii[0], (-dr * sin + dc * cos) / radii[1]
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for h in range(2, harmonics + 2):
        radius += wobble * rng.standard_normal() / h * np.cos(h * theta + rng.uniform(0, 2 * np.pi))
    return u * u + v * v <= radius * radius


def _blob(rng, rows, cols, centre, radii, smoothness) -> np.ndarray:
    base = _wobbly_ellipse(rows, cols, centre, radii, rng.uniform(0, np.pi), rng, wobble=0.15)
    noise = _smooth_noise(rng, rows.shape, smoothness)
    distance = ndimage.distance_transform_edt(base)
    return base & (noise > -0.3 - distance / max(radii) * 2.0)


def _curve(rng, shape, start, length, steps=80) -> np.ndarray:
    """(steps, 2) points of a smooth random walk from ``start``."""
    angle = rng.uniform(0, 2 * np.pi)
    turn = np.cumsum(ndimage.gaussian_filter1d(rng.standard_normal(steps), 6) * 0.25)
    step = length / steps
    points = [np.asarray(start, np.float64)]
    for t in turn:
        points.append(points[-1] + step * np.array([np.sin(angle + t), np.cos(angle + t)]))
    return np.clip(np.array(points), 0, np.array(shape) - 1)


def _tube(shape, points, width) -> np.ndarray:
    canvas = np.zeros(shape, bool)
    index = np.round(points).astype(int)
    canvas[index[:, 0], index[:, 1]] = True
    # densify the polyline so the distance transform sees a continuous centre line
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
        rr = np.round(np.linspace(r0, r1, n + 1)).astype(int)
        cc = np.round(np.linspace(c0, c1, n + 1)).astype(int)
        canvas[rr, cc] = True
    return ndimage.distance_transform_edt(~canvas) <= width / 2.0


def make_phantom(size: int = 256, rng=None, modality: str | None = None) -> Phantom:
    """One synthetic slice of ``size`` x ``size``; ``modality`` "ct", "mr" or None (random)."""
    rng = np.random.default_rng(rng)
    modality = modality or ("ct" if rng.random() < 0.6 else "mr")
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    shape = (size, size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    ct = modality == "ct"
    label = np.zeros(shape, np.uint16)
    names: dict = {}

    def add(mask, kind) -> int:
        value = len(names) + 1
        names[value] = kind
        label[mask] = value
        return value

    # body, fat layer
    centre = (size * rng.uniform(0.45, 0.55), size * rng.uniform(0.45, 0.55))
    radii = (size * rng.uniform(0.28, 0.45), size * rng.uniform(0.35, 0.48))
    body = _wobbly_ellipse(rows, cols, centre, radii, rng.uniform(-0.2, 0.2), rng, wobble=0.05)
    fat = body & ~ndimage.binary_erosion(body, iterations=int(rng.integers(3, 12)))
    if ct:
        image = np.full(shape, -1000.0, np.float32)
        image[body] = rng.uniform(20, 60)
        image[fat] = rng.uniform(-120, -70)
    else:
        image = np.full(shape, rng.uniform(0, 20), np.float32)
        image[body] = rng.uniform(250, 450)
        image[fat] = rng.uniform(700, 900)
    image += body * _smooth_noise(rng, shape, 4) * (8 if ct else 25)
    interior = ndimage.binary_erosion(body, iterations=max(4, size // 24))
    if rng.random() < 0.15:
        add(body, "body")

    # organs
    for _ in range(int(rng.integers(2, 6))):
        inside = np.argwhere(interior)
        if inside.size == 0:
            break
        c = inside[rng.integers(len(inside))]
        r = (size * rng.uniform(0.05, 0.2), size * rng.uniform(0.05, 0.2))
        organ = _blob(rng, rows, cols, c, r, rng.uniform(3, 10)) & interior
        if organ.sum() < 30:
            continue
        mean = rng.uniform(-30, 220) if ct else rng.uniform(100, 1100)
        texture = _smooth_noise(rng, shape, rng.uniform(0.8, 3)) * (rng.uniform(3, 20) if ct else rng.uniform(10, 60))
        image[organ] = mean + texture[organ]
        value = add(organ, "organ")
        # lesions inside this organ
        for _ in range(int(rng.poisson(0.7))):
            pts = np.argwhere(label == value)
            if len(pts) < 50:
                break
            lc = pts[rng.integers(len(pts))]
            lr = size * rng.uniform(0.01, 0.05)
            lesion = _blob(rng, rows, cols, lc, (lr, lr * rng.uniform(0.7, 1.4)), 2) & body
            if lesion.sum() < 6:
                continue
            delta = rng.choice([-1, 1]) * (rng.uniform(25, 90) if ct else rng.uniform(100, 400))
            image[lesion] = mean + delta + texture[lesion] * 0.5
            add(lesion, "lesion")

    # vessels
    for _ in range(int(rng.integers(0, 4))):
        inside = np.argwhere(interior)
        start = inside[rng.integers(len(inside))]
        vessel = _tube(shape, _curve(rng, shape, start, size * rng.uniform(0.1, 0.5)), rng.uniform(1.5, 5)) & body
        if vessel.sum() < 10:
            continue
        image[vessel] = rng.uniform(150, 320) if ct else rng.uniform(900, 1400)
        add(vessel, "vessel")

    # bones: a vertebra-like ring below the centre and thin rib-like arcs under the fat layer
    if rng.random() < 0.7:
        vc = (centre[0] + radii[0] * rng.uniform(0.4, 0.6), centre[1] + rng.uniform(-5, 5))
        vr = size * rng.uniform(0.04, 0.07)
        outer = _wobbly_ellipse(rows, cols, vc, (vr, vr * 1.2), 0.0, rng, 0.05) & body
        marrow = ndimage.binary_erosion(outer, iterations=int(rng.integers(1, 4)))
        image[outer] = rng.uniform(500, 1000) if ct else rng.uniform(20, 80)
        image[marrow] = rng.uniform(150, 300) if ct else rng.uniform(400, 600)
        add(outer, "vertebra")
    for _ in range(int(rng.integers(0, 5))):
        theta = rng.uniform(0, 2 * np.pi)
        depth = rng.uniform(0.8, 0.9)
        arc_t = np.linspace(theta, theta + rng.uniform(0.3, 0.9), 60)
        points = np.stack([centre[0] + depth * radii[0] * np.sin(arc_t), centre[1] + depth * radii[1] * np.cos(arc_t)], 1)
        rib = _tube(shape, np.clip(points, 0, size - 1), rng.uniform(1.5, 4)) & body
        if rib.sum() < 8:
            continue
        image[rib] = rng.uniform(300, 900) if ct else rng.uniform(20, 80)
        add(rib, "rib")

    # partial-volume blur, bias field (MR), noise
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 1.2))
    if ct:
        image += rng.normal(0, rng.uniform(5, 30), shape).astype(np.float32)
    else:
        image *= np.exp(0.25 * _smooth_noise(rng, shape, size / 4))
        sigma = rng.uniform(5, 40)
        image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)).astype(np.float32)
    return Phantom(image.astype(np.float32), label, names, modality)
