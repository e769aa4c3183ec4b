"""FFT filtering of images by a PSF's OTF: on the whole padded grid, or in tiles.

:func:`fft_filter` filters on the whole grid; on the CPU a batch goes one image at a time
(torch's batched CPU FFT ran 2–3× slower than the same FFTs one by one).

:func:`valid_filter` filters a large 2D image in overlap-save tiles, on the CPU. One FFT
over a whole large image is memory-bound. Measured on the benchmark machine (torch 2.13
CPU, MKL FFT, 1 thread): an rfft + irfft pair costs about 25 ms per megapixel at
4096–4320² but 5 at 512–576²; the blur of a 4096² image by a σ = 2 px Gaussian took 300 ms
as one FFT and 121 ms in 320² tiles (256²: 131 ms, 512²: 223–272 ms); A + Aᵀ through a
workspace 621 → 245 ms at 4096², 121 → 61 ms at 2048². Each tile is filtered with the OTF
on its own grid and only its valid part, the outputs whose support lies inside the tile,
is kept: that is exactly the linear convolution (no wrap-around), so the result equals the
one-FFT result up to float rounding. On a GPU one large FFT is efficient, so tiles are used
on the CPU only.
"""

from __future__ import annotations

import math

import torch

from pkl_dg.threads import one_thread

#: side of the FFT grid of one tile
BLOCK_FFT = 320
#: smallest lateral side (px) of an image filtered in tiles
BLOCK_FROM = 1536
#: the same with more than one torch thread (see :func:`use_blocks`)
BLOCK_FROM_THREADED = 3072


def fft_filter(canvas: torch.Tensor, otf: torch.Tensor, fshape: tuple[int, ...],
               dims: tuple[int, ...], offset: float = 0.0, spec: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``irfftn(rfftn(canvas) · otf) + offset`` over the last ``len(dims)`` axes.

    Parameters
    ----------
    canvas : torch.Tensor
        (..., *fshape) real, contiguous; leading axes are a batch.
    otf : torch.Tensor
        rfftn of the kernel on the ``fshape`` grid (complex, broadcastable per plane).
    fshape, dims
        The FFT grid and its (negative) axes.
    offset : float
        Added to every output value, on the spectrum's zero-frequency bin (no extra pass).
    spec, out : torch.Tensor, optional
        Preallocated spectrum (..., rfft shape) and output (like ``canvas``).

    Returns
    -------
    torch.Tensor
        ``out`` (allocated when not given).

    On the CPU the batch is transformed one element at a time: torch's batched CPU FFT ran
    2–3× slower than the same FFTs one by one (measured here, 1 thread: A + Aᵀ of 4 samples
    of 502² 39.9 vs 14.0 ms; of 4 × 1024² 204 vs 101 ms), as one image's FFT stays in cache
    and the batch's does not. On other devices the batch goes in one call.
    """
    d = len(dims)
    planes = int(math.prod(canvas.shape[:-d])) if canvas.device.type == "cpu" else 1
    if canvas.requires_grad:  # autograd cannot see through out=: the same, allocating
        parts = [torch.fft.irfftn(torch.fft.rfftn(c, dim=dims) * otf, s=fshape, dim=dims)
                 for c in ([canvas] if planes <= 1 else canvas.reshape(-1, *fshape))]
        return (parts[0] if planes <= 1 else torch.stack(parts).reshape(canvas.shape)) + offset
    if spec is None:
        spec = torch.empty(*canvas.shape[:-d], *otf.shape[-d:], dtype=otf.dtype,
                           device=canvas.device)
    if out is None:
        out = torch.empty_like(canvas)
    n = float(math.prod(fshape))
    dc = (Ellipsis,) + (0,) * d
    views = [(canvas, spec, out)] if planes <= 1 else list(zip(
        canvas.reshape(-1, *canvas.shape[-d:]), spec.reshape(-1, *spec.shape[-d:]),
        out.reshape(-1, *out.shape[-d:])))
    for c, sp, o in views:
        torch.fft.rfftn(c, dim=dims, out=sp)
        sp.mul_(otf)
        if offset:  # + c everywhere = + c·N on the zero-frequency bin (irfftn divides by N)
            sp[dc].add_(offset * n)  # in place on the view: no write-back through __setitem__
        torch.fft.irfftn(sp, s=fshape, dim=dims, out=o)
    return out


def use_blocks(ndim: int, radius: tuple[int, ...], shape: tuple[int, ...],
               like: torch.Tensor) -> bool:
    """Whether a ``ndim``-D PSF of ``radius`` filters an image of lateral ``shape`` in tiles:
    a 2D PSF, on the CPU, outside autograd, a PSF of at most an eighth of the tile (else the
    overlap costs more than the tiles save), and an image of at least :data:`BLOCK_FROM` px
    per side on one torch thread, :data:`BLOCK_FROM_THREADED` on more.

    With several threads and OpenMP's passive wait (:mod:`pkl_dg.threads`) each of a tile's
    small operations would wake the other threads, so the tiles run on one thread
    (:func:`valid_filter`). Measured at 2 threads (session 20, ``/work/exp20/tiles.py``),
    one RL iteration in tiles / as one FFT: 2048² 42–44 / 41–42 ms, 3072² 138–140 /
    162–168 ms, 4096² 227–231 / 337–340 ms (tiles on two threads: 368–370 ms); on one
    thread tiles won at 2048² too (A + Aᵀ 60 vs 114 ms; 4096² 239 vs 622 ms).
    """
    if ndim != 2 or like.device.type != "cpu" or like.requires_grad or \
            8 * max(radius) > BLOCK_FFT:
        return False
    side = BLOCK_FROM if torch.get_num_threads() == 1 else BLOCK_FROM_THREADED
    return min(shape[-2:]) >= side


def valid_filter(u: torch.Tensor, otf: torch.Tensor, radius: tuple[int, int],
                 out_shape: tuple[int, int], out: torch.Tensor | None = None,
                 offset: float = 0.0) -> torch.Tensor:
    """The valid part of the filtering of ``u`` by the kernel whose OTF is ``otf``, in tiles.

    Parameters
    ----------
    u : torch.Tensor
        (..., m0 + 2 r0, m1 + 2 r1) real, the input with its margins (reflect padding for
        the blur, zeros for its adjoint); leading axes are a batch.
    otf : torch.Tensor
        rfft2 of the kernel centred at the origin of a :data:`BLOCK_FFT`² grid (its
        conjugate for the adjoint, a correlation).
    radius : tuple of int
        The kernel's half sizes (r0, r1), px.
    out_shape : tuple of int
        (m0, m1).
    out : torch.Tensor, optional
        (..., m0, m1) buffer to write into (allocated when not given).
    offset : float
        Added to every output value (on each tile's zero-frequency bin: no extra pass).

    Returns
    -------
    torch.Tensor
        ``out``: output i uses inputs i … i + 2r.
    """
    t = BLOCK_FFT
    (r0, r1), (m0, m1) = radius, out_shape
    b0, b1 = t - 2 * r0, t - 2 * r1
    if out is None:
        out = u.new_empty(*u.shape[:-2], m0, m1)
    tile, full = u.new_empty(t, t), u.new_empty(t, t)
    spec = torch.empty(otf.shape, dtype=otf.dtype, device=u.device)
    with one_thread():  # a tile's operations are too small to share (pkl_dg.threads)
        for src, dst in zip(u.reshape(-1, *u.shape[-2:]), out.reshape(-1, m0, m1)):
            for y in range(0, m0, b0):
                h, hin = min(b0, m0 - y), min(t, m0 + 2 * r0 - y)
                for x in range(0, m1, b1):
                    w, win = min(b1, m1 - x), min(t, m1 + 2 * r1 - x)
                    if hin < t or win < t:  # a last, partial tile: zeros beyond the input
                        tile.zero_()
                    tile[:hin, :win].copy_(src[y: y + hin, x: x + win])
                    torch.fft.rfft2(tile, out=spec)
                    spec.mul_(otf)
                    if offset:  # + c everywhere = + c·t² on the zero-frequency bin
                        spec[0, 0] += offset * t * t
                    torch.fft.irfft2(spec, s=(t, t), out=full)
                    dst[y: y + h, x: x + w] = full[r0: r0 + h, r1: r1 + w]
    return out
