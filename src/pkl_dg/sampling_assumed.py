"""Which of a run's physical sampling settings rest on a default, not on the file or the user.

An image file that states no pixel size (or Z step) and a user who gives none leave the
settings' defaults (65 nm, 200 nm) in place. A Gaussian PSF in pixels does not depend on
them, but an Airy or vectorial PSF is computed for that pixel size, and every nm figure of
the result's metadata (PSF FWHM, spacing) rests on it: the CLI and batch record which
(``sampling_assumed``) and warn where the PSF's width depends on it.
"""

from __future__ import annotations

import warnings
from typing import Any

from pkl_dg.physics.psf_cleaning import PSFWarning
from pkl_dg.settings import RestoreSettings

#: the sampling settings a file can state
SAMPLING = ("pixel_size_nm", "z_step_nm")


def assumed_sampling(name: str, settings: RestoreSettings, given: set[str],
                     from_file: dict[str, Any], option: str = "--pixel-size"
                     ) -> dict[str, float]:
    """The sampling settings (nm) that neither the files stated nor the user gave.

    Parameters
    ----------
    name
        The image's name, for the warning.
    settings
        The run's settings after the files' values were applied.
    given
        Names of the settings the user gave.
    from_file
        The settings the image's or the PSF file's metadata filled in
        (:func:`pkl_dg.inputs.physical_overrides`).
    option
        How the user gives a pixel size (CLI option), for the warning.

    Returns
    -------
    dict
        ``{"pixel_size_nm": 65.0, ...}``: the defaults the run used; empty when none.

    Warns
    -----
    PSFWarning
        The pixel size is assumed and the PSF model (Airy, vectorial) is computed in nm,
        so its width in pixels is wrong unless the default is the camera's pixel.
    """
    assumed = {n: float(getattr(settings, n)) for n in SAMPLING
               if n not in given and n not in from_file and getattr(settings, n) > 0}
    if "pixel_size_nm" in assumed and settings.psf_kind in ("airy", "vectorial"):
        warnings.warn(f"{name} states no pixel size and none was given: the "
                      f"{settings.psf_kind} PSF is computed for {settings.pixel_size_nm:g} nm "
                      "pixels (the default), so its width in pixels is wrong unless that is "
                      f"the camera's pixel in the sample: give {option}", PSFWarning,
                      stacklevel=2)
    return assumed
