"""Procedurally generated sample data: a widefield-like image, its ground truth and its PSF
(and the same as a Z-stack for 3D deconvolution).

Nothing is downloaded. The ground truth is a deterministic mix of curved filaments (like
microtubules), puncta (like vesicles) and two dim cell bodies, in photons per pixel. It is
blurred with a Gaussian PSF (σ = 2 px: exactly the PSF the default settings build) by
zero-padded (linear, not circular) FFT convolution, a constant background is added and Poisson noise drawn. Pixel size
is 65 nm (a 100×/1.4 objective on a 6.5 µm camera pixel).
"""

from __future__ import annotations

import numpy as np

PIXEL_SIZE_UM = 0.065
PSF_SIGMA_PX = 2.0
BACKGROUND = 10.0


def gaussian_psf(sigma: float = PSF_SIGMA_PX) -> np.ndarray:
    """The core's pixel-integrated Gaussian PSF: exactly what the default settings build."""
    from pkl_dg.physics import gaussian_psf as core_gaussian_psf

    return core_gaussian_psf(sigma)


def _blur_linear(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same'-size linear convolution by FFT with zero padding (no wrap-around)."""
    h, w = image.shape
    kh, kw = kernel.shape
    shape = (h + kh - 1, w + kw - 1)
    out = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(kernel, shape), shape)
    return out[kh // 2:kh // 2 + h, kw // 2:kw // 2 + w]


def _splat(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray, weight: float) -> None:
    """Add ``weight`` at sub-pixel points with bilinear weights (points outside are dropped)."""
    h, w = canvas.shape
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.add.at(canvas, (yy[ok], xx[ok]), weight * wgt[ok])


def make_ground_truth(shape: tuple[int, int] = (256, 256), seed: int = 0,
                      peak: float = 150.0) -> np.ndarray:
    """Deterministic fluorescence-like ground truth in photons per pixel (float32)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    truth = np.zeros(shape, np.float64)
    # two dim cell bodies (smooth ellipses)
    yy, xx = np.mgrid[0:h, 0:w]
    for cy, cx, ry, rx in ((0.35 * h, 0.3 * w, 0.22 * h, 0.17 * w),
                           (0.7 * h, 0.72 * w, 0.18 * h, 0.24 * w)):
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        truth += 0.1 * np.clip(1.0 - d, 0, None) ** 0.5
    # curved filaments: smooth random walks, sampled every 0.25 px
    lines = np.zeros(shape, np.float64)
    n_filaments = max(6, int(18 * h * w / 256**2))
    for _ in range(n_filaments):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * np.pi)
        curvature = rng.normal(0, 0.002)  # radians per 0.25 px step
        n = int(rng.uniform(0.4, 1.2) * max(h, w) / 0.25)
        theta = angle + np.cumsum(curvature + rng.normal(0, 0.012, n))
        ys = y + np.cumsum(0.25 * np.sin(theta))
        xs = x + np.cumsum(0.25 * np.cos(theta))
        _splat(lines, ys, xs, rng.uniform(0.5, 1.0) * 0.25)
    truth += _blur_linear(lines, gaussian_psf(0.6))  # ~ 1.4 px wide filaments
    # puncta
    dots = np.zeros(shape, np.float64)
    n_dots = int(60 * h * w / 256**2)
    _splat(dots, rng.uniform(0, h - 1, n_dots), rng.uniform(0, w - 1, n_dots), 1.0)
    truth += 2.0 * _blur_linear(dots, gaussian_psf(0.7))
    truth = np.clip(truth, 0, None)
    # a single filament's crest maps to about `peak`; crossings and puncta may exceed it
    return (peak * truth / np.percentile(truth, 99.5)).astype(np.float32)


def make_sample(shape: tuple[int, int] = (256, 256), seed: int = 0, peak: float = 150.0,
                background: float = BACKGROUND, sigma: float = PSF_SIGMA_PX,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(measured uint16 photon counts, ground truth float32, PSF float32)``."""
    truth = make_ground_truth(shape, seed, peak)
    psf = gaussian_psf(sigma)
    expected = np.clip(_blur_linear(truth.astype(np.float64), psf), 0, None) + background
    measured = np.random.default_rng(seed + 1).poisson(expected)
    return measured.astype(np.uint16), truth, psf


def _blur_linear_nd(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same'-size linear convolution in any dimension by FFT with zero padding."""
    shape = tuple(v + k - 1 for v, k in zip(volume.shape, kernel.shape))
    axes = tuple(range(volume.ndim))
    out = np.fft.irfftn(np.fft.rfftn(volume, shape, axes) * np.fft.rfftn(kernel, shape, axes),
                        shape, axes)
    return out[tuple(slice(k // 2, k // 2 + v) for v, k in zip(volume.shape, kernel.shape))]


def gaussian_psf_3d(sigma: float = PSF_SIGMA_PX, sigma_z: float = 1.5) -> np.ndarray:
    """The core's 3D Gaussian PSF (Z, Y, X), as 3D mode builds it from the same σ's."""
    from pkl_dg.physics import gaussian_psf_3d as core_gaussian_psf_3d

    return core_gaussian_psf_3d(sigma, sigma_z)


def make_sample_3d(shape: tuple[int, int, int] = (24, 128, 128), seed: int = 0,
                   peak: float = 400.0, background: float = BACKGROUND,
                   sigma: float = PSF_SIGMA_PX, sigma_z: float = 1.5,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Z-stack: ``(measured uint16, ground truth float32, 3D PSF float32)``.

    The lateral structures of :func:`make_ground_truth` are spread over depths: every
    filament and punctum sits at its own Z (Gaussian profile, σ 0.8 planes), the cell bodies
    span the middle third of the stack. Blur by the 3D PSF, background, Poisson noise.
    """
    nz, h, w = shape
    rng = np.random.default_rng(seed + 10)
    layers = [make_ground_truth((h, w), seed + k, peak) for k in range(3)]
    z = np.arange(nz)[:, None, None]
    truth = np.zeros(shape, np.float64)
    for k, plane in enumerate(layers):  # three sheets of structures at different depths
        z0 = (k + 1) * nz / 4 + rng.normal(0, 1)
        truth += plane[None] * np.exp(-0.5 * ((z - z0) / 0.8) ** 2)
    psf = gaussian_psf_3d(sigma, sigma_z)
    expected = np.clip(_blur_linear_nd(truth, psf), 0, None) + background
    measured = np.random.default_rng(seed + 1).poisson(expected)
    return measured.astype(np.uint16), truth.astype(np.float32), psf


def make_sample_data_3d() -> list[tuple]:
    """npe2 sample-data command: a widefield-like Z-stack, its ground truth and 3D PSF."""
    measured, truth, psf = make_sample_3d()
    common = {"scale": (0.2, PIXEL_SIZE_UM, PIXEL_SIZE_UM), "units": ("µm", "µm", "µm"),
              "axis_labels": ("z", "y", "x")}
    return [
        (truth, {"name": "stack ground truth", "colormap": "magma", "visible": False,
                 **common}, "image"),
        (psf, {"name": "stack PSF", "colormap": "inferno", "visible": False,
               "metadata": {"description": f"3D Gaussian PSF, sigma {PSF_SIGMA_PX} px "
                            "laterally, 1.5 planes axially, sum 1"}, **common}, "image"),
        (measured, {"name": "stack", "colormap": "gray",
                    "metadata": {"description": "widefield-like Z-stack: blurred by the 3D "
                                 f"PSF, background {BACKGROUND} photons, Poisson noise"},
                    **common}, "image"),
    ]


def make_sample_data() -> list[tuple]:
    """npe2 sample-data command: three layers (measured image, ground truth, PSF)."""
    measured, truth, psf = make_sample()
    scale = (PIXEL_SIZE_UM, PIXEL_SIZE_UM)
    units = ("µm", "µm")
    common = {"scale": scale, "units": units}
    return [
        (truth, {"name": "cells ground truth", "colormap": "magma", "visible": False,
                 "metadata": {"description": "noise-free, unblurred sample (photons/pixel)"},
                 **common}, "image"),
        (psf, {"name": "cells PSF", "colormap": "inferno", "visible": False,
               "metadata": {"description": f"Gaussian PSF, sigma {PSF_SIGMA_PX} px, sum 1"},
               **common}, "image"),
        (measured, {"name": "cells", "colormap": "gray",
                    "metadata": {"description": "widefield-like: blurred by the PSF, "
                                 f"background {BACKGROUND} photons, Poisson noise"},
                    **common}, "image"),
    ]
