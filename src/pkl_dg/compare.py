"""Comparing methods on one image: runs, metrics, data-consistency maps.

:func:`compare_iter` restores the same input with several methods (same settings, same
seed, the same PSF, built once) one after the other and streams every step, tagged with
its method, so a GUI can fill one layer per method; a warning the methods share (saturated
pixels, a model that does not fit the data) is said once per comparison, not once per
method. :func:`metrics_table` scores the results against a ground truth (DESIGN §4 protocol
plus FRC). :func:`pearson_residual` shows where a result disagrees with the measurement:
(y − (A x̂ + B)) / √(A x̂ + B + s²), in photons, which is ~N(0, 1) where the result explains
the data and structured where it invents or misses something; :func:`result_residual`
computes it with the forward model a result's run used (its calibration, background,
read-noise pedestal and left-out saturated pixels, from its metadata).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import numpy as np
import torch
from scipy import ndimage

from pkl_dg.calibration import Calibration
from pkl_dg.frc import frc_resolution
from pkl_dg.guidance.stopping import ModelMismatchWarning
from pkl_dg.metrics import care_scores
from pkl_dg.axes import arrange
from pkl_dg.physics import ForwardModel, PSFConvolution
from pkl_dg.psf_source import PSF, describe_psf, run_psf
from pkl_dg.inputs import MIN_SIDE, check_image_shape, validate_image
from pkl_dg.restoration import RestoreResult, StepRecord, restore_iter
from pkl_dg.runs import StreamedRun
from pkl_dg.saturation import detect_saturation, fit_mask
from pkl_dg.scored_region import measured_rectangle, region_text
from pkl_dg.settings import METHOD_LABELS, METHODS, RestoreSettings

METRIC_COLUMNS = ("method", "psnr_db", "ssim", "nrmse", "frc_px", "frc_nm", "seconds")
#: each column of :data:`METRIC_COLUMNS` as a table heads it (with its unit)
METRIC_HEADERS = {"method": "method", "psnr_db": "PSNR (dB)", "ssim": "SSIM",
                  "nrmse": "NRMSE", "frc_px": "FRC (px)", "frc_nm": "FRC (nm)",
                  "seconds": "time (s)"}


@dataclass
class Comparison:
    results: dict[str, RestoreResult] = field(default_factory=dict)
    misfit: dict[str, list[float]] = field(default_factory=dict)  # NLL per step per method


def parse_methods(text: str | list[str]) -> list[str]:
    """'rl,pkl' or a list → validated method keys (order kept, duplicates dropped)."""
    items = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    items = [m for m in dict.fromkeys(items) if m]
    bad = [m for m in items if m not in METHODS]
    if bad or not items:
        raise ValueError(f"unknown method(s) {', '.join(bad) or '(none given)'}: choose from "
                         f"{', '.join(METHODS)}")
    return items


class CompareRun(StreamedRun[tuple[str, StepRecord], Comparison]):
    """A comparison as :func:`compare_iter` returns it: iterate it for ``(method, record)``
    frames; ``result`` is the :class:`Comparison` once it has ended. ``finished`` maps each
    method that has ended so far to its :class:`~pkl_dg.restoration.RestoreResult`, also
    when the comparison is stopped before its end (:meth:`close`)."""

    def __init__(self, frames: Generator[tuple[str, StepRecord], None, Comparison],
                 finished: dict[str, RestoreResult] | None = None) -> None:
        super().__init__(frames)
        self.finished = finished if finished is not None else {}


def compare_iter(image: Any, methods: list[str], settings: RestoreSettings | None = None, *,
                 psf: PSF | np.ndarray | None = None,
                 operator: PSFConvolution | None = None,
                 denoiser: Callable | None = None, **overrides: Any) -> CompareRun:
    """Run every method on ``image``, one after the other, as a :class:`CompareRun`: its
    frames are ``(method, record)``, its result a :class:`Comparison`.

    ``psf`` is the :class:`~pkl_dg.psf_source.PSF` every method uses, or an array or None
    built into one once (see :func:`pkl_dg.restoration.restore_iter`); the other
    arguments are :func:`~pkl_dg.restoration.restore_iter`'s.
    """
    comp = Comparison()
    return CompareRun(_compare_frames(comp, image, methods, settings, psf, operator,
                                      denoiser, overrides), comp.results)


def _compare_frames(comp: Comparison, image: Any, methods: list[str],
                    settings: RestoreSettings | None,
                    psf: PSF | np.ndarray | None, operator: PSFConvolution | None,
                    denoiser: Callable | None, overrides: dict[str, Any]
                    ) -> Generator[tuple[str, StepRecord], None, Comparison]:
    base = (settings or RestoreSettings()).replace(**overrides) if overrides else (
        settings or RestoreSettings())
    methods = parse_methods(methods)
    shape = np.shape(arrange(image, None, base.mode, MIN_SIDE)[0])  # checked as restore does
    check_image_shape(shape, base.mode, labelled=True)
    psf = run_psf(psf, base, shape)  # one PSF for every method
    said: set[tuple[type, str]] = set()  # warnings given so far in this comparison
    for method in methods:
        run = restore_iter(image, base.replace(method=method), psf=psf, operator=operator,
                           denoiser=denoiser)
        comp.misfit[method] = []
        for rec in _saying_once(run, said):
            comp.misfit[method].append(rec.nll)
            yield method, rec
        comp.results[method] = run.result
    return comp


def _saying_once(run: Iterator[StepRecord], said: set[tuple[type, str]]
                 ) -> Generator[StepRecord, None, None]:
    """``run``'s records; each warning it gives is passed on unless ``said`` holds it.

    The methods of a comparison see the same data: each one warned of the same saturated
    pixels, and each that runs Richardson–Lucy's automatic stop of the same model mismatch
    (twice per comparison on BioSR). A :class:`ModelMismatchWarning` is said once whatever
    its numbers; others once per text. Warnings are caught only while a step computes,
    never across a ``yield``.
    """
    while True:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    rec = next(run)
                except StopIteration:
                    rec = None
        finally:  # also what a failing step said before it failed
            for w in caught:
                key = (w.category, "" if issubclass(w.category, ModelMismatchWarning)
                       else str(w.message))
                if key not in said:
                    said.add(key)
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if rec is None:
            return
        yield rec


def pearson_residual(measurement: np.ndarray, estimate: np.ndarray, settings: RestoreSettings,
                     psf: PSF | np.ndarray | None = None,
                     background: float | None = None,
                     calibration: Calibration | None = None,
                     read_noise_var: float | None = None) -> np.ndarray:
    """The Pearson residual (y − μ)/√(μ + s²) of a restoration, μ = A x̂ + B.

    Parameters
    ----------
    measurement
        The measured image (Y, X) in camera units (ADU), with the data type it was stored
        in: an integer image's pixels at the dtype's maximum are saturated and, as in the
        run, left out (NaN in the residual) unless the PSF is a single pixel.
    estimate
        The restoration x̂ in photons, the measurement's shape.
    settings
        The run's settings (PSF, and the calibration when it is 'manual').
    psf
        The run's :class:`~pkl_dg.psf_source.PSF`; an array or None is built into one
        from ``settings``.
    background
        B in photons per pixel; the settings' value when None (which must then not be
        'auto': take the run's from ``result.metadata['background_photons']``).
    calibration
        The photon calibration the run used (gain e⁻/ADU, offset ADU, read noise e⁻):
        y = (ADU − offset)·gain. Required when ``settings.calibration`` is 'auto' (the
        settings then hold no calibration): ``result.metadata['calibration']``.
    read_noise_var
        s² in photons², when the run raised it for negative data (its
        ``negative_values.pedestal_photons``); the calibration's read noise squared when
        None.

    Returns
    -------
    np.ndarray
        float32, the measurement's shape; ~N(0, 1) where x̂ explains the data; NaN where
        the measurement or x̂ is NaN (unmeasured pixels, e.g. a registered image's border)
        and within the PSF's reach of them, where μ would need x̂ there.
    """
    raw = np.asarray(measurement)
    y = validate_image(raw, missing_ok=True)
    if calibration is None:
        if settings.calibration != "manual":
            raise ValueError("the calibration is 'auto': pass the calibration the run "
                             "estimated (result.metadata['calibration']), or use "
                             "result_residual")
        calibration = Calibration(settings.gain, settings.offset, settings.read_noise)
    y = calibration.to_photons(y)
    x = np.asarray(estimate, dtype=np.float32)
    if x.shape != y.shape:
        raise ValueError(f"estimate {x.shape} and measurement {y.shape} differ in shape")
    # unmeasured pixels (NaN: a registered image's border, and the result there)
    missing = ~(np.isfinite(y) & np.isfinite(x))
    y, x = np.where(missing, 0, y), np.where(missing, 0, x)  # float32 both
    b = settings.background if background is None else background
    if b < 0:
        raise ValueError("background is 'auto': pass the background used "
                         "(result.metadata['background_photons'])")
    kernel = run_psf(psf, settings, y.shape).kernel
    mask = fit_mask(detect_saturation(raw, raw.dtype, measured=~missing), kernel.size == 1)
    s2 = (float(calibration.read_noise) ** 2 if read_noise_var is None
          else float(read_noise_var))
    fm = ForwardModel(PSFConvolution(kernel), b)
    with torch.inference_mode():
        mu = fm.mean(torch.from_numpy(x)) + s2
        r = (torch.from_numpy(y) + s2 - mu) / mu.clamp(min=1e-6).sqrt()
    out = r.numpy().astype(np.float32)
    if mask is not None:
        out[mask == 0] = np.nan  # left out of the fit: the data say nothing there
    if missing.any():  # μ within the PSF's reach of an unmeasured pixel is unknown
        out[ndimage.maximum_filter(missing, size=kernel.shape)] = np.nan
    return out


def result_residual(measurement: np.ndarray, result: RestoreResult,
                    psf: PSF | np.ndarray | None = None) -> np.ndarray:
    """:func:`pearson_residual` of ``result`` with the forward model its run used.

    Parameters
    ----------
    measurement
        The image the run restored (Y, X), in camera units and its stored data type.
    result
        A single-plane :class:`~pkl_dg.restoration.RestoreResult`: its ``metadata`` gives
        the calibration (estimated or given), ``background_photons`` and any read-noise
        pedestal for negative data (``negative_values.pedestal_photons``).
    psf
        The run's PSF (a :class:`~pkl_dg.psf_source.PSF` or array); built from
        ``result.settings`` when None.

    Returns
    -------
    np.ndarray
        float32 (Y, X) residual, NaN at saturated pixels the run left out.

    Raises
    ------
    ValueError
        When the metadata lack the calibration or the background (not a single-plane
        result of :func:`~pkl_dg.restoration.restore_iter`).
    """
    meta = result.metadata
    missing = [k for k in ("calibration", "background_photons") if k not in meta]
    if missing:
        raise ValueError(f"the result's metadata lack {' and '.join(missing)}: the "
                         "residual needs the forward model of a single-plane run")
    cal = meta["calibration"]
    calibration = Calibration(float(cal["gain"]), float(cal["offset"]),
                              float(cal.get("read_noise", 0.0)))
    pedestal = meta.get("negative_values", {}).get("pedestal_photons")
    return pearson_residual(measurement, result.image, result.settings, psf=psf,
                            background=float(meta["background_photons"]),
                            calibration=calibration,
                            read_noise_var=None if pedestal is None else float(pedestal))


def metrics_table(results: dict[str, np.ndarray], gt: np.ndarray,
                  pixel_size_nm: float | None = None,
                  seconds: dict[str, float] | None = None,
                  measurement: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per method: PSNR (dB), SSIM, NRMSE (DESIGN §4), FRC resolution vs ``gt``;
    first, where ``measurement`` (the input, any unit: the protocol fits a gain and an
    offset) is given, its own row, ``"input"``: the baseline a method must beat.

    Where any image has NaN pixels (a registered image's border, left NaN by the
    restorations) all are scored on the largest rectangle measured in every one
    (:func:`~pkl_dg.scored_region.measured_rectangle`); each row's ``scored_region`` then
    says which. Raises ValueError when missing pixels lie inside the image."""
    rows = []
    images = results if measurement is None else {"input": measurement, **results}
    region = measured_rectangle(gt, *images.values())
    where = {} if region is None else {"scored_region": region_text(region, np.shape(gt))}
    if region is not None:
        gt = np.asarray(gt)[region]
        images = {m: np.asarray(img)[region] for m, img in images.items()}
    for method, img in images.items():
        sc = care_scores(img, gt)
        frc = frc_resolution(img, gt, pixel_size_nm=pixel_size_nm)
        rows.append({"method": METHOD_LABELS.get(method, method), "psnr_db": sc["psnr"],
                     "ssim": sc["ssim"], "nrmse": sc["nrmse"], "frc_px": frc.resolution_px,
                     "frc_nm": frc.resolution_nm,
                     "seconds": (seconds or {}).get(method), **where})
    return rows


def csv_context(input_name: str, gt_name: str, results: dict[str, RestoreResult]
                ) -> dict[str, str]:
    """What a metrics CSV was measured on: the input, the ground truth, the PSF and the
    settings the methods shared (their metadata's, less the method), as text columns."""
    first = next(iter(results.values()), None)
    meta = first.metadata if first is not None else {}
    shared = {k: v for k, v in dict(meta.get("settings") or {}).items() if k != "method"}
    return {"input": input_name, "ground_truth": gt_name,
            "psf": describe_psf(meta["psf"]) if "psf" in meta else "",
            "settings": json.dumps(shared, sort_keys=True, default=str)}


def write_csv(rows: list[dict[str, Any]], path, context: dict[str, str] | None = None
              ) -> None:
    """The metrics ``rows`` as CSV, one row per method; ``context`` (:func:`csv_context`)
    adds its columns to every row, so that two exports can be told apart."""
    import csv

    extra = dict(context or {})
    columns = list(METRIC_COLUMNS) + (["scored_region"] if any("scored_region" in r
                                                                for r in rows) else [])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns + list(extra))
        w.writeheader()
        for row in rows:
            w.writerow({**{k: ("" if row.get(k) is None else
                               (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k]))
                           for k in columns}, **extra})


def render_panel(images: dict[str, np.ndarray], path, rows: list[dict] | None = None,
                 title: str = "") -> None:
    """A labelled side-by-side PNG of ``images``, metrics in the titles.

    Each panel is shown from its own 0.5–99.8th percentile: inputs, results and ground
    truth come in different units, and methods differ in how they distribute intensity.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    by_label = {r["method"].lower(): r for r in rows or []}  # "Input" panel, "input" row
    for ax, (label, img) in zip(axes[0], images.items()):
        lo, hi = np.nanpercentile(img, [0.5, 99.8])  # a NaN border stays NaN (blank)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row = by_label.get(label.lower())
        sub = f"\n{row['psnr_db']:.2f} dB · SSIM {row['ssim']:.3f}" if row else ""
        ax.set_title(label + sub, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.92) if title else None)  # the title above the panels
    fig.savefig(path, dpi=100)
    plt.close(fig)
