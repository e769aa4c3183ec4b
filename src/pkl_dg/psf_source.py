"""The PSF of a run, built once from its source and passed down.

A run's PSF comes from the settings' model (Gaussian, Airy, the vectorial PSF of the
optics, or none: a single pixel, denoising only), from a file, or from an array (a napari
PSF layer, a bead average, a caller's array). :func:`psf_from_settings` is the one place
that reads the settings' PSF fields: it builds a :class:`PSF`, the kernel on the image's
grid with a JSON description of what was done to it (the ``psf`` entry of a result's
metadata). Callers build it once per run and hand the same object to
:func:`pkl_dg.restoration.restore_iter`, :func:`pkl_dg.compare.compare_iter`,
:func:`pkl_dg.compare.pearson_residual` and their operator caches; ``physics`` below
takes the kernel and numbers.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pkl_dg.physics.psf import (airy_psf, check_psf_fits, crop_to_fit, gaussian_psf,
                                gaussian_psf_3d, kernel_description, load_psf,
                                resample_to_grid)
from pkl_dg.physics.psf_cleaning import PSFWarning, _vec, clean_psf
from pkl_dg.settings import RestoreSettings

__all__ = ["PSF", "psf_from_settings", "run_psf"]

#: share of a computed PSF's light whose loss to a crop is warned of (measured: always)
CROP_NOTICE = 0.01
#: ``info["source"]`` of the PSF model "none": a single-pixel kernel, no blur
NO_BLUR = "none (no blur: denoising only)"
#: measured-PSF settings that are recorded as ``not_applied`` when they had no effect
_MEASURED_FIELDS = ("psf_pixel_size_nm", "psf_z_step_nm")


@dataclass(frozen=True, eq=False)
class PSF:
    """The PSF of a run: its kernel and what was done to get it.

    Attributes
    ----------
    kernel : ndarray, float32, (Y, X) or (Z, Y, X)
        On the image's grid: odd sides, peak at the centre pixel, non-negative, sum 1.
        Shared, not copied: do not modify it.
    info : dict
        JSON-able description, written to a result's metadata as ``psf``: ``source``
        ("gaussian", "airy", "vectorial", :data:`NO_BLUR`, "file PATH" or "array"),
        ``kernel_shape``, ``spacing_nm`` (the image's grid per axis; None where unknown),
        ``fwhm_px`` / ``fwhm_nm`` (None where the kernel does not fall to half maximum,
        e.g. a single pixel); for measured PSFs ``cleaning`` (centroid offset, energy
        kept, baseline, noise) and ``resampled`` (from/to shapes and spacings) when it
        was; for the vectorial PSF ``optics``; ``not_applied``, the PSF settings that had
        no effect.
    """

    kernel: np.ndarray
    info: dict[str, Any]

    def __post_init__(self) -> None:
        k = self.kernel
        if not (isinstance(k, np.ndarray) and k.dtype == np.float32 and k.ndim in (2, 3)):
            raise TypeError("a PSF kernel is a 2D or 3D float32 numpy array, got "
                            f"{type(k).__name__} {getattr(k, 'dtype', '')} "
                            f"{getattr(k, 'shape', '')}")
        if any(n % 2 == 0 for n in k.shape) or list(k.shape) != self.info.get("kernel_shape"):
            raise ValueError(f"a PSF kernel has odd sides and its info's kernel_shape, got "
                             f"{k.shape} and {self.info.get('kernel_shape')}")

    @property
    def source(self) -> str:
        """Where the kernel came from (``info["source"]``)."""
        return self.info["source"]

    @property
    def spacing_nm(self) -> tuple[float | None, ...]:
        """The grid's spacing along each axis of the kernel, nm (None where unknown)."""
        return tuple(self.info["spacing_nm"])

    def metadata(self) -> dict[str, Any]:
        """A copy of :attr:`info` for a result's metadata (a result may change its own)."""
        return copy.deepcopy(self.info)

    def check_image(self, image_shape: tuple[int, ...], mode: str) -> None:
        """Raise ``ValueError`` unless this PSF can restore an image of ``image_shape``
        in ``mode`` ("2d": a 2D kernel, "3d": a 3D one; no larger than the image)."""
        need = 3 if mode == "3d" else 2
        if self.kernel.ndim != need:
            raise ValueError(f"a {self.kernel.ndim}D PSF cannot restore in {mode} mode: "
                             "build the PSF with the run's settings")
        check_psf_fits(self.kernel.shape, image_shape)


def describe_psf(info: dict[str, Any]) -> str:
    """A PSF's :attr:`PSF.info` (a result's ``metadata["psf"]``) in a few words for a
    figure: where it came from and its FWHM per axis in px, e.g. "gaussian PSF, FWHM
    4.80 × 4.80 px"; "no blur (1-pixel PSF)"."""
    if info.get("source") == NO_BLUR:
        return "no blur (1-pixel PSF)"
    fwhm = info.get("fwhm_px") or []
    size = (f", FWHM {' × '.join(f'{v:.2f}' for v in fwhm)} px"
            if fwhm and all(v is not None for v in fwhm) else "")
    return f"{info.get('source', 'unknown')} PSF{size}"


def run_psf(psf: PSF | np.ndarray | None, settings: RestoreSettings,
            image_shape: tuple[int, ...]) -> PSF:
    """The PSF of a run on an image of ``image_shape``.

    A :class:`PSF` is checked against the image (:meth:`PSF.check_image`) and returned as
    it is; an array (or None: the settings' model) is built into one by
    :func:`psf_from_settings`.
    """
    if isinstance(psf, PSF):
        psf.check_image(image_shape, settings.mode)
        return psf
    return psf_from_settings(settings, image_shape, psf)


def psf_from_settings(settings: RestoreSettings, image_shape: tuple[int, ...] | None = None,
                      array: np.ndarray | None = None) -> PSF:
    """The PSF a run with ``settings`` uses.

    Parameters
    ----------
    settings
        The run's settings: their PSF model and its parameters, the image's pixel size and
        (3D) Z step, a measured PSF's own spacing, the mode (3D: a (Z, Y, X) PSF).
    image_shape
        The image (last two or three axes YX / ZYX); the PSF is checked to fit inside it,
        and the vectorial PSF is capped to it. None: no check.
    array
        A measured PSF (napari layer, bead average, caller's array); it takes precedence
        over the settings' model.

    Returns
    -------
    PSF
        A measured PSF (array or file) is cleaned
        (:func:`~pkl_dg.physics.psf_cleaning.clean_psf`) and resampled from
        ``psf_pixel_size_nm`` to ``pixel_size_nm`` laterally and (3D) from
        ``psf_z_step_nm`` to ``z_step_nm`` axially. A measured PSF larger than the image,
        or a computed one deeper than the stack, is cropped to fit
        (:func:`~pkl_dg.physics.psf.crop_to_fit`; ``info["cropped_to_image"]``).

    Raises
    ------
    ValueError
        Missing file or array, a 2D PSF in 3D mode, axial resampling without the image's Z
        step, a computed PSF wider than the image, a PSF that would lose more than a
        quarter of its light to the crop.

    Warns
    -----
    PSFWarning
        When a measured PSF was cropped to fit the image, or a computed one lost at least
        :data:`CROP_NOTICE` of its light to the crop (always recorded in the info).
    """
    s = settings
    three_d = s.mode == "3d"
    if array is not None or s.psf_kind == "file":
        kernel, info = _measured(s, three_d, array)
        applied = ("psf_pixel_size_nm",) + (("psf_z_step_nm",) if three_d else ())
    else:
        kernel, info = _computed(s, three_d, image_shape)
        applied = ()
    # a measured PSF is cropped to fit; a computed one only along Z (a stack of 6 planes,
    # a Gaussian of σ Z 1 plane: 9): one wider than the image is refused by check_psf_fits
    if image_shape is not None and (applied or all(
            p <= n for p, n in zip(kernel.shape[-2:], image_shape[-2:]))):
        # a measured PSF's kernel is its array centred on the peak (odd sides): a message
        # about its shape names the array as given too (64³ became 65³ without a word)
        measured = info.get("cleaning", {}).get("measured_shape")
        given = ("" if not measured or tuple(measured) == kernel.shape else
                 f"; {'×'.join(map(str, measured))} as given, centred on its peak")
        try:
            kernel, cropped = crop_to_fit(kernel, image_shape)
        except ValueError as exc:
            raise ValueError(f"{exc}{' (' + given[2:] + ')' if given else ''}") from None
        if cropped is not None:
            info["cropped_to_image"] = cropped
        # a computed PSF cut along Z to the stack's depth is the model's own business
        # unless it loses light that matters (a 13-plane Gaussian in 9 planes lost 0.0 %
        # and was warned of, with nothing for the user to do)
        if cropped is not None and (applied or cropped["light_removed"] >= CROP_NOTICE):
            warnings.warn(f"The PSF ({'×'.join(map(str, cropped['from']))}{given}) is larger "
                          "than the image: it was cropped around its centre to "
                          f"{'×'.join(map(str, cropped['to']))}, which removed "
                          f"{100 * cropped['light_removed']:.1f} % of its light "
                          "(the rest renormalised) and centred again on its centroid "
                          f"(shifted by {_vec(cropped['recentred_px'])} px), so "
                          "restored objects stay in place.", PSFWarning, stacklevel=2)
    axial = [s.z_step_nm or None] if three_d else []
    info.update(kernel_description(kernel, axial + [s.pixel_size_nm] * 2))
    if info["source"] != NO_BLUR:
        _check_width(info, s)
    unused = [n for n in _MEASURED_FIELDS if getattr(s, n) > 0 and n not in applied]
    if unused:
        info["not_applied"] = unused
    if image_shape is not None:
        check_psf_fits(kernel.shape, image_shape)
    return PSF(kernel, info)


#: lateral PSF FWHM (px, measured on the kernel: a one-pixel peak measures 1) outside which
#: the sampling is implausible for deconvolution (Nyquist sampling puts it near 2–4 px):
#: below, undersampled (1.2 px: a Gaussian of σ 0.45 px, or an Airy PSF of NA 1.4 at
#: 520 nm on 180 nm pixels, twice the Nyquist pixel) or a wrong pixel size; above, a pixel
#: size too small (e.g. µm typed as nm) or a PSF far out of focus
PLAUSIBLE_FWHM_PX = (1.2, 20.0)


def _check_width(info: dict[str, Any], s: RestoreSettings) -> None:
    """Warn when the PSF's lateral FWHM (``info["fwhm_px"]``) is outside
    :data:`PLAUSIBLE_FWHM_PX`, naming the likely cause."""
    lateral = [f for f in info["fwhm_px"][-2:] if f is not None]
    if not lateral:
        return
    width = max(lateral)
    lo, hi = PLAUSIBLE_FWHM_PX
    where = ("" if info["source"] == "gaussian" else
             f" at a pixel size of {s.pixel_size_nm:g} nm")
    if width < lo:
        warnings.warn(
            f"The PSF is about a pixel wide or less (FWHM {width:.2f} px{where}): the image "
            "is undersampled for deconvolution, which cannot sharpen below a pixel, so this "
            "run mostly denoises. If the image is not "
            "undersampled, check the PSF and the pixel size (in the sample: the camera "
            "pixel ÷ the magnification, e.g. 6.5 µm / 100× = 65 nm).", PSFWarning,
            stacklevel=3)
        info["width_check"] = f"about a pixel or less (FWHM {width:.2f} px): undersampled"
    elif width > hi:
        warnings.warn(
            f"The PSF is {width:.1f} px wide (FWHM{where}), far wider than a widefield PSF "
            "sampled near Nyquist (2–4 px): check the PSF and the pixel size (in nm in the "
            "sample: µm typed as nm gives a PSF 1000× too wide). A PSF this wide makes the "
            "run slow and its result depends on the PSF's far tails.", PSFWarning,
            stacklevel=3)
        info["width_check"] = f"wider than {hi:g} px (FWHM {width:.1f} px)"


def _measured(s: RestoreSettings, three_d: bool, array: np.ndarray | None
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """A measured PSF (the array, else the settings' file), cleaned and resampled to the
    image's grid, and its description so far."""
    info: dict[str, Any] = {}
    if array is None:
        if not s.psf_path:
            raise ValueError("PSF model is 'file' but no PSF file was given")
        array = load_psf(s.psf_path)
        info["source"] = f"file {s.psf_path}"
    else:
        info["source"] = "array"
    if three_d and np.ndim(array) != 3:
        raise ValueError(f"3D deconvolution needs a 3D PSF (Z, Y, X); got shape "
                         f"{np.shape(array)}: pick a PSF stack or use 2D mode")
    kernel, diag = clean_psf(array, keep_3d=three_d)
    info["cleaning"] = diag.to_dict()
    kernel, resampled = resample_to_grid(kernel, s.pixel_size_nm, s.z_step_nm,
                                         psf_pixel_size_nm=s.psf_pixel_size_nm,
                                         psf_z_step_nm=s.psf_z_step_nm)
    if resampled is not None:
        info["resampled"] = resampled
    return kernel, info


def _computed(s: RestoreSettings, three_d: bool, image_shape: tuple[int, ...] | None
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """A PSF from the settings' model (Gaussian, Airy, vectorial, none), on the image's
    grid already, and its source.

    Model "none" is no blur: a kernel of one pixel of value 1, (1, 1) in 2D and (1, 1, 1)
    in 3D mode, float32, so the forward model is the identity and a run only denoises
    (the same kernel a supplied ``np.ones((1, 1))`` array is cleaned into).
    """
    kind = s.psf_kind
    if kind == "array":
        raise ValueError("PSF model is 'array' but no PSF array was supplied")
    if kind == "none":
        return np.ones((1,) * (3 if three_d else 2), np.float32), {"source": NO_BLUR}
    if kind == "vectorial":
        return _vectorial(s, three_d, image_shape)
    if three_d:
        if kind == "gaussian":
            if not s.psf_sigma_z > 0:  # its default 0: a 2D Gaussian has no Z extent
                raise ValueError("3D deconvolution with a Gaussian PSF needs its extent "
                                 "along Z: set 'Gaussian σ Z' (planes; --psf-sigma-z), or "
                                 "use the widefield PSF from the optics (PSF model "
                                 "'vectorial', with NA, wavelength, pixel size and Z step) "
                                 "or a measured PSF stack")
            return gaussian_psf_3d(s.psf_sigma, s.psf_sigma_z, s.psf_sigma_y or None), \
                {"source": kind}
        raise ValueError(f"3D deconvolution needs a 3D PSF: the widefield PSF from the optics "
                         "(PSF model 'vectorial', with the Z step), a Gaussian PSF with σ Z > 0 "
                         f"or a measured PSF stack (PSF model {kind!r} is 2D only)")
    if kind == "gaussian":
        return gaussian_psf(s.psf_sigma, s.psf_sigma_y or None), {"source": kind}
    if kind == "airy":
        return airy_psf(s.na, s.wavelength_nm, s.pixel_size_nm), {"source": kind}
    raise ValueError(f"unknown PSF model {kind!r}")  # settings validation prevents it


def _vectorial(s: RestoreSettings, three_d: bool, image_shape: tuple[int, ...] | None
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """The widefield vectorial PSF of the settings' optics
    (:mod:`pkl_dg.physics.optics_psf`), and its description."""
    from pkl_dg.physics.optics_psf import auto_planes, widefield_psf

    side = min(image_shape[-2:]) if image_shape is not None else None
    planes = 1
    if three_d:
        if not s.z_step_nm > 0:
            raise ValueError("a 3D PSF from the optics needs the image's Z step: set Z step "
                             "(nm)")
        depth = image_shape[-3] if image_shape is not None and len(image_shape) >= 3 else None
        planes = auto_planes(s.na, s.wavelength_nm, s.z_step_nm, s.immersion_ri, depth)
    out = widefield_psf(s.na, s.wavelength_nm, s.pixel_size_nm, z_step_nm=s.z_step_nm,
                        planes=planes, immersion_ri=s.immersion_ri, sample_ri=s.sample_ri,
                        depth_nm=s.psf_depth_nm, max_side=side)
    info = {"source": "vectorial",
            "optics": {"model": "vectorial (Aguet 2009) with Gibson–Lanni aberrations, "
                       "psfmodels", "na": s.na, "wavelength_nm": s.wavelength_nm,
                       "immersion_ri": s.immersion_ri, "sample_ri": s.sample_ri,
                       "depth_nm": s.psf_depth_nm}}
    return (out if three_d else out[0]), info
