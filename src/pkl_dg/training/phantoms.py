"""Procedural, sharp fluorescence-like ground truth for training the diffusion prior.

Everything is generated from a seeded :class:`numpy.random.Generator`, so a seed gives the
same images on every machine. Structures:

* microtubule-like filaments: long, smooth, gently curving lines, 0.5–1.5 px wide;
* actin-like meshes: many short, thin, nearly straight filaments, and parallel bundles;
* puncta (sub-resolution spots) and vesicles (small rings);
* membrane outlines: closed smooth contours of cell-sized objects;
* nuclei and blobs: filled smooth shapes with low-pass texture and soft edges;
* large smooth objects (``blobs``): few big nuclei/cell bodies, weakly textured, sometimes
  with nucleoli-like bright spots, on a dark or hazy background;
* dim and bright regions (smooth gain field) and varied smooth backgrounds.

Images are float32 in ``[0, 1]`` (see :func:`normalise_patch`): the model domain is
``z = 2·x − 1``. Nothing here reads real microscopy data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PhantomConfig", "TRAINING_MIX", "parse_mix", "render_phantom", "normalise_patch", "augment", "phantom_batch"]


class PhantomConfig:
    """Which structure kinds a phantom is drawn from, with their probabilities.

    The default mix is the one the validation protocol uses (``phantom_batch``) and the one
    the first 8,671 steps of the shipped prior were trained on. :data:`TRAINING_MIX` adds
    the ``blobs`` kind; :func:`parse_mix` reads a ``kind:weight,...`` string.
    """

    def __init__(self, kinds: tuple[str, ...] = ("microtubules", "actin", "puncta", "cells", "mixed"),
                 kind_weights: tuple[float, ...] = (0.25, 0.25, 0.1, 0.15, 0.25)) -> None:
        if len(kinds) != len(kind_weights):
            raise ValueError("kinds and kind_weights must have the same length")
        unknown = set(kinds) - set(_KINDS)
        if unknown:
            raise ValueError(f"unknown phantom kinds {sorted(unknown)}; known: {sorted(_KINDS)}")
        w = np.asarray(kind_weights, dtype=float)
        self.kinds = tuple(kinds)
        self.kind_p = w / w.sum()


# ---------------------------------------------------------------- low-level rendering

def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian blur via FFT (phantoms are cropped from larger canvases)."""
    if sigma <= 0:
        return img
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    tf = np.exp(-2 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2))
    return np.fft.irfft2(np.fft.rfft2(img) * tf, s=(h, w))


def _splat(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray, wts: np.ndarray) -> None:
    """Add point masses at sub-pixel positions with bilinear weights (periodic wrap)."""
    h, w = canvas.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    for dy, dx, ww in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)),
                       (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        np.add.at(canvas, ((y0 + dy) % h, (x0 + dx) % w), wts * ww)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~``scale`` px."""
    scale = min(scale, min(shape) / 4)  # keep the field random on small canvases
    f = _gaussian_blur(rng.standard_normal(shape), scale)
    f = f - f.mean()
    s = f.std()
    return f / s if s > 1e-12 else np.zeros(shape)


def _curve(rng: np.random.Generator, start: np.ndarray, angle: float, length: float,
           curvature_sd: float, step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Points along a persistent random walk (smooth curve), spaced ``step`` px."""
    n = max(int(length / step), 2)
    # smoothly varying curvature: low-pass filtered white noise
    k = rng.standard_normal(n) * curvature_sd
    kernel = np.exp(-0.5 * (np.arange(-15, 16) / 6.0) ** 2)
    k = np.convolve(k, kernel / kernel.sum() * 3.0, mode="same")
    theta = angle + np.cumsum(k) * step
    ys = start[0] + np.cumsum(np.sin(theta)) * step
    xs = start[1] + np.cumsum(np.cos(theta)) * step
    return ys, xs


def _draw_lines(rng, canvas, n, length, curvature_sd, brightness, step=0.5, bundle=0):
    h, w = canvas.shape
    for _ in range(n):
        start = rng.uniform(0, 1, 2) * (h, w)
        angle = rng.uniform(0, 2 * np.pi)
        ln = rng.uniform(*length)
        ys, xs = _curve(rng, start, angle, ln, rng.uniform(*curvature_sd), step)
        b = rng.uniform(*brightness)
        # brightness varies slowly along the filament (labelling density)
        mod = 1 + 0.3 * np.convolve(rng.standard_normal(ys.size), np.ones(20) / 20 ** 0.5 / 4, mode="same")
        wts = np.clip(b * mod, 0, None) * step
        _splat(canvas, ys, xs, wts)
        for j in range(bundle):  # parallel neighbours: stress-fibre-like bundles
            off = (j + 1) * rng.uniform(1.5, 3.0)
            nx, ny = -np.sin(angle), np.cos(angle)
            _splat(canvas, ys + off * ny, xs + off * nx, wts * rng.uniform(0.5, 1.0))


def _closed_contour(rng, cy, cx, radius, roughness, n_harm=6, step=0.5):
    n = max(int(2 * np.pi * radius * 1.3 / step), 16)
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, n_harm + 2):
        r += roughness / k * rng.standard_normal() * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.4, None)
    ey = rng.uniform(0.7, 1.3)
    return cy + ey * r * np.sin(phi), cx + r * np.cos(phi) / ey, phi


# ---------------------------------------------------------------- structure layers

def _layer_microtubules(rng, shape, density):
    h, w = shape
    canvas = np.zeros(shape)
    n = int(rng.uniform(4, 30) * density * h * w / 256 ** 2) + 1
    _draw_lines(rng, canvas, n, (0.5 * max(h, w), 2.0 * max(h, w)), (0.003, 0.03), (0.5, 1.5))
    return _gaussian_blur(canvas, rng.uniform(0.5, 1.3))


def _layer_actin(rng, shape, density):
    h, w = shape
    canvas = np.zeros(shape)
    n = int(rng.uniform(40, 250) * density * h * w / 256 ** 2) + 1
    _draw_lines(rng, canvas, n, (10, 80), (0.0, 0.03), (0.2, 0.8))
    nb = rng.integers(0, 6)
    _draw_lines(rng, canvas, nb, (60, 300), (0.0, 0.01), (0.6, 1.5), bundle=int(rng.integers(1, 4)))
    return _gaussian_blur(canvas, rng.uniform(0.4, 1.0))


def _layer_puncta(rng, shape, density):
    h, w = shape
    out = np.zeros(shape)
    n = int(rng.uniform(20, 300) * density * h * w / 256 ** 2) + 1
    for sigma in (rng.uniform(0.5, 0.9), rng.uniform(0.9, 1.8)):
        c = np.zeros(shape)
        ys, xs = rng.uniform(0, h, n // 2 + 1), rng.uniform(0, w, n // 2 + 1)
        _splat(c, ys, xs, rng.lognormal(0.0, 0.6, ys.size) * 4 * sigma ** 2)
        out += _gaussian_blur(c, sigma)
    # vesicles: small rings
    c = np.zeros(shape)
    for _ in range(int(rng.uniform(0, 25) * density * h * w / 256 ** 2)):
        ys, xs, _ = _closed_contour(rng, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 7), 0.1)
        _splat(c, ys, xs, np.full(ys.size, rng.uniform(0.4, 1.2) * 0.5))
    return out + _gaussian_blur(c, rng.uniform(0.5, 0.9))


def _layer_cells(rng, shape, density):
    """Membrane outlines and textured nuclei / blobs."""
    h, w = shape
    mem = np.zeros(shape)
    blobs = np.zeros(shape)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    n_cells = int(rng.integers(1, 5) * max(density, 0.5) * h * w / 256 ** 2) + 1
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(20, 90)
        if rng.random() < 0.7:
            ys, xs, _ = _closed_contour(rng, cy, cx, radius, rng.uniform(0.1, 0.6))
            _splat(mem, ys, xs, np.full(ys.size, rng.uniform(0.5, 1.5) * 0.5))
        if rng.random() < 0.6:  # nucleus: filled, textured, soft-edged
            rn = radius * rng.uniform(0.25, 0.5)
            ey = rng.uniform(0.7, 1.3)
            ang = rng.uniform(0, np.pi)
            dy = (yy - cy + h / 2) % h - h / 2
            dx = (xx - cx + w / 2) % w - w / 2
            u = dy * np.cos(ang) + dx * np.sin(ang)
            v = -dy * np.sin(ang) + dx * np.cos(ang)
            d = np.sqrt((u / ey) ** 2 + (v * ey) ** 2) / rn
            edge = 1 / (1 + np.exp(np.clip((d - 1) * rng.uniform(6, 25), -50, 50)))
            tex = 1 + rng.uniform(0.1, 0.5) * _smooth_noise(rng, shape, rng.uniform(1.0, 4.0))
            blobs += np.clip(edge * tex, 0, None) * rng.uniform(0.3, 1.0)
    return _gaussian_blur(mem, rng.uniform(0.5, 1.2)) + blobs


def _layer_blobs(rng, shape, density):
    """A few large, smooth, weakly textured objects (nuclei, cell bodies) with soft edges."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(shape)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        rn = rng.uniform(12, 0.45 * min(h, w))
        ey = rng.uniform(0.6, 1.4)
        ang = rng.uniform(0, np.pi)
        dy = (yy - cy + h / 2) % h - h / 2
        dx = (xx - cx + w / 2) % w - w / 2
        u = dy * np.cos(ang) + dx * np.sin(ang)
        v = -dy * np.sin(ang) + dx * np.cos(ang)
        d = np.sqrt((u / ey) ** 2 + (v * ey) ** 2) / rn
        edge = 1 / (1 + np.exp(np.clip((d - 1) * rng.uniform(4, 30), -50, 50)))
        # texture from none to moderate, correlation length 2–12 px
        tex = 1 + rng.uniform(0.0, 0.35) * _smooth_noise(rng, shape, rng.uniform(2.0, 12.0))
        if rng.random() < 0.4:  # brighter or dimmer rim (lamina-like)
            tex = tex + rng.uniform(-0.3, 0.6) * np.exp(-0.5 * ((d - 0.9) / 0.08) ** 2)
        obj = np.clip(edge * tex, 0, None) * rng.uniform(0.3, 1.0)
        if rng.random() < 0.4:  # nucleoli: a few bright soft spots inside
            c = np.zeros(shape)
            k = int(rng.integers(1, 5))
            ys = cy + rng.uniform(-0.5, 0.5, k) * rn
            xs = cx + rng.uniform(-0.5, 0.5, k) * rn
            sig = rng.uniform(1.5, 4.0)
            _splat(c, ys, xs, rng.uniform(0.3, 1.0, k) * 2 * np.pi * sig ** 2 * obj.max())
            obj = obj + _gaussian_blur(c, sig)
        out += obj
    return out


_KINDS = {
    "microtubules": (_layer_microtubules,),
    "actin": (_layer_actin,),
    "puncta": (_layer_puncta,),
    "cells": (_layer_cells, _layer_puncta),
    "mixed": (_layer_microtubules, _layer_actin, _layer_puncta, _layer_cells),
    "blobs": (_layer_blobs, _layer_puncta),
}

#: Mix used to fine-tune the shipped prior from step 8,671 on (adds large smooth objects).
TRAINING_MIX = "microtubules:0.2,actin:0.2,puncta:0.1,cells:0.15,mixed:0.2,blobs:0.15"


def parse_mix(text: str) -> PhantomConfig:
    """``"kind:weight,kind:weight"`` → :class:`PhantomConfig` (clear error on bad input)."""
    kinds, weights = [], []
    for part in text.split(","):
        name, sep, wt = part.strip().partition(":")
        try:
            value = float(wt) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"phantom mix entry {part!r} must look like kind:weight with a weight ≥ 0 "
                             f"(known kinds: {', '.join(_KINDS)})")
        kinds.append(name)
        weights.append(value)
    if sum(weights) <= 0:
        raise ValueError(f"phantom mix {text!r} has no positive weight")
    return PhantomConfig(tuple(kinds), tuple(weights))


# ---------------------------------------------------------------- public API

def render_phantom(rng: np.random.Generator, size: int | tuple[int, int] = 256,
                   config: PhantomConfig | None = None) -> np.ndarray:
    """Return one unnormalised, non-negative phantom (float64, ``size``)."""
    cfg = config or PhantomConfig()
    shape = (size, size) if np.isscalar(size) else tuple(int(s) for s in size)
    if min(shape) < 16:
        raise ValueError(f"phantom size must be at least 16 px, got {shape}")
    kind = cfg.kinds[rng.choice(len(cfg.kinds), p=cfg.kind_p)]
    layers = _KINDS[kind]
    img = np.zeros(shape)
    for fn in layers:
        wgt = rng.uniform(0.3, 1.0) if len(layers) > 1 else 1.0
        if len(layers) > 1 and rng.random() < 0.3:
            continue
        lay = fn(rng, shape, rng.uniform(0.3, 1.5))
        m = lay.max()
        if m > 0:
            img += wgt * lay / m
    if img.max() <= 0:  # every optional layer skipped: fall back to the first one
        img = layers[0](rng, shape, 1.0)
    # dim and bright regions
    if rng.random() < 0.7:
        gain = np.exp(rng.uniform(0.2, 0.9) * _smooth_noise(rng, shape, rng.uniform(15, 60)))
        img = img * gain
    # diffuse cytoplasmic / out-of-focus haze (still part of the sharp object)
    if rng.random() < 0.5:
        haze = np.clip(_smooth_noise(rng, shape, rng.uniform(8, 40)) + rng.uniform(-0.5, 1.5), 0, None)
        img = img + rng.uniform(0.0, 0.15) * img.max() * haze / max(haze.max(), 1e-12)
    return np.clip(img, 0, None)


def normalise_patch(img: np.ndarray, rng: np.random.Generator,
                    high: tuple[float, float] = (0.7, 0.9),
                    background: tuple[float, float] = (0.0, 0.1)) -> np.ndarray:
    """Map a non-negative image to ``[0, 1]`` (float32).

    The 99.9th percentile lands at ``q ~ U(high)`` (unless that would push the maximum
    above 1, then the maximum is 1) and a constant background ``b ~ U(background)`` is
    added. This matches the sampler's mapping ``z = 2·x/s − 1`` with ``s ≈ 1.2 × p99.9``.
    """
    img = np.asarray(img, dtype=np.float64)
    img = img - np.percentile(img, 0.1)
    b = rng.uniform(*background)
    q = rng.uniform(*high)
    p = np.percentile(img, 99.9)
    mx = img.max()
    if mx <= 0:
        return np.full(img.shape, b, dtype=np.float32)
    scale = (q - b) / p if p > 0 else np.inf
    scale = min(scale, (1.0 - b) / mx)
    return np.clip(b + img * scale, 0.0, 1.0).astype(np.float32)


def augment(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random dihedral transform (8 flips/rotations) and a mild gamma on ``[0, 1]`` data."""
    k = int(rng.integers(0, 4))
    out = np.rot90(patch, k)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.3:
        out = np.clip(out, 0, 1) ** rng.uniform(0.8, 1.25)
    return np.ascontiguousarray(out, dtype=np.float32)


def phantom_batch(seed: int, n: int, size: int = 128) -> np.ndarray:
    """``n`` normalised phantoms (n, size, size) in ``[0, 1]``, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([normalise_patch(render_phantom(rng, size), rng) for _ in range(n)])
