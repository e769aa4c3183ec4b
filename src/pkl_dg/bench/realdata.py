"""``pkl-dg bench quality --section real``: the real-data dev set, given as a user would.

Every input goes to :func:`pkl_dg.restore` as it is (no calibration, no rescaling by hand):
the default settings estimate the photon calibration from the image. Inputs (all from the
public test data folder ``shared/realdata``; see each folder's SOURCE.md):

* ``biosr``: the BioSR F-actin widefield image (``raw_noise_9``, float64, mean 100: not
  photon counts) against its SIM image, with a Gaussian PSF of σ = 2 px (too wide: the
  usual case) and of the least-squares fitted σ;
* ``bars`` and ``celegans``: the flowdec hollow-bars phantom ((z, y) slice at x = 32,
  enlarged ×4) and a 256² crop of the sdeconv C. elegans image as objects, blurred with a
  Gaussian PSF (σ = 2 px), 2 photons/pixel background, Poisson noise at 20 photons peak;
  each once as camera counts (uint16 with a 100 ADU offset, gain 1 e⁻/ADU) and once
  normalised to [0, 1] float32 (what many files hold);
* ``w2s``: the 12 W2S pairs (one noisy 8-bit widefield frame against the 400-frame average),
  a denoising task: PSF = one pixel.

Methods: the input, Richardson–Lucy with its automatic iteration count (the default),
RL at 30 iterations, the RL best-iteration oracle (cap 300) and default PKL. Scores by
:func:`pkl_dg.metrics.care_scores` (DESIGN §4); times are wall seconds of ``restore``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pkl_dg.bench.protocol import rl_oracle
from pkl_dg.bench.simulate import simulate_measurement
from pkl_dg.metrics import care_scores
from pkl_dg.physics import gaussian_psf

REAL_METHODS = ("input", "rl_auto", "rl30", "rl_best", "pkl")
REAL_LABELS = {"input": "input", "rl_auto": "RL, automatic count (default)",
               "rl30": "RL 30 iterations", "rl_best": "RL best iteration (oracle)",
               "pkl": "PKL (default)"}
SIM_SIGMA, SIM_BACKGROUND, SIM_PEAK, SIM_OFFSET = 2.0, 2.0, 20.0, 100.0
RL_ORACLE_CAP = 300


def _read(root: Path, rel: str) -> np.ndarray:
    import tifffile

    p = root / rel
    if not p.is_file():
        raise FileNotFoundError(f"benchmark data {p} is missing (shared/realdata; see its "
                                "SOURCE.md files); pass --realdata DIR or set PKL_DG_REALDATA")
    return tifffile.imread(p)


def dev_inputs(root: Path, smoke: bool = False) -> list[dict]:
    """The dev set: dicts with name, group, image (as a user's file holds it), gt, psf."""
    from pkl_dg.bench.quality import BARS, BIOSR_GT, BIOSR_RAW, CELEGANS, _top_crops
    from pkl_dg.bench.quality import fit_gaussian_sigma

    out = []
    raw = np.asarray(_read(root, BIOSR_RAW), dtype=np.float64)
    gt = np.asarray(_read(root, BIOSR_GT), dtype=np.float64)
    if smoke:
        raw, gt = raw[200:264, 200:264], gt[200:264, 200:264]
    fit = fit_gaussian_sigma(raw, gt)
    for label, sigma in (("σ 2", 2.0), (f"σ fitted {fit['sigma_px']:.2f}", fit["sigma_px"])):
        out.append({"name": f"BioSR F-actin, {label}", "group": "biosr", "image": raw,
                    "gt": gt, "psf": gaussian_psf(sigma)})
    bars = np.asarray(_read(root, BARS), dtype=np.float64)
    objects = {"bars": np.kron(bars[:, :, 32], np.ones((4, 4)))}
    ce = np.asarray(_read(root, CELEGANS), dtype=np.float64)[3:-3, 3:-3]
    (y, x), = _top_crops(ce, 256, 1)
    objects["celegans"] = ce[y:y + 256, x:x + 256]
    for k, (name, obj) in enumerate(objects.items()):
        if smoke:  # a central 64² crop
            r0, c0 = (obj.shape[0] - 64) // 2, (obj.shape[1] - 64) // 2
            obj = obj[r0:r0 + 64, c0:c0 + 64]
        obj = obj - obj.min()
        obj = obj / obj.max()
        psf = gaussian_psf(SIM_SIGMA)
        counts = simulate_measurement(obj, psf, background=SIM_BACKGROUND, peak=SIM_PEAK,
                                      seed=11 + k)
        adu = np.clip(counts + SIM_OFFSET, 0, 65535).astype(np.uint16)
        norm = ((counts - counts.min()) / (counts.max() - counts.min())).astype(np.float32)
        out.append({"name": f"{name}, uint16 ADU", "group": name, "image": adu, "gt": obj,
                    "psf": psf})
        out.append({"name": f"{name}, normalised float", "group": name, "image": norm,
                    "gt": obj, "psf": psf})
    names = sorted(p.stem for p in (root / "w2s" / "noisy").glob("*.tif"))
    if not names:
        raise FileNotFoundError(f"no W2S pairs in {root / 'w2s' / 'noisy'}")
    for nm in names[:1] if smoke else names:
        noisy = _read(root, f"w2s/noisy/{nm}.tif")
        clean = np.asarray(_read(root, f"w2s/clean/{nm}.tif"), dtype=np.float64)
        if smoke:
            noisy, clean = noisy[:64, :64], clean[:64, :64]
        out.append({"name": f"W2S {nm}", "group": "w2s", "image": noisy, "gt": clean,
                    "psf": np.ones((1, 1), np.float32)})
    return out


def run_realdata(root: Path, denoiser=None, smoke: bool = False, log=print) -> dict:
    """Score every method on every dev input; return records and per-group means."""
    from pkl_dg.restoration import restore_iter

    records = []
    steps = {"steps": 2, "samples": 1} if smoke else {}
    for item in dev_inputs(root, smoke):
        img, gt, psf = item["image"], item["gt"], item["psf"]
        row = {"name": item["name"], "group": item["group"]}
        for m in REAL_METHODS:
            t0 = time.perf_counter()
            extra: dict = {}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if m == "input":
                    pred = np.asarray(img, dtype=np.float32)
                elif m == "rl_best":
                    # RL as restore runs it (calibration and background estimated)
                    best = rl_oracle((rec.image for rec in restore_iter(
                        img, psf=psf, method="rl", threads=torch.get_num_threads(),
                        rl_iterations=5 if smoke else RL_ORACLE_CAP)), gt)
                    pred, extra["iterations"] = best.image, best.iteration
                else:
                    kw = {"method": "rl"} if m == "rl_auto" else \
                        {"method": "rl", "rl_iterations": 30} if m == "rl30" else \
                        {"method": "pkl", "denoiser": denoiser, **steps}
                    res = restore_iter(img, psf=psf, threads=torch.get_num_threads(),
                                       **kw).finish()
                    pred = res.image
                    for key in ("rl_auto_iterations", "sub_iterations"):
                        if key in res.metadata:
                            extra[key] = res.metadata[key]
                    if m == "rl_auto":
                        row["calibration"] = res.metadata["calibration"]
            secs = time.perf_counter() - t0
            s = care_scores(pred, gt)
            row[m] = {"psnr": s["psnr"], "ssim": s["ssim"], "time_s": secs, **extra,
                      "warnings": sorted({str(w.message)[:120] for w in caught})}
        records.append(row)
        log(f"{item['name']:28s} " + ", ".join(f"{m} {row[m]['psnr']:.2f}"
                                                for m in REAL_METHODS))
    return {"records": records, "methods": list(REAL_METHODS), "labels": REAL_LABELS,
            "means": group_means(records)}


def group_means(records: list[dict]) -> dict:
    """Mean PSNR/SSIM/time per group ('all' over every non-W2S input, and 'w2s')."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        top = "w2s" if r["group"] == "w2s" else "deconvolution"
        groups.setdefault(top, []).append(r)
        if r["group"] != top:
            groups.setdefault(r["group"], []).append(r)
    out = {}
    for g, rows in groups.items():
        out[g] = {m: {k: float(np.mean([r[m][k] for r in rows]))
                      for k in ("psnr", "ssim", "time_s")} for m in REAL_METHODS}
        out[g]["count"] = len(rows)
    return out


def realdata_section(real: dict) -> list[str]:
    """Markdown lines for BENCHMARKS.md."""
    methods, labels = real["methods"], real["labels"]
    L = ["## Real data, given as a user would", "",
         "Every file goes to `restore` as it is: no calibration given (the default estimates "
         "gain, offset and read noise from the image), default settings, the PSF stated. "
         "PSNR (dB) / SSIM by the CARE protocol; time per image in seconds. See "
         "`pkl_dg/bench/realdata.py` for the inputs.", "",
         "| image | " + " | ".join(labels[m] for m in methods) + " | PKL time (s) |",
         "|---|" + "---|" * (len(methods) + 1)]
    for r in real["records"]:
        L.append(f"| {r['name']} | " + " | ".join(
            f"{r[m]['psnr']:.2f} / {r[m]['ssim']:.3f}"
            + (f" ({r[m]['iterations']} it.)" if "iterations" in r[m] else "")
            + (f" ({r[m]['rl_auto_iterations']} it.)" if m == "rl_auto"
               and "rl_auto_iterations" in r[m] else "")
            for m in methods) + f" | {r['pkl']['time_s']:.1f} |")
    L += ["", "Means:", "", "| group | n | " + " | ".join(labels[m] for m in methods) + " |",
          "|---|---|" + "---|" * len(methods)]
    for g, row in group_means(real["records"]).items():
        L.append(f"| {g} | {row['count']} | " + " | ".join(
            f"{row[m]['psnr']:.2f} / {row[m]['ssim']:.3f}" for m in methods) + " |")
    if "settings_grid" in real:
        from pkl_dg.bench.settings_grid import settings_grid_section

        L += [""] + settings_grid_section(real["settings_grid"])
    return L + [""]


def run_realdata_bench(realdata: str | None = None, smoke: bool = False,
                       model: str | None = None, log=print) -> dict:
    """The real-data section as a JSON-ready result (kind 'realdata')."""
    from pkl_dg.bench.common import machine_info, now_iso, quality_denoiser
    from pkl_dg.bench.quality import default_realdata

    t0 = time.perf_counter()
    machine = machine_info()
    root = Path(realdata) if realdata else default_realdata()
    res = run_realdata(root, denoiser=quality_denoiser(smoke, model), smoke=smoke, log=log)
    import os

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"kind": "realdata", "format_version": 1, "smoke": smoke, "created": now_iso(),
            "machine": machine, "realdata": str(root), "model": model or "shipped prior",
            **res, "wall_s": time.perf_counter() - t0}
