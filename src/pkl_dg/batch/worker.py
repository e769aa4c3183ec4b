"""The tasks a batch runs on its Dask workers.

Each worker process keeps what is expensive to build in :data:`_CACHE`: the network (loaded
once per model file and device) and the PSF operator (one per PSF; it caches its OTFs per
padded shape); the open input and its calibration (each channel's, where it has several)
are kept by :mod:`pkl_dg.batch.reading`.
Tasks take plain, picklable arguments (paths, block indices, settings as a dict) and read
their own data, so no image travels through the scheduler on the way in. A task that fails
returns a :class:`~pkl_dg.batch.report.BlockFailure` instead of raising, so no worker
prints a traceback; a block with only zeros comes back as zeros, not restored.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from typing import Any

import numpy as np

from pkl_dg.batch.reading import (calibration_channel, input_calibration,
                                  input_calibration_dict, input_calibration_estimate,
                                  input_calibration_warnings, read_block, reader_notes)
from pkl_dg.batch.report import EMPTY_BLOCK, READER_NOTE, BlockFailure, report_failure

#: per-process cache: networks, operators and how often each was built
_CACHE: dict[str, dict] = {"nets": {}, "operators": {}, "loads": {}}


def cache_counts() -> dict[str, int]:
    """How often this process loaded a network and built an operator (for tests)."""
    return {"nets": _CACHE["loads"].get("nets", 0),
            "operators": _CACHE["loads"].get("operators", 0), "pid": os.getpid()}


def _count(kind: str) -> None:
    _CACHE["loads"][kind] = _CACHE["loads"].get(kind, 0) + 1


def worker_threads() -> int | None:
    """Torch threads for a task on this Dask worker: its cores over its Dask threads (so
    tasks running side by side do not oversubscribe); None outside a worker."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, nthreads))


def set_threads(threads: int | None) -> int | None:
    """Torch CPU threads for this process (None: the worker's share, see
    :func:`worker_threads`); returns the count set (None when nothing was set)."""
    threads = threads or worker_threads()
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return threads


def _with_threads(s, threads: int | None):
    """Settings whose own thread count (restore applies it) is this task's share."""
    if threads and "threads" in s.to_dict():
        return s.replace(threads=threads)
    return s


def _operator(psf: np.ndarray):
    """The cached :class:`~pkl_dg.physics.PSFConvolution` of a PSF kernel (by content)."""
    from pkl_dg.physics import PSFConvolution

    key = hashlib.sha1(np.ascontiguousarray(psf).tobytes() + str(psf.shape).encode()).hexdigest()
    op = _CACHE["operators"].get(key)
    if op is None:
        op = _CACHE["operators"][key] = PSFConvolution(psf)
        _count("operators")
    return op


def _network(settings):
    from pkl_dg.devices import resolve_device
    from pkl_dg.diffusion.model_io import load_model

    device = resolve_device(settings.device)
    key = (settings.model or "", str(device))
    if key not in _CACHE["nets"]:
        _CACHE["nets"][key] = load_model(settings.model or None, device=device)
        _count("nets")
    return _CACHE["nets"][key]


def _photons(block: np.ndarray, settings) -> np.ndarray:
    from pkl_dg.restoration import validate_block

    return (validate_block(block, block.dtype) - np.float32(settings.offset)) \
        * np.float32(settings.gain)


def is_empty(block: np.ndarray) -> bool:
    """Whether a block (or chunk) holds only zeros (checked as restore checks a plane:
    :func:`~pkl_dg.inputs.validate_block`, which refuses non-numbers; NaN pixels, left out
    of the fit by the restoration, are not zeros)."""
    from pkl_dg.inputs import validate_block

    return not np.any(validate_block(block, block.dtype, empty_ok=True, missing_ok=True) != 0)


def _saturation_mask(raw: np.ndarray, op):
    """The plane's data-fit mask of saturated pixels (torch, 1 = fit) as
    :func:`~pkl_dg.restore` builds it, or None."""
    import torch

    from pkl_dg.saturation import detect_saturation, fit_mask

    mask = fit_mask(detect_saturation(raw, raw.dtype), op.psf.numel() == 1)
    return None if mask is None else torch.from_numpy(mask)


def _calibrated(path: str, index: tuple[int, ...], s, box=None):
    """The settings with the calibration of the block at ``index`` (its input's, or its
    channel's: :func:`~pkl_dg.batch.reading.input_calibration`); None where its channel
    holds only zeros (nothing to estimate on; the block is empty and written as zeros).

    Raises
    ------
    ValueError
        The estimate failed otherwise (an input all zero, a damaged plane).
    """
    try:
        return input_calibration(path, s, index)
    except ValueError:
        if calibration_channel(path, s, index) is None or \
                not is_empty(read_block(path, index, box)):
            raise
        return None


def _in_this_task():
    """Compute any dask array the task reads (a PSF file, a bioio image) here, not through
    the cluster: on a worker dask would send it to the cluster and secede, and the worker
    would start its next task beside this one (two restores on one worker's cores, and
    their warning records mixed)."""
    import dask

    return dask.config.set(scheduler="synchronous")


def plane_statistics(path: str, index: tuple[int, ...], settings_dict: dict,
                     threads: int | None = None) -> dict[str, float] | BlockFailure:
    """Whole-plane quantities chunks of the plane must share (see
    :func:`_plane_statistics`), with the ``seconds`` they took; a
    :class:`~pkl_dg.batch.report.BlockFailure` if they cannot be computed."""
    t0 = time.perf_counter()
    # its warnings (the PSF's) go to the plane's chunks, which carry them to the client
    with reader_notes() as notes, _in_this_task(), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = _plane_statistics(path, index, settings_dict, threads)
        except Exception as exc:  # said by the client, with its traceback kept in a log
            return report_failure(exc, notes)
    if caught:
        out["warnings"] = {w.category.__name__: str(w.message) for w in caught}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _plane_statistics(path: str, index: tuple[int, ...], settings_dict: dict,
                      threads: int | None = None) -> dict[str, Any]:
    """Whole-plane quantities chunks of the plane must share.

    Returns the background (photons; estimated as :func:`~pkl_dg.restoration.restore` does
    when the settings say −1), the Richardson–Lucy start level (mean signal above it), and
    for the diffusion methods the plane's brightness (peak photons of the rough RL estimate
    that sets the intensity scale) with the sub-iteration count and noise-level target it
    implies, so automatic choices are made once for the plane and not per chunk. A plane
    with only zeros gives ``empty`` (its chunks are written as zeros, not restored).
    """
    import torch

    from pkl_dg.psf_source import psf_from_settings
    from pkl_dg.restoration import estimate_background
    from pkl_dg.saturation import scale_pixels
    from pkl_dg.settings import RestoreSettings
    from pkl_dg.settings_rules import applies, uses_prior, uses_proximal_step

    threads = set_threads(threads)
    s = _calibrated(path, index, _with_threads(RestoreSettings.from_dict(settings_dict),
                                               threads))
    raw = read_block(path, index)
    missing = int(np.size(raw) - np.isfinite(raw).sum())
    if missing:
        raise ValueError(
            f"{missing} NaN or infinite value(s) in a plane restored in chunks (larger than "
            "--chunk): its chunks share statistics that need a value at every pixel. Pass "
            "--chunk 0 to restore the plane whole (the NaN pixels are then left out of the "
            "fit and NaN in the result), or crop it to its measured region")
    if s is None or is_empty(raw):  # None: a channel with only zeros
        return {"empty": True, "background": 0.0, "rl_start": 1e-3,
                "plane_shape": [int(n) for n in raw.shape[-2:]]}
    y = torch.from_numpy(_photons(raw, s))
    auto_rl = applies("rl_iterations", s) and s.rl_iterations == 0  # RL, automatic count
    proximal = uses_proximal_step(s)
    op = None  # the plane's operator, where a statistic needs it (its PSF built once)
    if s.background < 0 or auto_rl or proximal or uses_prior(s):
        op = _operator(psf_from_settings(s, tuple(y.shape)).kernel)
    bg = s.background
    if bg < 0:
        bg = estimate_background(y, op)
    out = {"background": float(bg), "rl_start": max(float((y - bg).mean()), 1e-3),
           "plane_shape": [int(n) for n in y.shape[-2:]]}
    if auto_rl or proximal:  # the automatic RL count of the whole plane, shared by its chunks
        from pkl_dg.diffusion.mapping import SCALE_FACTOR, scale_from_estimate
        from pkl_dg.guidance.data_budget import budget_pass, data_budget
        from pkl_dg.guidance.stopping import MAX_ITERATIONS, AutoStop
        from pkl_dg.physics import ForwardModel
        from pkl_dg.richardson_lucy import rl_iterates

        fm = ForwardModel(op, bg, float(s.read_noise) ** 2, _saturation_mask(raw, op))
        with torch.inference_mode():
            if auto_rl:  # the count of the run's own RL
                fast = s.rl_acceleration != "none"
                rule = AutoStop(y, fm, accelerated=fast)
                for it in rl_iterates(y, fm, MAX_ITERATIONS, accelerate=fast, stop=rule):
                    pass
                out["rl_iterations"] = rule.k
            else:  # as a whole-plane restore runs it (restoration._restore_block)
                rule, it = budget_pass(y, fm)
                scale = scale_from_estimate(it.x, scale_pixels(fm.mask, op))
                budget, why = data_budget(rule, it, fm)  # the chunks' data budget
                out.update(peak_photons=float(scale / SCALE_FACTOR),
                           intensity_scale=float(scale), rl_auto_iterations=rule.k,
                           data_budget=[budget, why])
    elif uses_prior(s):
        from pkl_dg.diffusion.mapping import SCALE_FACTOR, scale_from_estimate
        from pkl_dg.guidance.steps import auto_discrepancy, auto_sub_iterations
        from pkl_dg.physics import ForwardModel
        from pkl_dg.restoration import SCALE_ESTIMATE_ITERATIONS
        from pkl_dg.richardson_lucy import richardson_lucy

        fm = ForwardModel(op, bg, float(s.read_noise) ** 2, _saturation_mask(raw, op))
        with torch.inference_mode():
            rough = richardson_lucy(y, fm, SCALE_ESTIMATE_ITERATIONS)
        scale = scale_from_estimate(rough, scale_pixels(fm.mask, op))
        peak = scale / SCALE_FACTOR
        out.update(peak_photons=float(peak), intensity_scale=float(scale),
                   sub_iterations=int(auto_sub_iterations(peak)),
                   discrepancy=float(auto_discrepancy(peak)))
    return out


def restore_task(path: str, index: tuple[int, ...], settings_dict: dict,
                 box: tuple[int, int, int, int] | None = None,
                 stats: dict[str, float] | BlockFailure | None = None,
                 threads: int | None = None
                 ) -> tuple[np.ndarray, dict[str, Any]] | BlockFailure:
    """Restore one block (a plane, or a volume in 3D mode) or one chunk of a plane.

    Parameters
    ----------
    index
        Position of the block along the input's leading axes.
    box
        (y0, y1, x0, x1): restore only this chunk of the plane; then ``stats`` (from
        :func:`plane_statistics`) gives the plane's background and RL start level, so every
        chunk solves the same problem as the whole plane would.

    Returns
    -------
    (image, metadata) or BlockFailure
        float32 photons of the block or chunk, and that block's metadata with its
        ``compute_seconds`` (read and restore, on this worker). A block or chunk with only
        zeros is returned as zeros, not restored, its metadata saying ``empty``. A task
        that fails returns a :class:`~pkl_dg.batch.report.BlockFailure` (the workers print
        no traceback; the client reports it).
    """
    if isinstance(stats, BlockFailure):  # the plane's statistics failed: so does the chunk
        return stats
    t0 = time.perf_counter()
    with reader_notes() as notes, _in_this_task():
        try:
            image, meta = _restore_block(path, index, settings_dict, box, stats, threads)
        except Exception as exc:  # said by the client, with its traceback kept in a log
            return report_failure(exc, notes)
    if notes:  # e.g. tifffile's "ImageJ series metadata invalid": once per input, not printed
        meta.setdefault("warnings", {})[READER_NOTE] = (
            "the TIFF reader logged: " + "; ".join(notes))
    meta["compute_seconds"] = round(time.perf_counter() - t0, 3)
    if stats is not None:
        meta["statistics_seconds"] = stats.get("seconds", 0.0)
    return image, meta


def _restore_block(path: str, index: tuple[int, ...], settings_dict: dict,
                   box: tuple[int, int, int, int] | None, stats: dict[str, float] | None,
                   threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`restore_task`'s work; raises what goes wrong."""
    from pkl_dg.psf_source import psf_from_settings
    from pkl_dg.plane_chunk import PlaneChunk
    from pkl_dg.restoration import restore_iter
    from pkl_dg.settings import RestoreSettings
    from pkl_dg.settings_rules import uses_prior

    threads = set_threads(threads)
    s = _calibrated(path, index, _with_threads(RestoreSettings.from_dict(settings_dict),
                                               threads), box)
    said: dict[str, str] = {}
    cal = None  # the settings' values; with 'auto', the input's (channel's) estimate as such
    if settings_dict.get("calibration", "auto") == "auto":  # every block carries its warnings
        mode = settings_dict.get("mode", "2d")
        said.update(input_calibration_warnings(path, index, mode))
        cal = input_calibration_estimate(path, index, mode)
    block = read_block(path, index, box)
    if s is None or is_empty(block):  # nothing to restore here: zeros, said once per input
        said[EMPTY_BLOCK] = "holds only zeros: written as zeros, not restored"
        return np.zeros(block.shape, np.float32), _block_meta({"empty": True}, said, path,
                                                              settings_dict, None, s, index)
    if box is not None:
        if stats is None:
            raise ValueError("a chunk needs its plane's statistics")
        s = s.replace(background=stats["background"])
        if "sub_iterations" in stats and s.sub_iterations == 0:
            s = s.replace(sub_iterations=stats["sub_iterations"])
        if "discrepancy" in stats and s.discrepancy < 0:
            s = s.replace(discrepancy=stats["discrepancy"])
        if "rl_iterations" in stats and s.rl_iterations == 0:
            s = s.replace(rl_iterations=stats["rl_iterations"])
    axes = "ZYX" if s.mode == "3d" else "YX"  # a block is one plane or one Z-stack
    if stats is not None:  # the plane's (its PSF's), said with the chunk's own
        said.update(stats.get("warnings", {}))
    # a chunk's Richardson–Lucy starts at the plane's level (its own mean would start it
    # elsewhere and end 2e-3 away after 30 iterations); a diffusion chunk takes the plane's
    # intensity scale and its window of the plane's noise
    chunk = None if box is None else PlaneChunk(
        tuple(box), tuple(stats["plane_shape"]), stats["rl_start"], stats.get("intensity_scale"),
        None if stats.get("data_budget") is None else tuple(stats["data_budget"]))
    # the block's warnings (the PSF's too) travel with its result: the client says each once
    # per input (with the blocks it concerns) instead of every worker printing it per plane
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf = psf_from_settings(s, block.shape)  # once per task: restore_iter takes it as is
        op = _operator(psf.kernel)
        net, model_meta = _network(s) if uses_prior(s) else (None, None)
        result = restore_iter(block, s, psf=psf, operator=op, denoiser=net, chunk=chunk,
                              axes=axes, fixed_calibration=cal).finish()
    meta = {k: v for k, v in result.metadata.items()
            if k not in ("settings", "model", "input_shape", "seconds", "pkl_dg_version",
                         "axes", "posterior_std")}  # batch keeps the mean only (run.py)
    said.update({w.category.__name__: str(w.message) for w in caught})  # one of each kind
    return result.image, _block_meta(meta, said, path, settings_dict, model_meta, s, index)


def _block_meta(meta: dict[str, Any], said: dict[str, str], path: str, settings_dict: dict,
                model_meta: dict | None, s, index: tuple[int, ...] = ()) -> dict[str, Any]:
    """A block's metadata with its warnings, the input's (or its channel's) calibration
    estimate and the model."""
    if said:
        meta["warnings"] = said
    if settings_dict.get("calibration", "auto") == "auto":  # the input's estimate, as such
        cal = input_calibration_dict(path, index, settings_dict.get("mode", "2d"))
        if cal is not None:  # None: a channel with only zeros, nothing estimated
            meta["calibration"] = cal
    if model_meta is not None:
        meta["model"] = {"path": s.model or "shipped default", "name": model_meta.get("name", "")}
    return meta
