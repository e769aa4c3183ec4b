"""Linear (not circular) PSF convolution ``A`` and its exact adjoint ``Aᵀ``, in 2D or 3D.

``A = C·K·P``: P mirrors the image by the PSF half-size at every edge (torch's 'reflect',
edge pixel not repeated), K convolves, C crops back. The adjoint ``Pᵀ·Kᵀ·Cᵀ`` folds the
mirrored margins back onto their pixels (P, Pᵀ: slice copies / additions), so ⟨A x, z⟩ =
⟨x, Aᵀ z⟩ to rounding; P is 0/1 and the PSF sums to 1, so A keeps a constant image.

Two backends give the same operator: ``"fft"`` (rfft2 on an even :func:`smooth_size` with
no wrap-around, OTF cached) and ``"kornia"`` (``kornia.filters.filter2d``, small PSFs).
:class:`~pkl_dg.physics.workspace.ConvWorkspace` applies the FFT operator to one shape many
times, buffers allocated once; :mod:`pkl_dg.physics.filtering` does the FFT filtering.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Hashable

import numpy as np
import torch

from pkl_dg.physics.filtering import BLOCK_FFT, fft_filter, use_blocks, valid_filter

if TYPE_CHECKING:
    from pkl_dg.physics.workspace import ConvWorkspace


def smooth_size(n: int) -> int:
    """Smallest integer ≥ n of the form 2ᵃ·3ᵇ·5ᶜ·7ᵈ·11ᵉ·13ᶠ with e + f ≤ 1: the sizes the
    FFTW manual names as those it handles best (section "Complex DFTs"); MKL, torch's CPU FFT,
    has fast kernels for the same radices. Measured (rfft2 + irfft2, 2 threads): 520²
    (2³·5·13) 0.81× the time of 540² (the 7-smooth size for a 512² image and a 17-px PSF),
    1040² 0.84× 1050², 2080² 0.84× 2100²."""
    if n < 1:
        raise ValueError(f"size must be positive, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k in (1, 11, 13):
            return m
        m += 1


class LRUCache:
    """A small least-recently-used cache with hit/miss counters tests can read."""

    def __init__(self, maxsize: int = 8) -> None:
        if maxsize < 1:
            raise ValueError("cache size must be at least 1")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, factory: Callable[[], object]) -> object:
        if key in self._data:
            self.hits += 1
            self._data.move_to_end(key)
            return self._data[key]
        self.misses += 1
        value = factory()
        self._data[key] = value
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0


class PSFConvolution:
    """The blur operator of one PSF (2D or 3D), usable on images of any size ≥ the PSF.

    Parameters
    ----------
    psf
        2D or 3D kernel with odd sides (see :func:`pkl_dg.physics.psf.prepare_psf`); it is
        used as given (normalise it to sum 1 for a photon-conserving blur). A d-dimensional
        PSF acts on the last d axes of its input; leading axes are a batch.
    backend
        ``"fft"`` (default) or ``"kornia"`` (``filter2d`` / ``filter3d``).
    cache_size
        Number of OTFs (one per padded shape, dtype, device) kept; least recently used go.
    """

    def __init__(self, psf: np.ndarray | torch.Tensor, backend: str = "fft",
                 cache_size: int = 8) -> None:
        k = torch.as_tensor(np.asarray(psf) if not torch.is_tensor(psf) else psf)
        k = k.detach().to(torch.float64).cpu()
        if k.ndim not in (2, 3):
            raise ValueError(f"PSF must be 2D or 3D, got shape {tuple(k.shape)}")
        if any(n % 2 == 0 for n in k.shape):
            raise ValueError(f"PSF sides must be odd (centre pixel defined), got {tuple(k.shape)}")
        if not torch.isfinite(k).all():
            raise ValueError("PSF contains NaN or infinite values")
        if backend not in ("fft", "kornia"):
            raise ValueError(f"backend must be 'fft' or 'kornia', got {backend!r}")
        self.psf = k
        self.ndim = k.ndim
        self.backend = backend
        self.radius = tuple(n // 2 for n in k.shape)
        self.cache = LRUCache(cache_size)  # OTFs: hit/miss counters are public
        self._aux = LRUCache(cache_size)   # reflect indices, Aᵀ1, kernels per device

    def _dims(self) -> tuple[int, ...]:
        return tuple(range(-self.ndim, 0))

    # ---- geometry -----------------------------------------------------------------
    def padded_shape(self, *shape: int) -> tuple[int, ...]:
        """FFT size for an image of ``shape``: smooth, even, and ≥ the reflect-padded size (no
        wrap). Even: a real FFT of odd length (e.g. 567 = 3⁴·7) took twice as long as the
        next even smooth size (560) on the benchmark machine."""
        return tuple(_even_smooth_size(n + 2 * r) for n, r in zip(shape, self.radius))

    def otf(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """rfftn of the PSF placed with its centre at the origin of a ``shape`` grid (cached)."""
        key = (tuple(shape), dtype, str(device))

        def make() -> torch.Tensor:
            # the FFT in the requested precision (float32: half the setup time of float64,
            # errors ~1e-7 of the OTF's magnitude, like every float32 FFT that uses it)
            real = torch.float64 if dtype == torch.float64 else torch.float32
            grid = torch.zeros(shape, dtype=real)
            wrapped = torch.meshgrid(*[(torch.arange(k) - r) % n for k, r, n in
                                       zip(self.psf.shape, self.radius, shape)], indexing="ij")
            grid[wrapped] = self.psf.to(real)  # PSF centre at the origin, wrapped around
            return torch.fft.rfftn(grid).to(device=device, dtype=_complex_of(dtype))

        return self.cache.get(key, make)

    def precompute(self, image_shapes, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> None:
        """Fill the OTF cache for common image sizes ahead of time."""
        for shape in image_shapes:
            self.otf(self.padded_shape(*shape), dtype, torch.device(device))

    # ---- padding and its adjoint ------------------------------------------------
    def _check_fits(self, shape: tuple[int, ...]) -> None:
        if any(p > n for p, n in zip(self.psf.shape, shape)):
            psf_s = "×".join(map(str, self.psf.shape))
            img_s = "×".join(map(str, shape))
            raise ValueError(f"PSF ({psf_s}) is larger than the image ({img_s}): "
                             "crop the PSF or pick a larger image")

    def _margin_slices(self, shape: tuple[int, ...], axis: int):
        """Index tuples (margin, mirrored interior) of the two reflect margins along ``axis``.

        Axes before ``axis`` span their whole padded extent, axes after it their interior:
        padding runs over the axes first to last and folding last to first, so that
        :meth:`_fold_into` is exactly the transpose of :meth:`_pad_into`.
        """
        n, r = shape[axis], self.radius[axis]
        other = [slice(0, m + 2 * q) if j < axis else slice(q, q + m)
                 for j, (m, q) in enumerate(zip(shape, self.radius))]

        def at(a: int, b: int) -> tuple:
            idx = list(other)
            idx[axis] = slice(a, b)
            return (Ellipsis,) + tuple(idx)

        # padded position −m (m = 1…r) mirrors m; position n−1+m mirrors n−1−m (canvas
        # coordinates are shifted by r)
        return ((at(0, r), at(r + 1, 2 * r + 1)), (at(r + n, 2 * r + n), at(n - 1, n - 1 + r)))

    def _pad_into(self, canvas: torch.Tensor, x: torch.Tensor) -> None:
        """Write ``x`` reflect-padded by the PSF radius into ``canvas[..., :n+2r]`` (slice copies).

        Cost: one copy of ``x`` plus the margins (O(n·r)); ``canvas`` beyond the padded
        region is not touched.
        """
        shape = tuple(x.shape[-self.ndim:])
        canvas[self._centre(shape)] = x
        for axis in range(self.ndim):
            if self.radius[axis] == 0:
                continue
            for target, source in self._margin_slices(shape, axis):
                canvas[target] = canvas[source].flip(axis - self.ndim)

    def _fold_into(self, full: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Adjoint of :meth:`_pad_into`, in place: add every margin pixel onto the pixel it
        mirrors; return the interior (a view of ``full``)."""
        for axis in reversed(range(self.ndim)):
            if self.radius[axis] == 0:
                continue
            for margin, target in self._margin_slices(shape, axis):
                full[target] += full[margin].flip(axis - self.ndim)
        return full[self._centre(shape)]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[-self.ndim:])
        self._check_fits(shape)
        lead = tuple(x.shape[: x.ndim - self.ndim])
        out = torch.empty(*lead, *(n + 2 * r for n, r in zip(shape, self.radius)),
                          dtype=x.dtype, device=x.device)
        self._pad_into(out, x)
        return out

    def _fold(self, z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Adjoint of :meth:`_pad`: add every padded pixel back onto its source pixel."""
        return self._fold_into(z.clone(), shape)

    def _centre(self, shape: tuple[int, ...], offset: int = 1) -> tuple[slice, ...]:
        return (Ellipsis,) + tuple(slice(offset * r, offset * r + n)
                                   for r, n in zip(self.radius, shape))

    def otf_conj(self, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        """conj(:meth:`otf`) as its own tensor (cached: a lazy conj view would be resolved,
        i.e. copied, by every multiplication)."""
        otf = self.otf(shape, dtype, device)
        return self._aux.get(("otf_conj", tuple(shape), dtype, str(device)),
                             lambda: otf.conj().resolve_conj())

    def _tile_otf(self, like: torch.Tensor, conj: bool) -> torch.Tensor:
        """The OTF (or its conjugate) on one tile's grid (:mod:`pkl_dg.physics.blocked`)."""
        grid = (BLOCK_FFT,) * 2
        return (self.otf_conj if conj else self.otf)(grid, like.dtype, like.device)

    def workspace(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", *, banded: bool = False) -> ConvWorkspace:
        """Preallocated buffers to apply A and Aᵀ many times to images of ``shape``
        (:class:`pkl_dg.physics.workspace.ConvWorkspace`; with ``banded``, an (H, W) CPU
        image's, in two bands on two threads: :class:`pkl_dg.physics.bands.BandedWorkspace`,
        the same interface). Callers go through here, so that a wrapper of the operator
        (the widget's cancel check) sees every convolution."""
        from pkl_dg.physics.workspace import ConvWorkspace  # it builds on this module

        if banded:
            from pkl_dg.physics.bands import BandedWorkspace

            return BandedWorkspace(self, tuple(shape), dtype)
        return ConvWorkspace(self, tuple(shape), dtype, torch.device(device))

    # ---- the operator -------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` (..., [Z,] Y, X) with the PSF; output has the same shape.

        FFT backend: a view of a larger buffer (call ``.contiguous()`` to own it).
        """
        shape = tuple(x.shape[-self.ndim:])
        self._check_fits(shape)
        if self.backend == "fft" and use_blocks(self.ndim, self.radius, shape, x):
            return valid_filter(self._pad(x), self._tile_otf(x, conj=False), self.radius, shape)
        if self.backend == "fft":
            fshape = self.padded_shape(*shape)
            canvas = x.new_zeros(*x.shape[: x.ndim - self.ndim], *fshape)
            self._pad_into(canvas, x)
            full = fft_filter(canvas, self.otf(fshape, x.dtype, x.device), fshape,
                              self._dims())
            return full[self._centre(shape)]
        return self._kornia_valid(self._pad(x), self._kernel(x, flip=False))

    def A_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """The exact adjoint of :meth:`A` (FFT backend: a view of a larger buffer)."""
        shape = tuple(z.shape[-self.ndim:])
        self._check_fits(shape)
        padded = tuple(n + 2 * r for n, r in zip(shape, self.radius))
        lead = tuple(z.shape[: z.ndim - self.ndim])
        if self.backend == "fft" and use_blocks(self.ndim, self.radius, shape, z):
            # Cᵀz sits r inside the padded grid; r more zeros give each output its support
            u = z.new_zeros(*lead, *(n + 4 * r for n, r in zip(shape, self.radius)))
            u[self._centre(shape, offset=2)] = z
            full = valid_filter(u, self._tile_otf(z, conj=True), self.radius, padded)
            return self._fold_into(full, shape)
        if self.backend == "fft":
            fshape = self.padded_shape(*shape)
            canvas = torch.zeros(*lead, *fshape, dtype=z.dtype, device=z.device)
            canvas[self._centre(shape)] = z
            full = fft_filter(canvas, self.otf_conj(fshape, z.dtype, z.device), fshape,
                              self._dims())
            return self._fold_into(full, shape)
        canvas = torch.zeros(*lead, *(n + 2 * r for n, r in zip(padded, self.radius)),
                             dtype=z.dtype, device=z.device)
        canvas[self._centre(shape, offset=2)] = z
        return self._fold_into(self._kornia_valid(canvas, self._kernel(z, flip=True)), shape)

    def adjoint_ones(self, *shape: int, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
        """Aᵀ1 for an image of ``shape`` (cached): the Richardson–Lucy normaliser.

        Aᵀ1 at pixel j is Σᵢ A_ij, the weight the blur gives j over all outputs; farther than
        the PSF radius r from every edge it is the constant ΣPSF (no reflection, no crop
        reaches it). So it is computed exactly on a small image of 4r + 3 per axis and
        spread: the first and last 2r + 1 pixels of each axis from the small image's, the
        rest from its centre (two FFTs of the small image instead of the full one).
        """
        device = torch.device(device)
        small = tuple(4 * r + 3 for r in self.radius)

        def make() -> torch.Tensor:
            if not all(n > m for n, m in zip(shape, small)):
                return self.A_adjoint(torch.ones(shape, dtype=dtype, device=device)).contiguous()
            proxy = self.A_adjoint(torch.ones(small, dtype=dtype, device=device))
            index = [torch.cat([torch.arange(2 * r + 1),
                                torch.full((n - 2 * (2 * r + 1),), 2 * r + 1),
                                torch.arange(m - (2 * r + 1), m)]).to(device)
                     for n, m, r in zip(shape, small, self.radius)]
            return proxy[torch.meshgrid(*index, indexing="ij")]

        return self._aux.get(("ones", shape, dtype, str(device)), make)

    # ---- kornia backend ------------------------------------------------------------
    def _kernel(self, like: torch.Tensor, flip: bool) -> torch.Tensor:
        key = ("kernel", flip, like.dtype, str(like.device))
        return self._aux.get(key, lambda: (self.psf.flip(self._dims()) if flip else self.psf)
                             .to(dtype=like.dtype, device=like.device))

    def _kornia_valid(self, xp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Convolution of a padded image keeping only fully supported outputs."""
        import kornia

        d = self.ndim
        lead = xp.shape[:-d]
        flat = xp.reshape(-1, 1, *xp.shape[-d:])
        # filter2d/3d correlate; flipping the kernel makes it a true convolution
        k = kernel.flip(self._dims())[None]
        if d == 2:
            out = kornia.filters.filter2d(flat, k, border_type="constant", padding="valid")
        else:  # filter3d only pads to 'same' size: crop the fully supported part
            out = kornia.filters.filter3d(flat, k, border_type="constant")
            out = out[(Ellipsis,) + tuple(slice(r, n - r) for r, n in
                                          zip(self.radius, out.shape[-d:]))]
        return out.reshape(*lead, *out.shape[-d:])


def _even_smooth_size(n: int) -> int:
    """Smallest even :func:`smooth_size` ≥ n."""
    m = smooth_size(n)
    while m % 2:
        m = smooth_size(m + 1)
    return m


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.float64:
        return torch.complex128
    if dtype == torch.float32:
        return torch.complex64
    raise ValueError(f"physics runs in float32 or float64, got {dtype}")
