"""High-level API: :func:`restore` and its streaming form :func:`restore_iter`.

Both take an image in camera units, convert it to photons ((ADU − offset)·gain), build the
PSF and forward model from one :class:`~pkl_dg.settings.RestoreSettings`, and run the chosen
method: guided diffusion ('pkl', 'anscombe', 'l2'), the unguided prior ('none') or
Richardson–Lucy ('rl'). Results are float32 photon counts; the input is never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np
import torch

from pkl_dg import __version__
from pkl_dg.devices import autocast_dtype, resolve_device
from pkl_dg.diffusion.mapping import IntensityMapping, scale_from_estimate
from pkl_dg.diffusion.sampler import guided_ddim
from pkl_dg.guidance import GuidanceStep, get_likelihood
from pkl_dg.physics import ForwardModel, PSFConvolution, build_psf
from pkl_dg.richardson_lucy import richardson_lucy, richardson_lucy_iter
from pkl_dg.settings import RestoreSettings

#: RL iterations of the rough estimate that sets the intensity scale (DESIGN §7)
SCALE_ESTIMATE_ITERATIONS = 20
MIN_SIDE = 8


@dataclass
class StepRecord:
    """One streamed frame: the current estimate in photons (float32, input's 2D shape)."""

    index: int
    total: int
    t: int
    image: np.ndarray
    nll: float | None = None


@dataclass
class RestoreResult:
    image: np.ndarray
    settings: RestoreSettings
    metadata: dict[str, Any] = field(default_factory=dict)


def validate_image(image: Any) -> np.ndarray:
    """Check a single-channel 2D image and return a float32 copy of it."""
    arr = np.asarray(image)
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"image has dtype {arr.dtype}: a fluorescence image must be real "
                         "numbers (integer or float)")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise ValueError(f"image of shape {arr.shape} looks like RGB(A): deconvolution needs "
                         "single-channel fluorescence data; split the channels and restore "
                         "each one")
    if arr.ndim != 2:
        raise ValueError(f"image must be 2D (Y, X), got shape {arr.shape}: pick one plane "
                         "of a stack (its last two axes)")
    if min(arr.shape) < MIN_SIDE:
        raise ValueError(f"image {arr.shape[0]}×{arr.shape[1]} is too small: both sides "
                         f"must be at least {MIN_SIDE} pixels")
    out = arr.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        raise ValueError("image contains NaN or infinite values: fix or mask them first")
    if not np.any(out != 0):
        raise ValueError("image is all zero: there is nothing to restore")
    return out


def estimate_background(y: torch.Tensor, conv: PSFConvolution) -> float:
    """The 1st percentile of the PSF-smoothed data (photons), ≥ 0."""
    smooth = conv.A(y).reshape(-1)
    if smooth.numel() > 4_000_000:
        smooth = smooth[:: smooth.numel() // 4_000_000 + 1]
    return max(float(torch.quantile(smooth, 0.01)), 0.0)


def _settings_from(settings: RestoreSettings | None, overrides: dict[str, Any]) -> RestoreSettings:
    s = settings or RestoreSettings()
    if "background" in overrides and overrides["background"] is None:
        overrides = {**overrides, "background": -1.0}
    return s.replace(**overrides) if overrides else s


def restore_iter(image: Any, settings: RestoreSettings | None = None, *,
                 psf: np.ndarray | None = None, operator: PSFConvolution | None = None,
                 denoiser: Callable | None = None, **overrides: Any
                 ) -> Generator[StepRecord, None, RestoreResult]:
    """Restore ``image`` step by step.

    Yields a :class:`StepRecord` per diffusion step (or RL iteration) and returns a
    :class:`RestoreResult` (the generator's return value). Closing the generator stops it.

    Parameters
    ----------
    image
        2D array in camera units (ADU); converted with the settings' offset and gain.
    settings, overrides
        The parameters; keyword overrides (e.g. ``method="rl"``) replace fields.
    psf
        A PSF array that takes precedence over the settings' PSF model.
    operator
        A prebuilt :class:`~pkl_dg.physics.PSFConvolution` for this PSF, to reuse its
        OTF cache across runs (the napari widget keeps one per layer shape and PSF).
    denoiser
        A loaded network ``(x_t, t) -> ε``; by default the settings' model (or the
        shipped prior) is loaded.
    """
    s = _settings_from(settings, overrides)
    t_start = time.perf_counter()
    img = validate_image(image)
    y_np = (img - np.float32(s.offset)) * np.float32(s.gain)
    psf_arr = build_psf(s, img.shape, psf)
    device = resolve_device(s.device)
    if operator is None:
        operator = PSFConvolution(psf_arr)
    elif tuple(operator.psf.shape) != psf_arr.shape or not torch.allclose(
            operator.psf, torch.from_numpy(psf_arr).double(), atol=1e-7):
        raise ValueError("the supplied operator was built for a different PSF")
    y = torch.from_numpy(y_np).to(device)
    background = s.background if s.background >= 0 else estimate_background(y, operator)
    fm = ForwardModel(operator, background, float(s.read_noise) ** 2)
    pkl = get_likelihood("pkl")
    meta: dict[str, Any] = {
        "pkl_dg_version": __version__, "settings": s.to_dict(), "units": "photons",
        "background_photons": background, "psf_shape": list(psf_arr.shape),
        "input_shape": list(img.shape), "input_dtype": str(np.asarray(image).dtype),
        "device": str(device),
    }

    def record(i: int, total: int, t: int, x: torch.Tensor, nll: torch.Tensor) -> StepRecord:
        return StepRecord(i, total, t, x.reshape(img.shape).float().cpu().numpy(),
                          float(nll.reshape(-1)[0]))

    x_final = None
    if s.method == "rl":
        n = s.rl_iterations
        for i, x in enumerate(richardson_lucy_iter(y, fm, n, s.tv_weight), start=1):
            with torch.inference_mode():
                nll = pkl.nll(x, y, fm)
            x_final = x
            yield record(i, n, i, x, nll)
    else:
        if denoiser is None:
            from pkl_dg.diffusion.model_io import load_model

            denoiser, model_cfg = load_model(s.model or None, device=device)
            meta["model"] = {"path": s.model or "shipped default",
                             "name": model_cfg.get("name", "")}
        with torch.inference_mode():
            rough = richardson_lucy(y, fm, SCALE_ESTIMATE_ITERATIONS)
        mapping = IntensityMapping(scale_from_estimate(rough))
        guidance = None
        if s.method != "none":
            guidance = GuidanceStep(get_likelihood(s.method), s.step_rule, s.lam,
                                    s.sub_iterations)
        cast = autocast_dtype(s.precision, device)
        meta["intensity_scale"] = mapping.scale
        meta["network_dtype"] = str(cast or torch.float32)
        gen = torch.Generator().manual_seed(s.seed)
        for step in guided_ddim(denoiser, y, fm, mapping, steps=s.steps, eta=s.eta,
                                guidance=guidance, misfit=pkl, t_threshold=s.t_threshold,
                                ramp=s.ramp, generator=gen, autocast_dtype=cast):
            x_final = step.x0
            yield record(step.index, step.total, step.t, step.x0, step.nll)
    meta["seconds"] = round(time.perf_counter() - t_start, 3)
    out = x_final.reshape(img.shape).float().cpu().numpy()
    return RestoreResult(out, s, meta)


def restore(image: Any, psf: np.ndarray | None = None, settings: RestoreSettings | None = None,
            *, operator: PSFConvolution | None = None, denoiser: Callable | None = None,
            progress: Callable[[StepRecord], None] | None = None, **overrides: Any) -> np.ndarray:
    """Restore ``image`` and return the result (float32 photons). See :func:`restore_iter`.

    Example: ``restore(img, method="pkl", psf_sigma=2.0, steps=25, seed=0)``.
    """
    return run_to_end(restore_iter(image, settings, psf=psf, operator=operator,
                                   denoiser=denoiser, **overrides), progress).image


def run_to_end(gen: Generator[StepRecord, None, RestoreResult],
               progress: Callable[[StepRecord], None] | None = None) -> RestoreResult:
    """Drive a :func:`restore_iter` generator to its end and return its result."""
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(rec)
