"""FFT filtering of images by a PSF's OTF: on the whole padded grid, or in tiles.

:func:`fft_filter` filters on the whole grid; on the CPU a batch goes one image at a time
(torch's batched CPU FFT ran 2–3× slower than the same FFTs one by one).

:func:`valid_filter` filters a large 2D image in overlap-save tiles, on the CPU. One FFT
over a whole large image is memory-bound: on the benchmark machine (torch 2.13 CPU, MKL
FFT) an rfft + irfft pair costs about 25 ms per megapixel at 4096–4320² but 5 at
512–576². Each tile is filtered with the OTF on its own grid and only its valid part, the
outputs whose support lies inside the tile, is kept: that is exactly the linear
convolution (no wrap-around), so the result equals the one-FFT result up to float
rounding. The tiles are shared among torch's threads (see :func:`valid_filter`). On a GPU
one large FFT is efficient, so tiles are used on the CPU only.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import wait

import torch

from pkl_dg.threads import helper_pool, one_thread

#: side of the FFT grid of one tile
BLOCK_FFT = 320
#: neighbouring tiles of a row filtered together, in one batched FFT (see :func:`valid_filter`)
TILES_PER_JOB = 4
#: smallest lateral side (px) of an image filtered in tiles (see :func:`use_blocks`)
BLOCK_FROM = 1792


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
    per side.

    Measured (session 21, 2 cores, ``/work/exp21/rlab.py``), one Richardson–Lucy iteration
    in tiles / as one FFT, ms: on 2 threads 1536² 29.8 / 21.5, 1792² 32.8 / 33.9, 2048²
    42.3 / 49.1, 3072² 113 / 192, 4096² 159 / 373; on 1 thread 1536² 48.0 / 42.8, 1792²
    54.5 / 70.8, 2048² 72.4 / 104.
    """
    if ndim != 2 or like.device.type != "cpu" or like.requires_grad or \
            8 * max(radius) > BLOCK_FFT:
        return False
    return min(shape[-2:]) >= BLOCK_FROM


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

    The tiles go in jobs of up to :data:`TILES_PER_JOB` neighbours in a row (one batched
    FFT each: fewer calls per pixel). The caller and ``torch.get_num_threads() − 1``
    helper threads (:func:`pkl_dg.threads.helper_pool`) each take the next job when done
    with one, every job's operations on one thread (with OpenMP's passive wait a tile's
    small operations shared among threads cost more than they gain,
    :mod:`pkl_dg.threads`); torch releases the GIL inside each operation, so the jobs run
    in parallel, and a core that another process keeps busy simply does fewer of them.
    Jobs write disjoint parts of ``out``; the call returns when all are done, also when one
    fails (its error is raised). Measured (2 cores, ``/work/exp21/ab2.py``), the blur of a
    2048² image: one tile per step on one thread 29–33 ms; jobs of 4 on one thread 27–31
    ms, on two threads 17–20 ms.
    """
    (r0, r1), (m0, m1) = radius, out_shape
    if out is None:
        out = u.new_empty(*u.shape[:-2], m0, m1)
    plan = _TilePlan(u.reshape(-1, *u.shape[-2:]), out.reshape(-1, m0, m1), otf,
                     (r0, r1), offset)
    across = -(-m1 // plan.b1)
    jobs = [(p, y, j, min(TILES_PER_JOB, across - j)) for p in range(plan.src.shape[0])
            for y in range(0, m0, plan.b0) for j in range(0, across, TILES_PER_JOB)]
    workers = min(torch.get_num_threads(), len(jobs))
    taken, failed = itertools.count(), []  # next() on a count is atomic under the GIL
    # autograd's modes are per thread: a helper runs in the caller's
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def work() -> None:
        buffers = plan.buffers(min(TILES_PER_JOB, across))
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while not failed and (i := next(taken)) < len(jobs):
                    plan.run(jobs[i], buffers)
        except BaseException:
            failed.append(True)  # the others stop after their current job
            raise

    with one_thread():  # the caller's count comes back when all tiles are done
        pool = helper_pool(workers - 1) if workers > 1 else None
        helpers = [pool.submit(work) for _ in range(workers - 1)] if pool else []
        try:
            work()
        finally:
            wait(helpers)  # nothing writes into out once this returns
        for h in helpers:
            h.result()  # re-raises a helper's error
    return out


class _TilePlan:
    """Filtering one job (a run of tiles of one row of one plane) for :func:`valid_filter`."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, otf: torch.Tensor,
                 radius: tuple[int, int], offset: float) -> None:
        t = BLOCK_FFT
        self.src, self.dst, self.otf, self.added = src, dst, otf, offset
        self.r0, self.r1 = radius
        self.b0, self.b1 = t - 2 * self.r0, t - 2 * self.r1  # valid outputs per tile

    def buffers(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tiles, spectra, outputs) for jobs of up to ``k`` tiles."""
        t = BLOCK_FFT
        return (self.src.new_empty(k, t, t), self.otf.new_empty(k, *self.otf.shape),
                self.src.new_empty(k, t, t))

    def run(self, job: tuple[int, int, int, int], buffers) -> None:
        t, (b0, b1), (r0, r1) = BLOCK_FFT, (self.b0, self.b1), (self.r0, self.r1)
        p, y, j, k = job
        src, dst = self.src[p], self.dst[p]
        tiles, spec, full = (b[:k] for b in buffers)
        hin, width, x = min(t, src.shape[0] - y), src.shape[1], j * b1
        # every tile of a row but its last lies inside the input; the last may stop short
        whole = k if x + (k - 1) * b1 + t <= width else k - 1
        if hin < t:  # the last row: zeros below the input
            tiles[:, hin:].zero_()
        if whole:
            band = src[y: y + hin, x:]
            tiles[:whole, :hin].copy_(band.as_strided(
                (whole, hin, t), (b1 * band.stride(1), band.stride(0), band.stride(1))))
        if whole < k:
            left = x + whole * b1
            win = width - left
            tiles[whole, :hin, win:].zero_()
            tiles[whole, :hin, :win].copy_(src[y: y + hin, left:])
        torch.fft.rfft2(tiles, out=spec)
        spec.mul_(self.otf)
        if self.added:  # + c everywhere = + c·t² on each tile's zero-frequency bin
            spec[:, 0, 0] += self.added * t * t
        torch.fft.irfft2(spec, s=(t, t), out=full)
        h, m1 = min(b0, dst.shape[0] - y), dst.shape[1]
        inside = min(k, (m1 - x) // b1)  # tiles whose b1 valid columns all exist
        if inside:
            dst[y: y + h, x: x + inside * b1].view(h, inside, b1).permute(1, 0, 2).copy_(
                full[:inside, r0: r0 + h, r1: r1 + b1])
        if inside < k:
            w = m1 - x - inside * b1
            dst[y: y + h, x + inside * b1: m1].copy_(full[inside, r0: r0 + h, r1: r1 + w])
