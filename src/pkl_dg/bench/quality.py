"""``pkl-dg bench quality``: every method against ground truth, synthetic and real.

Synthetic cases use objects that our training generator did NOT make (all from the public
test data folder ``shared/realdata``; see each folder's SOURCE.md):

* ``biosr``: 128×128 crops of the BioSR F-actin SIM image (``kld-biosr``), the crops of a
  3×3 grid with the highest standard deviation;
* ``bars``: the flowdec hollow-bars phantom (``flowdec/bars-25pct/actual.tif``), its
  (z, y) slice at x = 32 enlarged ×4 by pixel replication (the 25 % volume is too thin
  for a 2D object otherwise; its z-slices hold a single line), cropped to 128×128;
* ``celegans``: the sdeconv C. elegans Airyscan image, the 128×128 crop of highest
  standard deviation (a real image used as an object: it carries its own blur and noise).

Each object is scaled to a peak of P photons, blurred with a Gaussian PSF (σ = 2 px) or a
widefield Airy PSF (NA 1.2, λ 520 nm, 45 nm pixels: Gaussian-equivalent σ ≈ 2 px), a
background of 2 photons/pixel is added and Poisson noise drawn, for P in the photon
levels and each noise seed. All methods get the true PSF and background.

Real case: the BioSR widefield (``raw_noise_9``) → SIM (``gt_sf_1``) pair, 502×502. The
Gaussian σ is fitted by least squares (raw ≈ a·G_σ∗gt + b) and reported; the data are
taken as photons (the files are scaled to mean 100) and the background is estimated by
the default rule (1st percentile of the smoothed data).

Methods: ``widefield`` (the input), ``rl_best`` (Richardson–Lucy at the iteration with the
best PSNR, up to a cap: an oracle), ``rl30`` (30 iterations), and guided diffusion with
``l2``, ``anscombe``, ``pkl`` guidance and the unguided prior ``none``, all at the default
settings (25 DDIM steps, Poisson step rule, 10 sub-iterations). Metrics: PSNR and SSIM by
:func:`pkl_dg.metrics.care_scores` (DESIGN §4), FRC resolution against the ground truth
(1/7 threshold, pixels), and wall time of the method.

Size of a run: the full run is 4 objects (2 BioSR crops, bars, C. elegans) × 2 PSFs × 4
photon levels × 3 seeds = 96 synthetic cases plus the real pair (2 diffusion seeds);
all 7 methods took ≈ 10 s per 128² case on the 2-core development CPU with 1 torch thread,
so ≈ 20 min in all, within the 40 min budget. ``--reduced`` keeps 1 BioSR crop and 1
seed (24 cases, ≈ 5 min); ``--smoke`` is one 48² crop per object at 100 photons.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from pkl_dg.bench.common import SMOKE_UNET, machine_info, now_iso
from pkl_dg.bench.protocol import rl_iterates, rl_oracle, score
from pkl_dg.bench.simulate import simulate_measurement
from pkl_dg.physics import PSFConvolution, airy_psf, gaussian_psf, prepare_psf
from pkl_dg.restoration import restore
from pkl_dg.settings import PRIOR_METHODS

METHODS = ("widefield", "rl_best", "rl30", "l2", "anscombe", "pkl", "none")
METHOD_LABELS = {"widefield": "widefield input", "rl_best": "RL best iteration (oracle)",
                 "rl30": "RL 30 iterations", "l2": "L2", "anscombe": "Anscombe + L2",
                 "pkl": "PKL", "none": "unguided prior"}
BACKGROUND = 2.0
GAUSS_SIGMA = 2.0
AIRY = {"na": 1.2, "wavelength_nm": 520.0, "pixel_size_nm": 45.0}
CROP = 128
RL_CAP = 300
BIOSR_GT = "kld-biosr/BioSR/F-actin_Nonlinear/gt_sf_1/1.tif"
BIOSR_RAW = "kld-biosr/BioSR/F-actin_Nonlinear/raw_noise_9/1.tif"
BARS = "flowdec/bars-25pct/actual.tif"
CELEGANS = "sdeconv/celegans.tif"

FULL = {"photons": [10, 30, 100, 1000], "seeds": 3, "biosr_crops": 2, "crop": CROP,
        "rl_cap": RL_CAP, "steps": None, "real_seeds": 2}
REDUCED = {"photons": [10, 30, 100, 1000], "seeds": 1, "biosr_crops": 1, "crop": CROP,
           "rl_cap": RL_CAP, "steps": None, "real_seeds": 1}
SMOKE = {"photons": [100], "seeds": 1, "biosr_crops": 1, "crop": 48, "rl_cap": 5,
         "steps": 2, "real_seeds": 1, "real_crop": 64}


def default_realdata() -> Path:
    """``shared/realdata`` beside the checkout (or ``$PKL_DG_REALDATA``)."""
    env = os.environ.get("PKL_DG_REALDATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "realdata"


def _read(root: Path, rel: str) -> np.ndarray:
    import tifffile

    p = root / rel
    if not p.is_file():
        raise FileNotFoundError(
            f"benchmark data {p} is missing: the quality benchmark reads the public test data "
            f"folder shared/realdata (kld-biosr, flowdec, sdeconv; see their SOURCE.md) "
            f"expected at {root}; pass --realdata DIR or set PKL_DG_REALDATA")
    return np.asarray(tifffile.imread(p), dtype=np.float64)


def _top_crops(img: np.ndarray, size: int, k: int) -> list[tuple[int, int]]:
    """Top-left corners of the k crops of a 3×3 grid with the highest std."""
    h, w = img.shape
    if h < size or w < size:
        raise ValueError(f"image {img.shape} is smaller than the crop {size}")
    ys = np.linspace(0, h - size, 3).astype(int)
    xs = np.linspace(0, w - size, 3).astype(int)
    cands = [(float(img[y:y + size, x:x + size].std()), int(y), int(x)) for y in ys for x in xs]
    cands.sort(key=lambda c: -c[0])
    return [(y, x) for _, y, x in cands[:k]]


def load_objects(root: Path, cfg: dict) -> list[dict]:
    """The synthetic ground-truth objects, each scaled to [0, 1] (max 1)."""
    size = cfg["crop"]
    out = []
    gt = _read(root, BIOSR_GT)
    for y, x in _top_crops(gt, size, cfg["biosr_crops"]):
        out.append({"source": "biosr", "name": f"BioSR F-actin SIM crop y{y} x{x}",
                    "image": gt[y:y + size, x:x + size]})
    bars = _read(root, BARS)
    if bars.ndim != 3 or bars.shape[2] <= 32:
        raise ValueError(f"{root / BARS} has shape {bars.shape}; expected (32, 64, 64)")
    sl = np.kron(bars[:, :, 32], np.ones((4, 4)))  # (128, 256)
    c0 = max(0, sl.shape[1] // 2 - size // 2)
    r0 = max(0, sl.shape[0] // 2 - size // 2)
    out.append({"source": "bars", "name": "flowdec hollow bars, (z,y) slice x=32, ×4",
                "image": sl[r0:r0 + size, c0:c0 + size]})
    ce = _read(root, CELEGANS)[3:-3, 3:-3]
    (y, x), = _top_crops(ce, size, 1)
    out.append({"source": "celegans", "name": f"sdeconv C. elegans crop y{y} x{x}",
                "image": ce[y:y + size, x:x + size]})
    for o in out:
        img = o["image"] - o["image"].min()
        if img.max() <= 0:
            raise ValueError(f"object {o['name']} is empty")
        o["image"] = (img / img.max()).astype(np.float32)
    return out


def psfs() -> dict[str, np.ndarray]:
    return {"gaussian": gaussian_psf(GAUSS_SIGMA),
            "airy": airy_psf(AIRY["na"], AIRY["wavelength_nm"], AIRY["pixel_size_nm"])}


def run_methods(y: np.ndarray, gt: np.ndarray, psf: np.ndarray, background: float,
                methods: list[str], seed: int, denoiser, cfg: dict,
                run_deterministic: bool = True) -> list[dict]:
    """Score every method on one measurement; returns one record per method."""
    recs = []
    # synthetic cases are photon counts with their true background (calibration 'manual');
    # the real pair is given as a user would (background −1: calibration estimated too)
    common = {"psf": psf, "background": background, "device": "cpu", "seed": seed,
              "calibration": "manual" if background >= 0 else "auto",
              "threads": torch.get_num_threads()}  # the benchmark's --threads
    if cfg["steps"]:
        common["steps"] = cfg["steps"]
    for m in methods:
        extra: dict = {}
        if m in PRIOR_METHODS or run_deterministic:
            t0 = time.perf_counter()
            if m == "widefield":
                pred = y
            elif m == "rl_best":
                bg = background if background >= 0 else _auto_background(y, psf)
                best = rl_oracle(rl_iterates(y, psf, bg, cfg["rl_cap"]), gt)
                pred, secs = best.image, best.seconds
                extra = {"best_iteration": best.iteration, "iteration_cap": cfg["rl_cap"]}
            elif m == "rl30":
                pred = restore(y, method="rl", rl_iterations=30, **common)
            else:
                pred = restore(y, method=m, denoiser=denoiser, **common)
            secs_m = time.perf_counter() - t0
            if m == "rl_best":
                secs_m = secs
            recs.append({"method": m, **score(pred, gt), "time_s": secs_m, **extra})
    return recs


def _auto_background(y: np.ndarray, psf: np.ndarray) -> float:
    from pkl_dg.restoration import estimate_background

    return estimate_background(torch.from_numpy(y), PSFConvolution(prepare_psf(psf)))


def fit_gaussian_sigma(raw: np.ndarray, gt: np.ndarray) -> dict:
    """σ (px) minimising ‖a·G_σ∗gt + b − raw‖² (a, b by least squares at each σ)."""
    from scipy.optimize import minimize_scalar

    gtt = torch.from_numpy(gt.astype(np.float32))

    def sse(sigma: float) -> tuple[float, float, float, float]:
        with torch.inference_mode():
            blur = PSFConvolution(gaussian_psf(sigma)).A(gtt).numpy().astype(np.float64)
        design = np.stack([blur.ravel(), np.ones(blur.size)], axis=1)
        (a, b), res, *_ = np.linalg.lstsq(design, raw.ravel(), rcond=None)
        r = raw.ravel() - design @ np.array([a, b])
        corr = float(np.corrcoef(blur.ravel(), raw.ravel())[0, 1])
        return float(r @ r), float(a), float(b), corr

    opt = minimize_scalar(lambda s: sse(s)[0], bounds=(0.5, 5.0), method="bounded",
                          options={"xatol": 1e-3})
    err, a, b, corr = sse(float(opt.x))
    return {"sigma_px": float(opt.x), "scale": a, "offset": b, "pearson_r": corr,
            "rms_residual": float(np.sqrt(err / raw.size))}


def _diffusion_settings(cfg: dict) -> str:
    from pkl_dg.settings import RestoreSettings

    d = RestoreSettings()
    steps = cfg["steps"] or d.steps
    samples = getattr(d, "samples", 1)
    return (f"RestoreSettings defaults: {steps} DDIM steps, {samples} posterior sample(s) "
            f"averaged, η = {d.eta}, step rule "
            f"{d.step_rule}, λ = {d.lam}, "
            + (f"{d.sub_iterations} sub-iterations" if d.sub_iterations else
               "sub-iterations automatic from brightness (sub_iterations = 0)")
            + f", T_thr = "
            f"{d.t_threshold} ({d.ramp} ramp), precision {d.precision}, seed = noise seed")


def load_denoiser(methods: list[str], smoke: bool, model: str | None, explicit: bool,
                  log) -> tuple[object | None, dict, dict[str, str]]:
    """The prior for the diffusion methods, its description, and skipped methods."""
    from pkl_dg.diffusion.model_io import describe, load_model
    from pkl_dg.diffusion.unet import UNet

    wanted = [m for m in methods if m in PRIOR_METHODS]
    if not wanted:
        return None, {"source": "not used"}, {}
    if smoke:
        torch.manual_seed(0)
        net = UNet(SMOKE_UNET).eval()
        return net, {"source": "smoke: tiny random UNet (diffusion scores are meaningless)"}, {}
    try:
        net, meta = load_model(model or None)
    except FileNotFoundError as exc:
        if explicit:
            raise
        reason = (f"not run: no trained prior available ({exc}); the diffusion rows "
                  "await the shipped prior")
        log(f"diffusion methods {', '.join(wanted)} skipped: {reason}")
        return None, {"source": "missing", "error": str(exc)}, {m: reason for m in wanted}
    return net, {"source": model or "shipped prior (pkl_dg/weights)", "name": meta.get("name"),
                 "description": describe(meta), "training": meta.get("training", {}),
                 "config": meta["architecture"]["config"]}, {}


def run_quality(realdata: str | None = None, smoke: bool = False, photons: list[int] | None = None,
                seeds: int | None = None, methods: list[str] | None = None,
                model: str | None = None, reduced: bool = False, log=print) -> dict:
    """Run the quality benchmark; return its JSON-ready result."""
    t_start = time.perf_counter()
    machine = machine_info()
    cfg = dict(SMOKE if smoke else REDUCED if reduced else FULL)
    if photons:
        cfg["photons"] = photons
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds must be ≥ 1, got {seeds}")
        cfg["seeds"] = seeds
        cfg["real_seeds"] = min(cfg["real_seeds"], seeds)
    explicit = methods is not None
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    root = Path(realdata) if realdata else default_realdata()
    if not root.is_dir():
        raise FileNotFoundError(
            f"real test data folder {root} not found: the quality benchmark needs the public "
            "test data (shared/realdata with kld-biosr, flowdec, sdeconv) beside the "
            "checkout; pass --realdata DIR or set PKL_DG_REALDATA")
    objects = load_objects(root, cfg)
    raw = _read(root, BIOSR_RAW)
    gt_real = _read(root, BIOSR_GT)
    denoiser, model_desc, skipped = load_denoiser(methods, smoke, model, explicit, log)
    run_list = [m for m in methods if m not in skipped]
    kernels = psfs()
    records = []
    for obj in objects:
        for pname, psf in kernels.items():
            for P in cfg["photons"]:
                for seed in range(cfg["seeds"]):
                    y = simulate_measurement(obj["image"], psf, background=BACKGROUND,
                                             peak=P, seed=seed * 7919 + int(P))
                    gt = obj["image"]
                    for r in run_methods(y, gt, psf, BACKGROUND, run_list, seed, denoiser, cfg):
                        records.append({"case": "synthetic", "source": obj["source"],
                                        "object": obj["name"], "psf": pname, "photons": P,
                                        "seed": seed, **r})
                log(f"{obj['source']:9s} {pname:8s} {P:5d} photons: " + ", ".join(
                    f"{r['method']} {r['psnr']:.2f}" for r in records[-len(run_list):]))
    # real pair
    if smoke:
        c = SMOKE["real_crop"]
        y0 = (raw.shape[0] - c) // 2
        raw, gt_real = raw[y0:y0 + c, y0:y0 + c], gt_real[y0:y0 + c, y0:y0 + c]
    fit = fit_gaussian_sigma(raw, gt_real)
    log(f"BioSR pair: fitted Gaussian σ = {fit['sigma_px']:.3f} px (r = {fit['pearson_r']:.4f})")
    psf_real = gaussian_psf(fit["sigma_px"])
    raw32 = raw.astype(np.float32)
    for seed in range(cfg["real_seeds"]):
        for r in run_methods(raw32, gt_real, psf_real, -1.0, run_list, seed, denoiser, cfg,
                             run_deterministic=(seed == 0)):
            records.append({"case": "real", "source": "biosr-pair",
                            "object": "BioSR F-actin widefield→SIM pair"
                                      + (f" (central {raw.shape[0]}² crop)" if smoke else ""),
                            "psf": "gaussian-fit", "photons": None, "seed": seed, **r})
    log("BioSR pair: " + ", ".join(f"{r['method']} {r['psnr']:.2f}" for r in records
                                   if r["case"] == "real"))
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "kind": "quality", "format_version": 1, "smoke": smoke, "reduced": reduced,
        "created": now_iso(), "machine": machine, "realdata": str(root),
        "config": {**cfg, "background_photons": BACKGROUND, "gaussian_sigma_px": GAUSS_SIGMA,
                   "airy": AIRY, "airy_psf_shape": list(kernels["airy"].shape),
                   "photons_definition": "object maximum in photons before blur",
                   "methods": methods,
                   "diffusion_settings": _diffusion_settings(cfg)},
        "objects": [{"source": o["source"], "name": o["name"], "shape": list(o["image"].shape)}
                    for o in objects],
        "real_fit": fit, "model": model_desc, "skipped_methods": skipped,
        "method_labels": METHOD_LABELS, "records": records,
        "wall_s": time.perf_counter() - t_start,
    }
