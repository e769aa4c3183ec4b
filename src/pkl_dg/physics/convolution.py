"""Linear (not circular) PSF convolution ``A`` and its exact adjoint ``Aᵀ``, in 2D or 3D.

``A = C·K·P``: P mirrors the image by the PSF half-size at every edge (torch's 'reflect'
convention, edge pixel not repeated), K convolves, C crops back to the image. The
adjoint is ``Pᵀ·Kᵀ·Cᵀ`` with Pᵀ folding the mirrored margins back onto the pixels they
came from (a scatter-add), so ⟨A x, z⟩ = ⟨x, Aᵀ z⟩ to rounding error. Because P is a
0/1 matrix and the PSF is non-negative and sums to 1, A maps a constant image to itself.

Two backends give the same operator: ``"fft"`` (rfft2 on a 2·3·5·7-smooth size that is
large enough for no wrap-around, OTF cached) and ``"kornia"`` (``kornia.filters.filter2d``
for K and Kᵀ; practical for small PSFs).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np
import torch


def smooth_size(n: int) -> int:
    """Smallest integer ≥ n whose only prime factors are 2, 3, 5 and 7."""
    if n < 1:
        raise ValueError(f"size must be positive, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _reflect_index(n: int, r: int) -> torch.Tensor:
    """Source index of each position of a length-n axis reflect-padded by r."""
    if r >= n:
        raise ValueError(f"reflect padding {r} needs an axis longer than {r} pixels (got {n})")
    j = torch.arange(-r, n + r)
    j = torch.where(j < 0, -j, j)
    j = torch.where(j >= n, 2 * (n - 1) - j, j)
    return j


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
        """FFT size for an image of ``shape``: smooth and ≥ the reflect-padded size (no wrap)."""
        return tuple(smooth_size(n + 2 * r) for n, r in zip(shape, self.radius))

    def _indices(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        if any(p > n for p, n in zip(self.psf.shape, shape)):
            psf_s = "×".join(map(str, self.psf.shape))
            img_s = "×".join(map(str, shape))
            raise ValueError(f"PSF ({psf_s}) is larger than the image ({img_s}): "
                             "crop the PSF or pick a larger image")
        return self._aux.get(("idx", shape, str(device)), lambda: tuple(
            _reflect_index(n, r).to(device) for n, r in zip(shape, self.radius)))

    def otf(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """rfftn of the PSF placed with its centre at the origin of a ``shape`` grid (cached)."""
        key = (tuple(shape), dtype, str(device))

        def make() -> torch.Tensor:
            grid = torch.zeros(shape, dtype=torch.float64)
            grid[tuple(slice(0, n) for n in self.psf.shape)] = self.psf
            grid = torch.roll(grid, shifts=tuple(-r for r in self.radius),
                              dims=tuple(range(self.ndim)))
            return torch.fft.rfftn(grid).to(device=device, dtype=_complex_of(dtype))

        return self.cache.get(key, make)

    def precompute(self, image_shapes, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> None:
        """Fill the OTF cache for common image sizes ahead of time."""
        for shape in image_shapes:
            self.otf(self.padded_shape(*shape), dtype, torch.device(device))

    # ---- padding and its adjoint ------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        for dim, idx in zip(self._dims(), self._indices(tuple(x.shape[-self.ndim:]), x.device)):
            x = x.index_select(dim, idx)
        return x

    def _fold(self, z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Adjoint of :meth:`_pad`: add every padded pixel back onto its source pixel."""
        for dim, idx, n in zip(self._dims(), self._indices(shape, z.device), shape):
            out_shape = list(z.shape)
            out_shape[dim] = n
            out = torch.zeros(out_shape, dtype=z.dtype, device=z.device)
            out.index_add_(dim, idx, z)
            z = out
        return z

    def _centre(self, shape: tuple[int, ...], offset: int = 1) -> tuple[slice, ...]:
        return (Ellipsis,) + tuple(slice(offset * r, offset * r + n)
                                   for r, n in zip(self.radius, shape))

    # ---- the operator -------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` (..., [Z,] Y, X) with the PSF; output has the same shape."""
        shape = tuple(x.shape[-self.ndim:])
        xp = self._pad(x)
        if self.backend == "fft":
            fshape = self.padded_shape(*shape)
            spec = torch.fft.rfftn(xp, s=fshape, dim=self._dims())
            full = torch.fft.irfftn(spec * self.otf(fshape, x.dtype, x.device), s=fshape,
                                    dim=self._dims())
            return full[self._centre(shape)]
        return self._kornia_valid(xp, self._kernel(x, flip=False))

    def A_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """The exact adjoint of :meth:`A`."""
        shape = tuple(z.shape[-self.ndim:])
        padded = tuple(n + 2 * r for n, r in zip(shape, self.radius))
        lead = tuple(z.shape[: z.ndim - self.ndim])
        if self.backend == "fft":
            fshape = self.padded_shape(*shape)
            canvas = torch.zeros(*lead, *fshape, dtype=z.dtype, device=z.device)
            canvas[self._centre(shape)] = z
            spec = torch.fft.rfftn(canvas, dim=self._dims())
            spec = spec * self.otf(fshape, z.dtype, z.device).conj()
            full = torch.fft.irfftn(spec, s=fshape, dim=self._dims())
            full = full[(Ellipsis,) + tuple(slice(0, n) for n in padded)]
        else:
            canvas = torch.zeros(*lead, *(n + 2 * r for n, r in zip(padded, self.radius)),
                                 dtype=z.dtype, device=z.device)
            canvas[self._centre(shape, offset=2)] = z
            full = self._kornia_valid(canvas, self._kernel(z, flip=True))
        return self._fold(full, shape)

    def adjoint_ones(self, *shape: int, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
        """Aᵀ1 for an image of ``shape`` (cached): the Richardson–Lucy normaliser."""
        device = torch.device(device)
        return self._aux.get(("ones", shape, dtype, str(device)), lambda: self.A_adjoint(
            torch.ones(shape, dtype=dtype, device=device)))

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


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.float64:
        return torch.complex128
    if dtype == torch.float32:
        return torch.complex64
    raise ValueError(f"physics runs in float32 or float64, got {dtype}")
