"""Cutting a large plane into overlapping chunks and blending the restored chunks back.

Only Y and X are cut (never T, C or Z). Each chunk's *core* is a cell of a regular grid of
side ``chunk``; the chunk that is restored extends its core by a *halo* of
``margin + blend/2`` pixels on every side that has a neighbour. ``margin`` is the width a
chunk's own edge corrupts (PSF support + the network's receptive field, see
:func:`margin_for`); ``blend`` is the width of the raised-cosine cross-fade centred on each
core boundary. The cross-fade therefore only uses pixels at least ``margin`` from a chunk's
edge, and the weights of neighbouring chunks sum to 1 everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: how far a cut edge disturbs a diffusion restoration (pixels, beyond the PSF support):
#: the in-network tiler's overlap (``restoration.TILE_OVERLAP``). Each chunk takes the
#: plane's intensity scale and its window of the plane's noise
#: (:class:`~pkl_dg.plane_chunk.PlaneChunk`), so chunks and the whole plane draw the same
#: posterior sample. Measured (PKL, 3 steps, one sample, 1024² test plane in 256² chunks,
#: tests/test_batch.py): the blended result differs from the whole-plane one by 6.2 %
#: relative, another seed by 29.7 %.
NETWORK_REACH = 64
#: the same for Richardson–Lucy, whose iterations spread an edge's influence over several
#: PSF widths (measured: 1024² in 256² chunks agree with the whole plane to < 1e-3)
RL_REACH = 64
#: width of the cross-fade between neighbouring chunks (pixels)
BLEND = 32
#: the smallest chunk side (pixels): the cross-fade plus 8
MIN_CHUNK = BLEND + 8


@dataclass(frozen=True)
class Chunk:
    """One chunk of a plane: core and extended box as (y0, y1, x0, x1), half-open."""

    core: tuple[int, int, int, int]
    box: tuple[int, int, int, int]


def margin_for(psf_shape: tuple[int, ...], method: str) -> int:
    """Pixels a chunk's edge corrupts: the PSF support (its YX side) plus the reach of the
    method (:data:`NETWORK_REACH` for the methods that run the prior, else
    :data:`RL_REACH`)."""
    from pkl_dg.settings_rules import uses_prior

    return int(max(psf_shape[-2:])) + (NETWORK_REACH if uses_prior({"method": method})
                                       else RL_REACH)


def plan_chunks(height: int, width: int, chunk: int, margin: int,
                blend: int = BLEND) -> list[Chunk]:
    """Chunks covering a ``height × width`` plane with cores of side ``chunk``.

    Raises
    ------
    ValueError
        ``chunk`` smaller than the cross-fade plus 8 pixels, or negative margin/blend.
    """
    if margin < 0 or blend < 0:
        raise ValueError(f"margin and blend must be ≥ 0, got {margin}, {blend}")
    if chunk < blend + 8:
        raise ValueError(f"chunk side {chunk} px is too small: use at least {blend + 8} "
                         "(or 0: never cut)")
    halo = margin + math.ceil(blend / 2)
    out = []
    for y0 in range(0, height, chunk):
        for x0 in range(0, width, chunk):
            y1, x1 = min(y0 + chunk, height), min(x0 + chunk, width)
            box = (max(y0 - halo, 0), min(y1 + halo, height),
                   max(x0 - halo, 0), min(x1 + halo, width))
            out.append(Chunk((y0, y1, x0, x1), box))
    return out


def _weights_1d(lo: int, hi: int, core_lo: int, core_hi: int, n: int, blend: int) -> np.ndarray:
    """Weights along one axis of a chunk spanning [lo, hi) with core [core_lo, core_hi)."""
    pos = np.arange(lo, hi, dtype=np.float64) + 0.5
    w = np.ones(hi - lo)
    half = blend / 2
    for edge, rising in ((core_lo, True), (core_hi, False)):
        if edge in (0, n):
            continue  # the image border: no neighbour to fade into
        if blend == 0:
            t = (pos >= edge).astype(float) if rising else (pos < edge).astype(float)
        else:
            u = np.clip((pos - (edge - half)) / blend, 0.0, 1.0)
            t = 0.5 - 0.5 * np.cos(math.pi * u)
            if not rising:
                t = 1.0 - t
        w *= t
    return w


def blend_chunks(shape: tuple[int, int], chunks: list[Chunk], results: list[np.ndarray],
                 blend: int = BLEND) -> np.ndarray:
    """Blend restored chunks (each the shape of its ``box``) into one float32 plane."""
    h, w = shape
    out = np.zeros((h, w), dtype=np.float64)
    norm = np.zeros((h, w), dtype=np.float64)
    for c, r in zip(chunks, results):
        y0, y1, x0, x1 = c.box
        if r.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"chunk result {r.shape} does not match its box {c.box}")
        wy = _weights_1d(y0, y1, c.core[0], c.core[1], h, blend)
        wx = _weights_1d(x0, x1, c.core[2], c.core[3], w, blend)
        win = wy[:, None] * wx[None, :]
        out[y0:y1, x0:x1] += r * win
        norm[y0:y1, x0:x1] += win
    if np.any(norm <= 0):
        raise RuntimeError("chunks do not cover the plane (internal error)")
    return (out / norm).astype(np.float32)
