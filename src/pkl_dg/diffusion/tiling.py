"""Run the denoiser on overlapping tiles blended with a smooth window.

Only the network is tiled: the sampler calls the wrapped denoiser on the full x_t, so the
physics (FFT convolution, guidance) stays global and no seam can come from it. Tiles of
one step are batched, at most ``max_pixels`` per network call (:data:`CPU_MAX_PIXELS`
on a CPU, where smaller calls run faster per pixel), and equal in size
(:func:`balanced_tile`). Blending weights are a separable raised-cosine ramp over the
overlap (1 in each tile's interior), normalised by their sum, so a flat input stays
exactly flat wherever the network's output is flat. On a CUDA out-of-memory error the
tile size halves and the step is retried.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange, repeat

from pkl_dg.threads import in_two, two_at_once

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MIN_TILE = 64
#: pixels (tiles × samples × tile area) per network call: 4 samples of a 1024² tile
MAX_PIXELS = 4 * 1024 * 1024
#: the same on a CPU: one 512² image per call. Larger calls run slower per pixel there (the
#: activations leave the caches). Measured on the idle 2-core development machine, shipped
#: prior, bf16, 1 thread, 4 samples, median ms for all 4: 512² 933 as one call vs 691 one
#: sample per call; 1024² 4758 vs 3728; 256² 219 vs 186.
CPU_MAX_PIXELS = 512 * 512
#: largest tile on a CPU, for an image that is tiled anyway: 736² tiles ran a 4096² image
#: through the shipped prior in 2.14–2.18 s against 2.37–2.49 s for tiles of 871² (what
#: 1024 gives), 2.13–2.18 for 640² and 2.29–2.41 for 512² (bf16, 2 threads, one call, the
#: median of 2; /work/exp24/tiles.py, session 24): past ~700 px a tile's activations leave
#: the caches, below it the overlap grows.
CPU_TILE = 768


def balanced_tile(n: int, tile: int, overlap: int) -> int:
    """Side of equal tiles covering ``n`` pixels: as few tiles of at most ``tile`` as
    possible, shrunk to share the length evenly. (Tiles of the full ``tile`` with the last
    one flush against the edge overlap far more than ``overlap``: 2048 px in 1024-px
    tiles took 3 tiles per axis, 2.25× the pixels; balanced, 3 tiles of 726 px, 1.13×.)"""
    if n <= tile:
        return n
    count = math.ceil((n - overlap) / (tile - overlap))
    return min(tile, math.ceil((n - overlap) / count) + overlap)


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((n - tile) / stride) + 1
    return [min(i * stride, n - tile) for i in range(count)]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, dtype, device) -> torch.Tensor:
    w = torch.ones(n, dtype=dtype, device=device)
    if overlap > 0:
        r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, dtype=dtype, device=device)
                                             + 0.5) / overlap)
        if not at_start:
            w[:overlap] = r
        if not at_end:
            w[-overlap:] = r.flip(0)
    return w


class TiledDenoiser:
    """Wrap ``denoiser`` so images larger than ``tile`` are processed in tiles.

    Parameters
    ----------
    tile
        Tile side in pixels (images with both sides ≤ tile run in one piece).
    overlap
        Overlap between neighbouring tiles (pixels); the blend ramp spans it.
    max_pixels
        Most pixels (tiles × batch × tile area) sent through the network at once; at least
        one image (one sample of one tile) always goes. Bounds the activation memory; on a
        CPU, calls of about one 512² image also run faster per pixel than larger batches
        (:data:`CPU_MAX_PIXELS`).
    in_two
        Make two calls at least and run half of them on a helper thread, each on one torch
        thread (:func:`pkl_dg.threads.in_two`; only where the caller has two threads or
        more): a CPU's network calls, where two whole calls share two cores better than
        torch's threads share one call. The denoiser must be safe to call from two threads.
    """

    def __init__(self, denoiser: Denoiser, tile: int = 512, overlap: int = 64,
                 max_pixels: int = MAX_PIXELS, in_two: bool = False) -> None:
        if tile < MIN_TILE or overlap < 0 or overlap >= tile // 2:
            raise ValueError(f"tile must be ≥ {MIN_TILE} and overlap in [0, tile/2); "
                             f"got tile={tile}, overlap={overlap}")
        self.denoiser = denoiser
        self.tile = tile
        self.overlap = overlap
        self.max_pixels = max_pixels
        self.in_two = in_two
        self.retries = 0  # how often an out-of-memory error halved the tile
        self._window_cache: dict | None = None  # see _windows
        self._window_key: tuple | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return self._run(x, t)
            except torch.OutOfMemoryError:
                if x.is_cuda:
                    torch.cuda.empty_cache()
                if self.tile // 2 < MIN_TILE:
                    raise RuntimeError(
                        f"out of memory even with {self.tile}-pixel tiles: choose device "
                        "'cpu' or close other programs using the GPU") from None
                self.tile //= 2
                self.overlap = min(self.overlap, self.tile // 4)
                self.max_pixels = max(1, self.max_pixels // 4)
                self.retries += 1

    def _batched(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser over the batch of ``x`` in calls of at most ``max_pixels`` pixels
        (at least one image per call); with ``in_two``, in two calls at least, half of
        them on a helper thread (:func:`pkl_dg.threads.in_two`)."""
        per_call = max(1, self.max_pixels // (x.shape[-2] * x.shape[-1]))
        split = self.in_two and len(x) > 1 and two_at_once()
        if split:
            per_call = min(per_call, (len(x) + 1) // 2)
        if per_call >= len(x):
            return self.denoiser(x, t)
        calls = [(x[i: i + per_call], t[i: i + per_call]) for i in range(0, len(x), per_call)]
        if split:
            return torch.cat(in_two(lambda c: self.denoiser(*c), calls))
        return torch.cat([self.denoiser(*c) for c in calls])

    def _run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h <= self.tile and w <= self.tile:
            return self._batched(x, t)
        th, tw = (balanced_tile(h, self.tile, self.overlap),
                  balanced_tile(w, self.tile, self.overlap))
        ys, xs = _starts(h, th, self.overlap), _starts(w, tw, self.overlap)
        out = torch.zeros(n, c, h, w, dtype=torch.float32, device=x.device)
        boxes = [(y0, x0) for y0 in ys for x0 in xs]
        windows = self._windows(h, w, th, tw, x.device)
        per_call = max(1, self.max_pixels // (n * th * tw))
        if self.in_two and two_at_once():  # two calls' tiles at once: half on a helper
            per_call *= 2
        for i in range(0, len(boxes), per_call):
            chunk = boxes[i: i + per_call]
            # the network sees every tile of every image as one batch, tile-major
            tiles = rearrange([x[..., y0: y0 + th, x0: x0 + tw] for y0, x0 in chunk],
                              "tile n c h w -> (tile n) c h w")
            eps = self._batched(tiles, repeat(t, "n -> (tile n)", tile=len(chunk))).float()
            eps = rearrange(eps, "(tile n) c h w -> tile n c h w", tile=len(chunk))
            for j, (y0, x0) in enumerate(chunk):
                out[..., y0: y0 + th, x0: x0 + tw].addcmul_(
                    eps[j], windows[y0 == 0, y0 + th == h, x0 == 0, x0 + tw == w])
        return out.div_(windows["norm"])

    def _windows(self, h: int, w: int, th: int, tw: int, device: torch.device) -> dict:
        """The tiles' blending windows, by where a tile lies (at the first row, last row,
        first column, last column of tiles), and their sum "norm" (1, 1, h, w) over the
        image: the same for every call on this image, so made once and kept (an image and
        at most 9 tiles held; at 4096² it saved an image's allocation and 25 tile
        additions per call)."""
        key = (h, w, th, tw, self.overlap, str(device))
        if self._window_key != key:
            self._window_cache, self._window_key = None, None  # the old one freed first
            norm = torch.zeros(1, 1, h, w, dtype=torch.float32, device=device)
            cache: dict = {"norm": norm}
            for y0 in _starts(h, th, self.overlap):
                wy = _ramp(th, self.overlap, y0 == 0, y0 + th == h, torch.float32, device)
                for x0 in _starts(w, tw, self.overlap):
                    where = (y0 == 0, y0 + th == h, x0 == 0, x0 + tw == w)
                    if where not in cache:
                        wx = _ramp(tw, self.overlap, x0 == 0, x0 + tw == w, torch.float32,
                                   device)
                        cache[where] = wy[:, None] * wx[None, :]
                    norm[..., y0: y0 + th, x0: x0 + tw] += cache[where]
            self._window_cache, self._window_key = cache, key
        return self._window_cache


def needs_tiles(shape: tuple[int, int], tile_size: int) -> bool:
    """Whether a (H, W) = ``shape`` image runs the network on tiles of ``tile_size`` px
    (0 = never)."""
    return bool(tile_size) and max(shape) > tile_size


def tiled_network(denoiser: Denoiser, shape: tuple[int, int], tile_size: int, overlap: int,
                  device: torch.device) -> Denoiser:
    """The network as a restoration of a (H, W) = ``shape`` image runs it.

    Images wider or taller than ``tile_size`` (px; 0 = never) run on tiles with
    ``min(overlap, tile_size/4)`` px of overlap; on a CPU those tiles are at most
    :data:`CPU_TILE` (faster per pixel). On a CPU every image, tiled or not, goes
    through in calls of at most :data:`CPU_MAX_PIXELS` (faster per pixel); elsewhere the
    untiled network is returned as it is. A torch module's calls on a CPU go half on a
    helper thread (``in_two`` of :class:`TiledDenoiser`). The tile used is the returned
    wrapper's ``tile``.
    """
    tiled = needs_tiles(shape, tile_size)
    cpu = device.type == "cpu"
    if not tiled and not cpu:
        return denoiser
    tile = (min(tile_size, CPU_TILE) if cpu else tile_size) if tiled else max(*shape, MIN_TILE)
    # a torch module (also behind a wrapper such as the widget's) may be called from two
    # threads at once; any other callable is called from one
    module = isinstance(getattr(denoiser, "__wrapped__", denoiser), torch.nn.Module)
    return TiledDenoiser(denoiser, tile=tile, overlap=min(overlap, tile // 4),
                         max_pixels=CPU_MAX_PIXELS if cpu else MAX_PIXELS,
                         in_two=cpu and module)
