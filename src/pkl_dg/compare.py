"""Comparing methods on one image: runs, metrics, data-consistency maps.

:func:`compare_iter` restores the same input with several methods (same settings, same
seed, the same PSF, built once) one after the other and streams every step, tagged with
its method, so a GUI can fill one layer per method. :func:`metrics_table` scores the
results against a ground truth (DESIGN §4 protocol plus FRC). :func:`pearson_residual`
shows where a result disagrees with the measurement: (y − (A x̂ + B)) / √(A x̂ + B), which
is ~N(0, 1) where the result explains the data and structured where it invents or misses
something.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np
import torch

from pkl_dg.frc import frc_resolution
from pkl_dg.metrics import care_scores
from pkl_dg.axes import arrange
from pkl_dg.physics import ForwardModel, PSFConvolution
from pkl_dg.psf_source import PSF, run_psf
from pkl_dg.restoration import (MIN_SIDE, RestoreResult, StepRecord, check_image_shape,
                                 restore_iter, validate_image)
from pkl_dg.runs import StreamedRun
from pkl_dg.settings import METHOD_LABELS, METHODS, RestoreSettings

METRIC_COLUMNS = ("method", "psnr_db", "ssim", "nrmse", "frc_px", "frc_nm", "seconds")


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
    frames; ``result`` is the :class:`Comparison` once it has ended."""


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
    return CompareRun(_compare_frames(image, methods, settings, psf, operator, denoiser,
                                      overrides))


def _compare_frames(image: Any, methods: list[str], settings: RestoreSettings | None,
                    psf: PSF | np.ndarray | None, operator: PSFConvolution | None,
                    denoiser: Callable | None, overrides: dict[str, Any]
                    ) -> Generator[tuple[str, StepRecord], None, Comparison]:
    base = (settings or RestoreSettings()).replace(**overrides) if overrides else (
        settings or RestoreSettings())
    methods = parse_methods(methods)
    shape = np.shape(arrange(image, None, base.mode, MIN_SIDE)[0])  # checked as restore does
    check_image_shape(shape, base.mode, labelled=True)
    psf = run_psf(psf, base, shape)  # one PSF for every method
    comp = Comparison()
    for method in methods:
        run = restore_iter(image, base.replace(method=method), psf=psf, operator=operator,
                           denoiser=denoiser)
        comp.misfit[method] = []
        for rec in run:
            comp.misfit[method].append(rec.nll)
            yield method, rec
        comp.results[method] = run.result
    return comp


def pearson_residual(measurement: np.ndarray, estimate: np.ndarray, settings: RestoreSettings,
                     psf: PSF | np.ndarray | None = None,
                     background: float | None = None) -> np.ndarray:
    """(y − μ)/√μ with μ = A x̂ + B (+ s²), y in photons; float32, the image's shape.

    ``estimate`` is a restoration in photons; ``psf`` the run's
    :class:`~pkl_dg.psf_source.PSF` (an array or None is built into one from the
    settings); ``background`` defaults to the settings' (or must be given when the
    settings say 'auto': take it from the result metadata).
    """
    y = validate_image(measurement)
    y = (y - np.float32(settings.offset)) * np.float32(settings.gain)
    x = np.asarray(estimate, dtype=np.float32)
    if x.shape != y.shape:
        raise ValueError(f"estimate {x.shape} and measurement {y.shape} differ in shape")
    b = settings.background if background is None else background
    if b < 0:
        raise ValueError("background is 'auto': pass the background used "
                         "(result.metadata['background_photons'])")
    fm = ForwardModel(PSFConvolution(run_psf(psf, settings, y.shape).kernel), b)
    s2 = float(settings.read_noise) ** 2
    with torch.inference_mode():
        mu = fm.mean(torch.from_numpy(x)) + s2
        r = (torch.from_numpy(y) + s2 - mu) / mu.clamp(min=1e-6).sqrt()
    return r.numpy().astype(np.float32)


def metrics_table(results: dict[str, np.ndarray], gt: np.ndarray,
                  pixel_size_nm: float | None = None,
                  seconds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per method: PSNR (dB), SSIM, NRMSE (DESIGN §4), FRC resolution vs ``gt``."""
    rows = []
    for method, img in results.items():
        sc = care_scores(img, gt)
        frc = frc_resolution(img, gt, pixel_size_nm=pixel_size_nm)
        rows.append({"method": METHOD_LABELS.get(method, method), "psnr_db": sc["psnr"],
                     "ssim": sc["ssim"], "nrmse": sc["nrmse"], "frc_px": frc.resolution_px,
                     "frc_nm": frc.resolution_nm,
                     "seconds": (seconds or {}).get(method)})
    return rows


def write_csv(rows: list[dict[str, Any]], path) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(METRIC_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else
                            (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k]))
                        for k in METRIC_COLUMNS})


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
    by_label = {r["method"]: r for r in rows or []}
    for ax, (label, img) in zip(axes[0], images.items()):
        lo, hi = np.percentile(img, [0.5, 99.8])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row = by_label.get(label)
        sub = f"\n{row['psnr_db']:.2f} dB · SSIM {row['ssim']:.3f}" if row else ""
        ax.set_title(label + sub, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
