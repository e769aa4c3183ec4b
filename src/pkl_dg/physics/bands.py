"""A and Aᵀ of one 2D image in horizontal bands, one band per thread (a small image on a CPU).

Why: a small image's FFTs (512², an FFT pair of 1 ms) gain little from torch's own threads
under OpenMP's passive wait, which a run keeps so that a busy machine stays usable
(:mod:`pkl_dg.threads`): every parallel region wakes sleeping threads. Two bands, each
filtered on its own grid by its own thread, share the work in one hand-off per
convolution instead (:data:`BANDS_FROM_PX` holds the measurements). Beside one busy
process the hand-off waits for a preempted thread but never spins: A + Aᵀ at 502² took
2.75 ms in bands, 2.46 on one thread and 8.2 with torch's two threads
(``/work/exp23/bandtest.py``; 1.93, 2.45 and 2.5 idle).

The result equals the whole-grid one up to float rounding: each band is an overlap-save
block (as :func:`pkl_dg.physics.filtering.valid_filter`'s tiles), whose grid holds the band
and the PSF's reach above and below it, so no output pixel sees a wrapped-around one.

Geometry, for an (H, W) image, PSF radius (r_y, r_x), reflect-padded image P of
(H + 2r_y, W + 2r_x):

* A: band j gives image rows [a_j, b_j) from P's rows [a_j, b_j + 2r_y), read in place as
  one contiguous slice of the padded canvas (rows beyond the band's reach may hold other
  data: the valid outputs do not see them);
* Aᵀ: band j gives P's rows [s_j, e_j) (the first and last band also the margins, which
  the fold then adds onto the pixels they mirror) from the zero-padded z.
"""

from __future__ import annotations

import math

import torch

from pkl_dg.physics.convolution import PSFConvolution, _even_smooth_size
from pkl_dg.physics.workspace import _MarginViews
from pkl_dg.threads import helper_pool, on_helper

#: bands of an image (one per thread; the machines this targets have two cores)
BANDS = 2
#: FFT-grid pixels (the whole image's) from which, and below which, a 2D image's A and Aᵀ
#: go in bands when the run has two or more threads. Measured on the 2-core benchmark
#: machine, passive wait, A + Aᵀ + a division (``/work/exp23/bandsizes.py``), one thread /
#: bands / torch's two threads, ms: 256² 0.66 / 0.90 / 1.52, 400² 1.47 / 1.44 / 1.85, 448²
#: 2.00 / 1.73 / 2.42, 512² 2.48 / 2.00 / 2.73, 640² 4.53 / 2.89 / 3.95, 1024² 10.3 / 6.90
#: / 7.22, 1280² 16.6 / 11.9 / 9.98 (image sides; the grid adds the PSF's reach).
BANDS_FROM_PX = 432 * 432
BANDS_BELOW_PX = 1200 * 1200


def use_bands(y: torch.Tensor, conv: PSFConvolution, threads: int) -> bool:
    """Whether :class:`BandedWorkspace` serves ``y`` (an (H, W) CPU image) with ``threads``
    CPU threads: a 2D PSF (FFT backend), two or more threads, an FFT grid within
    [:data:`BANDS_FROM_PX`, :data:`BANDS_BELOW_PX`) and rows enough for the bands."""
    if y.ndim != 2 or y.device.type != "cpu" or threads < 2 or conv.ndim != 2 \
            or conv.backend != "fft" or y.shape[0] < 2 * BANDS * (conv.radius[0] + 1):
        return False
    return BANDS_FROM_PX <= math.prod(conv.padded_shape(*y.shape)) < BANDS_BELOW_PX


class _Band:
    """One band's grid, spectrum and OTF (see the module docstring)."""

    def __init__(self, conv: PSFConvolution, source: torch.Tensor, first: int, rows: int,
                 target: torch.Tensor, shift: tuple[int, int], conj: bool) -> None:
        grid = (_even_smooth_size(rows + 2 * conv.radius[0]), source.shape[1])
        self.src = source[first: first + grid[0]]  # a contiguous view: the band's input
        self.otf = (conv.otf_conj if conj else conv.otf)(grid, source.dtype, source.device)
        self.spec = torch.empty(self.otf.shape, dtype=self.otf.dtype)
        self.grid, self.n = grid, float(grid[0] * grid[1])
        self.full = torch.empty(grid, dtype=source.dtype)
        dy, dx = shift
        self.valid = self.full[dy: dy + rows, dx: dx + target.shape[1]]
        self.target = target

    def __call__(self, offset: float = 0.0) -> None:
        # inference mode is per thread: a helper enters it when the buffers were made in it
        with torch.inference_mode(self.full.is_inference()):
            torch.fft.rfftn(self.src, out=self.spec)
            self.spec.mul_(self.otf)
            if offset:
                self.spec[0, 0] += offset * self.n
            torch.fft.irfftn(self.spec, s=self.grid, out=self.full)
            self.target.copy_(self.valid)


class BandedWorkspace:
    """A and Aᵀ of one :class:`PSFConvolution` for (H, W) CPU images, in :data:`BANDS` bands
    filtered in parallel (the caller and a helper thread, :func:`pkl_dg.threads.helper_pool`);
    the interface of :class:`pkl_dg.physics.workspace.ConvWorkspace`.

    Parameters
    ----------
    conv
        The operator (FFT backend, 2D PSF).
    shape
        (H, W), H ≥ 2·BANDS·(r_y + 1) and W > r_x (the reflect padding's condition).
    dtype
        float32 or float64.

    Results are views of internal buffers, valid until the next call of the same kind.
    Memory: about five image-sized float arrays plus the bands' grids.
    """

    def __init__(self, conv: PSFConvolution, shape: tuple[int, int],
                 dtype: torch.dtype = torch.float32) -> None:
        if conv.backend != "fft" or conv.ndim != 2 or len(shape) != 2:
            raise ValueError("BandedWorkspace needs a 2D PSF (FFT backend) and an (H, W) image")
        h, w = shape
        ry, rx = conv.radius
        if h < 2 * BANDS * (ry + 1):
            raise ValueError(f"an image of {h} rows is too short for {BANDS} bands of a PSF "
                             f"of radius {ry}")
        conv._check_fits(tuple(shape))
        self.conv, self.shape, self.image_shape = conv, tuple(shape), tuple(shape)
        gw = _even_smooth_size(w + 2 * rx)
        cuts = [round(j * h / BANDS) for j in range(BANDS + 1)]
        self._out = torch.empty(h, w, dtype=dtype)
        # A: the padded image P at rows [0, h + 2ry), columns [0, w + 2rx)
        rows = max(a + _even_smooth_size(b - a + 2 * ry) for a, b in zip(cuts, cuts[1:]))
        self._canvas = torch.zeros(rows, gw, dtype=dtype)
        self._forward = [_Band(conv, self._canvas, a, b - a, self._out[a:b], (ry, rx), False)
                         for a, b in zip(cuts, cuts[1:])]
        # Aᵀ: z at rows [2ry, 2ry + h) of a zero canvas (row q is P's row q − ry)
        edges = [0, *(a + ry for a in cuts[1:-1]), h + 2 * ry]
        rows = max(s + _even_smooth_size(e - s + 2 * ry) for s, e in zip(edges, edges[1:]))
        self._zcanvas = torch.zeros(rows, gw, dtype=dtype)
        self._zin = self._zcanvas[2 * ry: 2 * ry + h, rx: rx + w]
        self._full = torch.empty(h + 2 * ry, w + 2 * rx, dtype=dtype)
        self._adjoint = [_Band(conv, self._zcanvas, s, e - s, self._full[s:e], (ry, 0), True)
                         for s, e in zip(edges, edges[1:])]
        self._x_in = self._canvas[ry: ry + h, rx: rx + w]
        self._pad_views = _MarginViews(conv, self._canvas, self.image_shape)
        self._fold_views = _MarginViews(conv, self._full, self.image_shape)
        self._interior = self._full[ry: ry + h, rx: rx + w]

    @staticmethod
    def _run(bands: list[_Band], offset: float = 0.0) -> None:
        """Every band, the first on the caller's thread; all of them there when the caller
        is a helper itself (a helper must not wait on another)."""
        if on_helper():
            for band in bands:
                band(offset)
            return
        pool = helper_pool(len(bands) - 1)
        helpers = [pool.submit(b, offset) for b in bands[1:]]
        bands[0](offset)
        for f in helpers:
            f.result()

    def A(self, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """A x + ``offset`` (a view, valid until the next :meth:`A`)."""
        self._x_in.copy_(x)
        self._pad_views.pad()
        self._run(self._forward, offset)
        return self._out

    def output(self) -> torch.Tensor:
        """The view :meth:`A` returns (usable as scratch until the next :meth:`A`)."""
        return self._out

    def adjoint_input(self) -> torch.Tensor:
        """The view to write z into before :meth:`adjoint` (saves a copy)."""
        return self._zin

    def adjoint(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Aᵀ z (a view, valid until the next call); z = None uses what was written into
        :meth:`adjoint_input`."""
        if z is not None:
            self._zin.copy_(z)
        self._run(self._adjoint)
        self._fold_views.fold()
        return self._interior
