"""Simulated measurements: the one simulator of the benchmarks and of the prior's validation.

An object x ≥ 0 (photons, or scaled so that its maximum is ``peak`` photons) is blurred by
the PSF (:class:`~pkl_dg.physics.PSFConvolution`: linear, mirror-padded FFT convolution), a
constant background B (photons/pixel) is added and Poisson noise drawn,
y ~ Poisson(A x + B): the acquisition model of :class:`~pkl_dg.physics.ForwardModel`, whose
mean it uses. The noise comes from a torch generator seeded with ``seed``, so a measurement
is a function of (object, PSF, peak, background, seed) alone.

Also here: the speed benchmarks' test image (:func:`test_image`), dots on smooth blobs at
:data:`TEST_PEAK_PHOTONS` photons peak.
"""

from __future__ import annotations

import numpy as np
import torch

from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf

#: the speed benchmarks' test image: Gaussian PSF σ (px), background and peak (photons)
TEST_PSF_SIGMA = 2.0
TEST_BACKGROUND = 2.0
TEST_PEAK_PHOTONS = 100.0
#: σ (px) of the test image's smooth blobs, the same at every size: a larger image is a
#: larger field of view of the same sample, so the speed of each size is measured on the
#: same local statistics (a σ growing with the side, as before, gave 2048² and 4096² a
#: fainter blob component, another estimated calibration and 2–6× the data iterations)
TEST_BLOB_SIGMA = 8.0


def simulate_measurement(obj: np.ndarray, psf: np.ndarray, *, background: float, seed: int,
                         peak: float | None = None) -> np.ndarray:
    """A noisy measurement of ``obj``: y ~ Poisson(A x + B), in photons.

    Parameters
    ----------
    obj : ndarray
        The object (2D or 3D, ≥ 0). Taken as photons when ``peak`` is None.
    psf : ndarray
        The blur kernel (normalised, as the PSF builders return it).
    background : float
        Constant background B in photons per pixel (≥ 0).
    seed : int
        Seed of the torch generator that draws the Poisson noise.
    peak : float, optional
        Scale the object so that its maximum is this many photons (before the blur).

    Returns
    -------
    ndarray
        Photon counts, float32, the shape of ``obj``.

    Raises
    ------
    ValueError
        ``peak`` is given and the object's maximum is not positive (nothing to scale), or
        the background is negative or not finite (from :class:`ForwardModel`).
    """
    x = np.asarray(obj, dtype=np.float64)
    if peak is not None:
        top = float(x.max())
        if not top > 0:
            raise ValueError(f"cannot scale an object whose maximum is {top} to {peak} photons")
        x = x * (peak / top)
    fm = ForwardModel(PSFConvolution(psf), background)
    with torch.inference_mode():
        mu = fm.mean(torch.from_numpy(x.astype(np.float32)))
    counts = torch.poisson(mu, generator=torch.Generator().manual_seed(int(seed)))
    return counts.numpy().astype(np.float32)


def test_image(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The speed benchmarks' test image of side ``n``: dots (one per 400 px) on smooth blobs
    of σ :data:`TEST_BLOB_SIGMA`, the same density and blob size at every ``n``.

    Parameters
    ----------
    n : int
        Side in pixels (square image).
    seed : int
        Seed of the object; the noise is drawn with ``seed + 1``.

    Returns
    -------
    tuple of ndarray
        (object in photons, max :data:`TEST_PEAK_PHOTONS`; its measurement through a
        Gaussian PSF of σ = :data:`TEST_PSF_SIGMA` px with background
        :data:`TEST_BACKGROUND`), both float32.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    obj = np.zeros((n, n), dtype=np.float64)
    k = max(4, n * n // 400)
    yy, xx = rng.integers(0, n, size=(2, k))
    obj[yy, xx] = rng.uniform(0.5, 1.0, k)
    obj += ndimage.gaussian_filter(rng.random((n, n)), TEST_BLOB_SIGMA) * 0.5
    obj = (obj / obj.max() * TEST_PEAK_PHOTONS).astype(np.float32)
    y = simulate_measurement(obj, gaussian_psf(TEST_PSF_SIGMA), background=TEST_BACKGROUND,
                             seed=seed + 1)
    return obj, y


#: the speed benchmarks' test stack: Gaussian PSF σ along Z (planes)
TEST_PSF_SIGMA_Z = 2.0


def test_stack(z: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The speed benchmarks' 3D test stack (Z, Y, X): :func:`test_image` objects in every
    plane, smoothed along Z, measured through a 3D Gaussian PSF (σ = :data:`TEST_PSF_SIGMA`
    px laterally, :data:`TEST_PSF_SIGMA_Z` planes along Z) with background
    :data:`TEST_BACKGROUND`.

    Returns
    -------
    tuple of ndarray
        (object in photons, max :data:`TEST_PEAK_PHOTONS`; its measurement), float32,
        shape (z, n, n).
    """
    from scipy import ndimage

    from pkl_dg.physics.psf import gaussian_psf_3d

    obj = np.stack([test_image(n, seed + 2 * k)[0] for k in range(z)]).astype(np.float64)
    obj = ndimage.gaussian_filter1d(obj, 1.0, axis=0)
    obj = (obj / obj.max() * TEST_PEAK_PHOTONS).astype(np.float32)
    y = simulate_measurement(obj, gaussian_psf_3d(TEST_PSF_SIGMA, TEST_PSF_SIGMA_Z),
                             background=TEST_BACKGROUND, seed=seed + 1)
    return obj, y
