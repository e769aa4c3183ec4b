"""Linear (not circular) PSF convolution ``A`` and its exact adjoint ``Aᵀ``.

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
    """The blur operator of one PSF, usable on images of any size ≥ the PSF.

    Parameters
    ----------
    psf
        2D kernel with odd sides (see :func:`pkl_dg.physics.psf.prepare_psf`); it is used
        as given (normalise it to sum 1 for a photon-conserving blur).
    backend
        ``"fft"`` (default) or ``"kornia"``.
    cache_size
        Number of OTFs (one per padded shape, dtype, device) kept; least recently used go.

    Tensors passed to :meth:`A` / :meth:`A_adjoint` have shape ``(..., H, W)``.
    """

    def __init__(self, psf: np.ndarray | torch.Tensor, backend: str = "fft",
                 cache_size: int = 8) -> None:
        k = torch.as_tensor(np.asarray(psf) if not torch.is_tensor(psf) else psf)
        k = k.detach().to(torch.float64).cpu()
        if k.ndim != 2:
            raise ValueError(f"PSF must be 2D, got shape {tuple(k.shape)}")
        if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(f"PSF sides must be odd (centre pixel defined), got {tuple(k.shape)}")
        if not torch.isfinite(k).all():
            raise ValueError("PSF contains NaN or infinite values")
        if backend not in ("fft", "kornia"):
            raise ValueError(f"backend must be 'fft' or 'kornia', got {backend!r}")
        self.psf = k
        self.backend = backend
        self.radius = (k.shape[0] // 2, k.shape[1] // 2)
        self.cache = LRUCache(cache_size)  # OTFs: hit/miss counters are public
        self._aux = LRUCache(cache_size)   # reflect indices, Aᵀ1, kernels per device

    # ---- geometry -----------------------------------------------------------------
    def padded_shape(self, h: int, w: int) -> tuple[int, int]:
        """FFT size for an h×w image: smooth and ≥ the reflect-padded size (no wrap)."""
        ry, rx = self.radius
        return smooth_size(h + 2 * ry), smooth_size(w + 2 * rx)

    def _indices(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ry, rx = self.radius
        if self.psf.shape[0] > h or self.psf.shape[1] > w:
            raise ValueError(f"PSF ({self.psf.shape[0]}×{self.psf.shape[1]}) is larger than "
                             f"the image ({h}×{w}): crop the PSF or pick a larger image")
        return self._aux.get(("idx", h, w, str(device)), lambda: (
            _reflect_index(h, ry).to(device), _reflect_index(w, rx).to(device)))

    def otf(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """rfft2 of the PSF placed with its centre at the origin of a ``shape`` grid (cached)."""
        key = (tuple(shape), dtype, str(device))

        def make() -> torch.Tensor:
            ry, rx = self.radius
            grid = torch.zeros(shape, dtype=torch.float64)
            grid[: self.psf.shape[0], : self.psf.shape[1]] = self.psf
            grid = torch.roll(grid, shifts=(-ry, -rx), dims=(0, 1))
            return torch.fft.rfft2(grid).to(device=device, dtype=_complex_of(dtype))

        return self.cache.get(key, make)

    def precompute(self, image_shapes, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> None:
        """Fill the OTF cache for common image sizes ahead of time."""
        for h, w in image_shapes:
            self.otf(self.padded_shape(h, w), dtype, torch.device(device))

    # ---- padding and its adjoint ------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        iy, ix = self._indices(x.shape[-2], x.shape[-1], x.device)
        return x.index_select(-2, iy).index_select(-1, ix)

    def _fold(self, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Adjoint of :meth:`_pad`: add every padded pixel back onto its source pixel."""
        iy, ix = self._indices(h, w, z.device)
        cols = torch.zeros(*z.shape[:-1], w, dtype=z.dtype, device=z.device)
        cols.index_add_(-1, ix, z)
        out = torch.zeros(*z.shape[:-2], h, w, dtype=z.dtype, device=z.device)
        out.index_add_(-2, iy, cols)
        return out

    # ---- the operator -------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` (..., H, W) with the PSF; output has the same shape."""
        h, w = x.shape[-2:]
        ry, rx = self.radius
        xp = self._pad(x)
        if self.backend == "fft":
            shape = self.padded_shape(h, w)
            spec = torch.fft.rfft2(xp, s=shape) * self.otf(shape, x.dtype, x.device)
            full = torch.fft.irfft2(spec, s=shape)
            return full[..., ry: ry + h, rx: rx + w]
        return self._kornia_valid(xp, self._kernel(x, flip=False))

    def A_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """The exact adjoint of :meth:`A`."""
        h, w = z.shape[-2:]
        ry, rx = self.radius
        hp, wp = h + 2 * ry, w + 2 * rx
        if self.backend == "fft":
            shape = self.padded_shape(h, w)
            canvas = torch.zeros(*z.shape[:-2], *shape, dtype=z.dtype, device=z.device)
            canvas[..., ry: ry + h, rx: rx + w] = z
            spec = torch.fft.rfft2(canvas) * self.otf(shape, z.dtype, z.device).conj()
            full = torch.fft.irfft2(spec, s=shape)[..., :hp, :wp]
        else:
            canvas = torch.zeros(*z.shape[:-2], hp + 2 * ry, wp + 2 * rx, dtype=z.dtype,
                                 device=z.device)
            canvas[..., 2 * ry: 2 * ry + h, 2 * rx: 2 * rx + w] = z
            full = self._kornia_valid(canvas, self._kernel(z, flip=True))
        return self._fold(full, h, w)

    def adjoint_ones(self, h: int, w: int, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
        """Aᵀ1 for an h×w image (cached): the Richardson–Lucy normaliser."""
        device = torch.device(device)
        return self._aux.get(("ones", h, w, dtype, str(device)), lambda: self.A_adjoint(
            torch.ones(h, w, dtype=dtype, device=device)))

    # ---- kornia backend ------------------------------------------------------------
    def _kernel(self, like: torch.Tensor, flip: bool) -> torch.Tensor:
        key = ("kernel", flip, like.dtype, str(like.device))
        return self._aux.get(key, lambda: (self.psf.flip(0, 1) if flip else self.psf)
                             .to(dtype=like.dtype, device=like.device))

    def _kornia_valid(self, xp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Convolution of a padded image keeping only fully supported outputs."""
        import kornia

        lead = xp.shape[:-2]
        flat = xp.reshape(-1, 1, *xp.shape[-2:])
        # filter2d correlates; flipping the kernel makes it a true convolution
        out = kornia.filters.filter2d(flat, kernel.flip(0, 1)[None], border_type="constant",
                                      padding="valid")
        return out.reshape(*lead, *out.shape[-2:])


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.float64:
        return torch.complex128
    if dtype == torch.float32:
        return torch.complex64
    raise ValueError(f"physics runs in float32 or float64, got {dtype}")
