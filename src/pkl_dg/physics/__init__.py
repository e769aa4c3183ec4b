"""Physics: PSFs, the blur operator with its exact adjoint, and the acquisition model.

Functions of arrays and numbers only; the PSF of a run, from its settings, is built by
:func:`pkl_dg.psf_source.psf_from_settings`.
"""

from pkl_dg.physics.convolution import LRUCache, PSFConvolution, smooth_size
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.physics.psf import (
    airy_psf,
    check_psf_fits,
    fwhm_of,
    fwhm_to_sigma,
    gaussian_psf,
    gaussian_psf_3d,
    in_focus_plane,
    kernel_description,
    load_psf,
    prepare_psf,
    resample_psf,
    resample_to_grid,
)

__all__ = [
    "ForwardModel", "LRUCache", "PSFConvolution", "airy_psf", "check_psf_fits", "fwhm_of",
    "fwhm_to_sigma", "gaussian_psf", "gaussian_psf_3d", "in_focus_plane", "kernel_description",
    "load_psf", "prepare_psf", "resample_psf", "resample_to_grid", "smooth_size",
]
