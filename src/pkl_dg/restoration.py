"""High-level API: :func:`restore` and its streaming form :func:`restore_iter`.

Both take an image in camera units, convert it to photons ((ADU − offset)·gain), build the
PSF and forward model from one :class:`~pkl_dg.settings.RestoreSettings`, and run the chosen
method: guided diffusion ('pkl', 'anscombe', 'l2'), the unguided prior ('none') or
Richardson–Lucy ('rl'). Results are float32 photon counts; the input is never modified.

Stacks: the last two axes are YX. In 2D mode every YX plane is restored on its own; in 3D
mode the last three axes (ZYX) form one volume restored with a 3D PSF while the 2D prior
denoises its planes as a batch. Other leading axes (T, C, …) are iterated one block at a
time, each read with ``np.asarray(image[index])`` so dask-backed data are loaded lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import numpy as np
import torch
from einops import reduce

from pkl_dg._version import __version__
from pkl_dg.axes import arrange, channel_count, put_back, result_axes
from pkl_dg.devices import autocast_dtype, resolve_device
from pkl_dg.diffusion.mapping import SCALE_FACTOR, IntensityMapping, scale_from_estimate
from pkl_dg.diffusion.mc_error import sample_spread
from pkl_dg.diffusion.sampler import (Guidance, Problem, SamplerStep, group_budget,
                                      guided_ddim_grouped, sample_groups)
from pkl_dg.diffusion.schedule import DDIMScheduler
from pkl_dg.diffusion.step_record import LazyMisfit
from pkl_dg.diffusion.tiling import needs_tiles, tiled_network
from pkl_dg.guidance import GuidanceStep, get_likelihood
from pkl_dg.guidance.data_budget import budget_pass, data_budget
from pkl_dg.guidance.steps import auto_discrepancy, auto_sub_iterations, proximal_sub_iterations
from pkl_dg.guidance.stopping import MAX_ITERATIONS as RL_AUTO_MAX
from pkl_dg.physics import ForwardModel, PSFConvolution
from pkl_dg.negatives import negative_value_pedestal
from pkl_dg.richardson_lucy import richardson_lucy
from pkl_dg.rl_restore import rl_steps
from pkl_dg.runs import StreamedRun
from pkl_dg.missing import block_fit
from pkl_dg.plane_chunk import PlaneChunk
from pkl_dg.saturation import scale_pixels
from pkl_dg.psf_source import PSF, run_psf
from pkl_dg.settings import RestoreSettings
from pkl_dg.settings_rules import (calibration_implied, settings_record, is_guided, uses_prior,
                                   uses_proximal_step)
from pkl_dg.threads import apply_threads, thread_info
from pkl_dg.block_reports import (auto_info, block_name, listed_from_first_frame,
                                  say_empty_blocks, summarise_block_problems)
from pkl_dg.calibration import Calibration
from pkl_dg.inputs import (MIN_SIDE, check_image_shape, check_photon_counts,
                           estimate_background, block_calibrations, validate_block, check_call)
from pkl_dg.uncertainty import posterior_std_note

#: RL iterations of the rough estimate that sets the intensity scale (DESIGN §7)
SCALE_ESTIMATE_ITERATIONS = 20
TILE_OVERLAP = 64


@dataclass
class StepRecord(LazyMisfit):
    """One streamed frame.

    ``image`` is the current estimate (photons, float32, read-only) of the block being
    restored: the whole image for 2D input, else the plane (2D mode) or volume (3D mode)
    at ``block``, the index into the input's leading axes. ``index``/``total`` count steps
    over the whole run; ``step``/``steps`` within the block. ``nll`` is the PKL misfit of
    the frame (the mean over samples), computed when it is first read (``misfit`` holds the
    callable until then; see :class:`pkl_dg.diffusion.step_record.LazyMisfit` for when to
    read it), or None where not offered: RL offers it at most every
    :data:`pkl_dg.rl_restore.RL_READOUT_INTERVAL_S`, within
    :data:`~pkl_dg.rl_restore.READOUT_SHARE` of the time once read (first and last frame
    always), accelerated RL on the last frame only."""

    index: int
    total: int
    t: int
    image: np.ndarray
    misfit: float | Callable[[], float] | None = None
    block: tuple[int, ...] = ()
    step: int = 0
    steps: int = 0


@dataclass
class RestoreResult:
    """A finished restoration, as ``restore_iter(...).finish()`` returns it.

    Attributes
    ----------
    image : np.ndarray
        float32 photon counts, in the input's shape and axis order.
    settings : RestoreSettings
        The settings the run used, overrides applied.
    metadata : dict
        JSON-serialisable: ``settings``, ``calibration``, ``psf``, ``units``, ``seconds``, the
        background and intensity scale (a stack's per block: ``blocks``), …
    std : np.ndarray or None
        Per-pixel std over the posterior samples, photons (0 for one sample); None for
        Richardson–Lucy, which draws none (``metadata["posterior_std"]`` says so).
    """

    image: np.ndarray
    settings: RestoreSettings
    metadata: dict[str, Any] = field(default_factory=dict)
    std: np.ndarray | None = None


class RestoreRun(StreamedRun[StepRecord, RestoreResult]):
    """A restoration as :func:`restore_iter` returns it: iterate it for :class:`StepRecord`
    frames; ``result`` is the :class:`RestoreResult` once it has ended; ``finish(progress)``
    runs it to the end and returns that. ``metadata``: the calibration, PSF and each started
    block's background and scale as the run establishes them (for a run stopped early)."""


def _settings_from(settings: RestoreSettings | None, overrides: dict[str, Any]) -> RestoreSettings:
    s = settings or RestoreSettings()
    if "background" in overrides and overrides["background"] is None:
        overrides = {**overrides, "background": -1.0}
    overrides = calibration_implied(overrides)
    return s.replace(**overrides) if overrides else s


def restore_iter(image: Any, settings: RestoreSettings | None = None, *,
                 psf: PSF | np.ndarray | None = None, operator: PSFConvolution | None = None,
                 denoiser: Callable | None = None, chunk: PlaneChunk | None = None,
                 axes: str | None = None, fixed_calibration: Calibration | None = None,
                 **overrides: Any) -> RestoreRun:
    """Restore ``image`` step by step.

    Parameters
    ----------
    image : array_like
        (..., Y, X) in camera units (numpy, dask, xarray, torch, …), never modified; converted
        to photons with the calibration estimated from it ('auto', the default) or the
        settings' offset and gain ('manual').
    settings, overrides : RestoreSettings, optional; its fields as keywords
        The parameters (None: the defaults); overrides (e.g. ``method="rl"``) replace fields.
    psf : PSF or array_like, optional
        A :class:`~pkl_dg.psf_source.PSF`, used as it is, or a measured PSF array ((Y, X);
        (Z, Y, X) in 3D mode) that overrides the settings' PSF model; None: the settings' PSF.
    axes : str, optional
        One letter per axis of ``image`` (T, C, S, Z, Y, X; Q unnamed), e.g. ``"ZCYX"`` (an
        ImageJ hyperstack): channels and time are never deconvolved along (each channel's plane
        or volume is a block; ``StepRecord.block`` indexes the other axes in this order), and
        the result keeps the input's order. Without axes, layouts that would blur a channel
        axis ((Y, X, C); (Z, C, Y, X) in 3D mode) are refused with a message saying what to do.
    operator, denoiser, chunk, fixed_calibration
        Work shared across runs (napari widget, ``pkl-dg batch``): this PSF's prebuilt
        ``PSFConvolution``; a network ``(x_t, t) -> ε`` (None: the settings' model); the
        :class:`PlaneChunk` of a plane that ``image`` is; a ``Calibration`` used as it is.

    Returns
    -------
    RestoreRun
        Iterate it for one :class:`StepRecord` per diffusion step (or RL iteration);
        ``run.finish()`` runs it to the end and returns the :class:`RestoreResult`.

    Raises
    ------
    TypeError, ValueError
        ``settings`` or ``psf`` of the wrong kind: TypeError at the call. Bad settings, image or
        PSF (the message says why): when the first step is asked for (nothing runs before).
    """
    image = check_call(image, settings, psf)
    meta: dict[str, Any] = {}
    return RestoreRun(_restore_frames(image, settings, psf, operator, denoiser, chunk, axes,
                                      overrides, meta, fixed_calibration), meta)


def _restore_frames(image: Any, settings: RestoreSettings | None, psf: PSF | np.ndarray | None,
                    operator: PSFConvolution | None, denoiser: Callable | None,
                    chunk: PlaneChunk | None, axes: str | None, overrides: dict[str, Any],
                    meta: dict[str, Any], fixed: Calibration | None = None
                    ) -> Generator[StepRecord, None, RestoreResult]:
    """:func:`restore_iter`'s run: yield its records, return its result; fill ``meta``."""
    s = _settings_from(settings, overrides)
    t_start = time.perf_counter()
    image, axes, back = arrange(image, axes, s.mode, MIN_SIDE)
    shape = tuple(np.shape(image))
    dtype = getattr(image, "dtype", np.asarray(image).dtype if not shape else None)
    check_image_shape(shape, s.mode, labelled=True)  # arrange() checked the layout
    block_ndim = 3 if s.mode == "3d" else 2
    lead = shape[: len(shape) - block_ndim]
    psf = run_psf(psf, s, shape)
    psf_arr = psf.kernel
    device = resolve_device(s.device)
    if operator is None:
        operator = PSFConvolution(psf_arr)
    elif tuple(operator.psf.shape) != psf_arr.shape or not torch.allclose(
            operator.psf, torch.from_numpy(psf_arr).double(), atol=1e-7):
        raise ValueError("the supplied operator was built for a different PSF")
    meta.update({
        "pkl_dg_version": __version__, **settings_record(s), "units": "photons",
        "psf_shape": list(psf_arr.shape), "input_shape": list(shape),
        "input_dtype": str(np.dtype(dtype)), "device": str(device), "blocks": [],
        "posterior_std": posterior_std_note(s), "psf": psf.metadata(),
    })
    if axes is not None:
        meta["axes"] = {"restored_as": axes, "channels": channel_count(axes, shape),
                        "block_axes": axes[-block_ndim:], "result": result_axes(axes, back)}
    apply_threads(s.threads)  # process-wide, like torch.set_num_threads
    meta.update(thread_info())
    net = None
    if uses_prior(s):
        net = denoiser
        if net is not None:
            inner = getattr(net, "__wrapped__", net)  # e.g. the widget's cancellable wrapper
            cfg = getattr(inner, "config", None)
            meta["model"] = {**getattr(inner, "source", {"path": "network supplied by the caller"}),
                             "class": type(inner).__name__,
                             "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None}
        else:
            from pkl_dg.diffusion.model_io import load_model

            net, model_cfg = load_model(s.model or None, device=device)
            meta["model"] = {"path": s.model or "shipped default",
                             "name": model_cfg.get("name", "")}
        net = tiled_network(net, shape[-2:], s.tile_size, TILE_OVERLAP, device)
        if needs_tiles(shape[-2:], s.tile_size):
            meta["tile_size"] = net.tile  # the setting, or less on a CPU (CPU_TILE)
        meta["network_dtype"] = str(autocast_dtype(s.precision, device) or torch.float32)

    calibration_of, meta["calibration"] = block_calibrations(image, axes, len(lead), s, fixed)
    steps_per_block = (s.steps * len(sample_groups(s.samples, int(np.prod(shape[len(lead):])),
                                                   group_budget(device)))
                       + (is_guided(s) and s.final_noise > 0) if uses_prior(s)
                       else s.rl_iterations or RL_AUTO_MAX)
    indices = list(np.ndindex(*lead))
    total = steps_per_block * len(indices)
    out = np.empty(shape, dtype=np.float32)
    std = np.zeros(shape, dtype=np.float32) if uses_prior(s) else None
    done = 0
    flagged = {"missing": 0, "saturated": 0, "negative_values": 0, "rl_auto_misfit": 0}
    delta_psf = psf_arr.size == 1  # pure denoising: a masked pixel would have no data at all
    empty: list[list[int]] = []  # blocks with every value 0: written as 0, not restored
    for idx in indices:
        raw = validate_block(image[idx] if idx else image, dtype, empty_ok=len(indices) > 1,
                             missing_ok=True)
        block_meta: dict[str, Any] = {"index": list(idx)}  # listed once it yields a frame
        if not np.any(raw != 0):
            block_meta["empty"] = True
            meta["blocks"].append(block_meta)
            empty.append(list(idx))
            out[idx], done = 0.0, done + steps_per_block
            frame = out[idx].copy()
            frame.flags.writeable = False
            yield StepRecord(done, total, 0, frame, None, idx, steps_per_block, steps_per_block)
            continue
        # each kind of data problem is warned about once per run (every block's numbers
        # are in the metadata; a summary follows for stacks)
        where = block_name(idx, axes)
        raw, missing, mask = block_fit(raw, dtype, where, delta_psf, flagged, block_meta)
        mask = None if mask is None else torch.from_numpy(mask).to(device)
        cal = calibration_of(idx)
        y = torch.from_numpy(cal.to_photons(raw)).to(device)
        steps = _restore_block(y, s, operator, net, device, block_meta, mask=mask, where=where,
                               chunk=chunk, read_noise=cal.read_noise,
                               warn_negative=not flagged["negative_values"],
                               estimated_offset=cal.source == "estimated",
                               warn_misfit=not flagged["rl_auto_misfit"])
        for rec in listed_from_first_frame(steps, meta["blocks"], block_meta):
            done += 1
            # the mean as the sampler set it (the final pass's: averaging its samples again
            # rounds < 0); one sample (RL): a read-only view (each iterate is a new tensor)
            frame = (rec.mean[0] if rec.mean is not None else rec.x0[0] if len(rec.x0) == 1
                     else reduce(rec.x0, "sample ... -> ...", "mean")).float().cpu().numpy()
            if missing is not None:  # nothing measured there: NaN (a copy: not the sampler's)
                frame = np.where(missing, np.float32(np.nan), frame)
            frame.flags.writeable = False
            misfit = None if rec.misfit is None else (lambda r=rec: float(r.nll.mean()))
            yield StepRecord(done, total, rec.t, frame, misfit, idx, rec.index, rec.total)
        out[idx] = frame  # the last frame is the block's result
        if std is not None and len(rec.x0) > 1:  # the spread of the last step's samples
            spread = sample_spread(rec.x0).float().cpu().numpy()
            std[idx] = spread if missing is None else np.where(missing, np.nan, spread)
        for kind in flagged:
            flagged[kind] += kind in block_meta
        if cal.source == "estimated" and "below_estimated_offset" not in \
                block_meta.get("negative_values", {}):  # below the dark level: read noise
            flagged["negative_values"] -= "negative_values" in block_meta
    summarise_block_problems(flagged, len(indices))
    if empty:
        if len(empty) == len(indices):
            raise ValueError("image is all zero: there is nothing to restore")
        meta["empty_blocks"] = empty
        say_empty_blocks(empty, len(indices))
    if len(indices) == 1:  # a single image: its background and scale at top level
        meta.update({k: v for k, v in meta.pop("blocks")[0].items() if k != "index"})
    meta["seconds"] = round(time.perf_counter() - t_start, 3)
    return RestoreResult(put_back(out, back), s, meta, put_back(std, back))


def _restore_block(y: torch.Tensor, s: RestoreSettings, operator: PSFConvolution,
                   net: Callable | None, device: torch.device, info: dict[str, Any], *,
                   mask: torch.Tensor | None = None, where: str = "",
                   warn_negative: bool = True, warn_misfit: bool = True,
                   chunk: PlaneChunk | None = None, read_noise: float = 0.0,
                   estimated_offset: bool = False) -> Iterator[SamplerStep]:
    """Restore one plane (H, W) or volume (Z, H, W); yield a :class:`SamplerStep` per step
    (Richardson–Lucy's iterates as one sample, ``t`` its iteration count, ``nll`` None
    where not read out) and write the block's metadata into ``info``.

    ``mask`` (1 = fit, 0 = ignore, e.g. saturated pixels) leaves pixels out of the data fit.
    ``read_noise`` (e⁻ rms) is the calibration's. With an estimated calibration
    (``estimated_offset``) the offset is the image's dark level, so values a little below
    it are read noise: only values beyond it are warned of (the pedestal, if any, is always
    applied and recorded). ``warn_misfit``: warn of a fit that stalls far above the noise
    (False once a block of the run has).
    """
    background = s.background if s.background >= 0 else estimate_background(y, operator)
    info["background_photons"] = background
    s2, negatives = negative_value_pedestal(y, float(read_noise) ** 2, where,
                                            warn=warn_negative, estimated=estimated_offset)
    if negatives is not None:
        info["negative_values"] = negatives
    fm = ForwardModel(operator, background, s2, mask)
    pkl = get_likelihood("pkl")
    x0 = None if chunk is None else torch.full_like(y, chunk.rl_start)  # where RL starts
    if not uses_prior(s):  # Richardson–Lucy
        yield from rl_steps(y, fm, s, x0, info, where, warn_misfit)
        return
    proximal = uses_proximal_step(s)
    with torch.inference_mode():
        if proximal:  # RL with the automatic stop sets both the scale and the data budget
            rule, it = budget_pass(y, fm, x0)
            rough = it.x
            info.update(auto_info(rule, where, warn_misfit))
            budget, why = (chunk.data_budget if chunk is not None and chunk.data_budget
                           else data_budget(rule, it, fm))  # a chunk takes its plane's
            info.update(data_budget=budget, data_budget_reason=why)
            del it, rule  # RL's buffers and FFT workspace: not held through the run
        else:
            rough = richardson_lucy(y, fm, SCALE_ESTIMATE_ITERATIONS)
    scale_px = scale_pixels(fm.mask, operator)  # not set by saturated pixels or their blur
    if scale_px is not None:
        info["intensity_scale_excluded_px"] = int((~scale_px).sum())
    mapping = IntensityMapping(scale_from_estimate(rough, scale_px)
                               if chunk is None or chunk.intensity_scale is None
                               else chunk.intensity_scale)
    info["intensity_scale"] = mapping.scale
    guidance = None
    if is_guided(s):
        peak = mapping.scale / SCALE_FACTOR
        disc, k, accelerate = 0.0, s.sub_iterations, False
        if proximal and not k:  # the sampler's data iterations add up to the data budget
            k, accelerate = proximal_sub_iterations(info["data_budget"], s.steps)
        elif not proximal:
            k = k or auto_sub_iterations(peak)
            disc = auto_discrepancy(peak) if s.discrepancy < 0 else s.discrepancy
            if disc > 0 and s.calibration == "manual":
                disc = check_photon_counts(y, fm, rough, disc, auto=s.discrepancy < 0,
                                          info=info)
            info["discrepancy"] = disc
        info.update(sub_iterations=k, sub_iterations_accelerated=accelerate)
        rule, lam = s.step_rule, s.lam
        if rule == "proximal" and not proximal:  # documented: the proximal step is PKL's
            rule, lam = "poisson", 1.0
            info["step_rule_used"] = ("poisson, λ = 1 (the proximal rule is the Poisson "
                                      f"likelihood's; {s.method} guidance takes Poisson-"
                                      "preconditioned steps)")
        guidance = GuidanceStep(get_likelihood(s.method), rule, lam, k, disc, accelerate)
    del rough, x0  # the sampler starts from noise: images not held through the run
    yield from guided_ddim_grouped(net, Problem(y, fm, mapping), DDIMScheduler(s.steps, s.eta),
                                   Guidance(guidance, s.t_threshold, s.ramp, misfit=pkl),
                                   num_samples=s.samples, seed=s.seed,
                                   autocast_dtype=autocast_dtype(s.precision, device),
                                   window=None if chunk is None else
                                   (chunk.plane_shape, chunk.box), final_noise=s.final_noise)


def restore(image: Any, psf: PSF | np.ndarray | None = None,
            settings: RestoreSettings | None = None, *, axes: str | None = None,
            operator: PSFConvolution | None = None, denoiser: Callable | None = None,
            progress: Callable[[StepRecord], None] | None = None, **overrides: Any) -> np.ndarray:
    """Restore ``image``; return the restored image alone: float32 photons, shaped and ordered
    as ``image`` (``restore_iter(...).finish()`` adds metadata and std: a RestoreResult).

    The parameters (``axes`` etc.) and errors (TypeError, ValueError) are :func:`restore_iter`'s,
    but the PSF comes second: settings go by keyword, e.g. ``restore(img, settings=s,
    axes="ZCYX", steps=25)``. ``progress`` is called with each :class:`StepRecord`.
    """
    return restore_iter(image, settings, psf=psf, operator=operator, denoiser=denoiser,
                        axes=axes, **overrides).finish(progress).image
