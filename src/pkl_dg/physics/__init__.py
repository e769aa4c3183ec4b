"""Physics: PSFs, the blur operator with its exact adjoint, and the acquisition model."""

from pkl_dg.physics.convolution import LRUCache, PSFConvolution, smooth_size
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.physics.psf import (
    airy_psf,
    build_psf,
    build_psf_info,
    check_psf_fits,
    fwhm_of,
    fwhm_to_sigma,
    gaussian_psf,
    gaussian_psf_3d,
    in_focus_plane,
    load_psf,
    prepare_psf,
    resample_psf,
)

__all__ = [
    "ForwardModel", "LRUCache", "PSFConvolution", "airy_psf", "build_psf", "build_psf_info", "check_psf_fits",
    "fwhm_of", "fwhm_to_sigma", "gaussian_psf", "gaussian_psf_3d", "in_focus_plane", "load_psf", "prepare_psf",
    "resample_psf", "smooth_size",
]
