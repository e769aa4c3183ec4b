"""Validate a prior: guided diffusion vs best-iteration Richardson–Lucy on procedural phantoms.

Protocol (DESIGN §4): ground truth from :func:`~pkl_dg.training.phantoms.phantom_batch`
with a seed never used in training, measured by
:func:`~pkl_dg.bench.simulate.simulate_measurement` (scaled to a peak of P photons, Gaussian
PSF σ = 2 px, constant background, Poisson noise). Scores: CARE PSNR/SSIM
(:func:`pkl_dg.metrics.care_scores`). RL is reported at its best iteration for PSNR and for
SSIM separately (:func:`~pkl_dg.bench.protocol.rl_oracle`, scored at
:data:`RL_ITERATIONS`).

Run: ``python -m pkl_dg.bench.validate --model DIR --out results.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pkl_dg.bench.protocol import rl_iterates, rl_oracle
from pkl_dg.bench.simulate import simulate_measurement

#: the iterations at which the RL oracle scores (SSIM is costly)
RL_ITERATIONS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 70, 100, 150, 200)


def rl_best(y: np.ndarray, gt: np.ndarray, psf: np.ndarray, background: float) -> dict:
    """RL's best PSNR and best SSIM against ``gt`` and their iterations (an oracle).

    Parameters
    ----------
    y : ndarray
        Measurement in photons.
    gt : ndarray
        Ground truth.
    psf : ndarray
        The PSF.
    background : float
        Background in photons per pixel.

    Returns
    -------
    dict
        ``psnr``, ``ssim``, ``psnr_iter``, ``ssim_iter`` (over :data:`RL_ITERATIONS`).
    """
    best = rl_oracle(rl_iterates(y, psf, background, max(RL_ITERATIONS)), gt,
                     score_at=RL_ITERATIONS, with_ssim=True)
    return {"psnr": best.psnr, "ssim": best.ssim, "psnr_iter": best.iteration,
            "ssim_iter": best.ssim_iteration}


def run(model: str, n_images: int, size: int, peaks: tuple[float, ...], background: float,
        methods: tuple[str, ...], seed: int, steps: int, settings: dict | None = None) -> dict:
    """Score the prior's methods and the RL oracle on phantoms at each peak photon level.

    Parameters
    ----------
    model : str
        Model directory or file ('' for the shipped prior).
    n_images, size : int
        Phantoms per level and their side (pixels).
    peaks : tuple of float
        Peak photon levels.
    background : float
        Background in photons per pixel (given to every method).
    methods : tuple of str
        Restore methods to score.
    seed : int
        Phantom seed (the noise of image k: ``seed`` × 1000 + k).
    steps : int
        Diffusion steps (0: the restore default).
    settings : dict, optional
        Restore setting overrides.

    Returns
    -------
    dict
        Mean [PSNR, SSIM] per level and method (``summary_psnr_ssim``), the per-image
        scores, the protocol and the effective restore settings.
    """
    from pkl_dg import restore
    from pkl_dg.diffusion.model_io import load_model
    from pkl_dg.metrics import care_scores
    from pkl_dg.physics.psf import gaussian_psf
    from pkl_dg.training.phantoms import phantom_batch

    psf = gaussian_psf(2.0)
    denoiser, _ = load_model(model or None)
    gts = phantom_batch(seed=seed, n=n_images, size=size)
    rows: dict[str, dict[str, list]] = {}
    t0 = time.perf_counter()
    for peak in peaks:
        for k, gt in enumerate(gts):
            y = simulate_measurement(gt, psf, background=background, peak=peak,
                                     seed=seed * 1000 + k)
            res = {"input": care_scores(y, gt), "rl_best": rl_best(y, gt, psf, background)}
            for m in methods:
                kw = dict(settings or {}, **({"steps": steps} if steps else {}))
                # photon counts with a known background: no calibration estimate (its
                # offset, the dark level, would take the background in a second time)
                x = restore(y, psf=psf, method=m, seed=0, background=background,
                            denoiser=denoiser, threads=torch.get_num_threads(),
                            **{"calibration": "manual", **kw})
                res[m] = care_scores(x, gt)
            for name, s in res.items():
                r = rows.setdefault(f"{peak:g}", {}).setdefault(name, [])
                r.append([s["psnr"], s["ssim"]])
            print(json.dumps({"peak": peak, "image": k, **{n: [round(s["psnr"], 2), round(s["ssim"], 3)]
                                                          for n, s in res.items()}}), flush=True)
    summary = {p: {n: np.mean(v, axis=0).round(4).tolist() for n, v in d.items()} for p, d in rows.items()}
    return {"summary_psnr_ssim": summary, "per_image": rows, "n_images": n_images, "size": size,
            "background": background, "psf": "gaussian sigma 2 px", "seed": seed, "steps": steps,
            "settings_overrides": settings or {}, "restore_settings": _effective_settings(settings, steps),
            "seconds": round(time.perf_counter() - t0, 1)}


def _effective_settings(settings: dict | None, steps: int) -> dict:
    from pkl_dg.settings import RestoreSettings

    kw = dict(settings or {}, **({"steps": steps} if steps else {}))
    return RestoreSettings().replace(**kw).to_dict() if kw else RestoreSettings().to_dict()


def run_pair(raw_path: str, gt_path: str, sigma: float, model: str, methods: tuple[str, ...],
             steps: int, settings: dict | None = None) -> dict:
    """Score a real widefield/ground-truth pair (e.g. BioSR F-actin) with RL (oracle) and priors.

    The raw image is used as photon counts as stored; the background is estimated by
    :func:`pkl_dg.restoration.restore_iter` and the same value is given to RL.
    """
    import tifffile

    from pkl_dg import restore
    from pkl_dg.diffusion.model_io import load_model
    from pkl_dg.metrics import care_scores
    from pkl_dg.physics.convolution import PSFConvolution
    from pkl_dg.physics.psf import gaussian_psf
    from pkl_dg.restoration import estimate_background

    raw = tifffile.imread(raw_path).astype(np.float32)
    gt = tifffile.imread(gt_path).astype(np.float32)
    psf = gaussian_psf(sigma)
    background = estimate_background(torch.from_numpy(raw), PSFConvolution(psf))
    denoiser, _ = load_model(model or None)
    res = {"input": care_scores(raw, gt), "rl_best": rl_best(raw, gt, psf, background)}
    for m in methods:
        kw = dict(settings or {}, **({"steps": steps} if steps else {}))
        # as a user would: calibration and background estimated from the image
        x = restore(raw, psf=psf, method=m, seed=0, denoiser=denoiser,
                    threads=torch.get_num_threads(), **kw)
        res[m] = care_scores(x, gt)
    return {"scores": res, "background": background, "sigma": sigma, "raw": raw_path, "gt": gt_path,
            "restore_settings": _effective_settings(settings, steps)}


def main(argv: list[str] | None = None) -> int:
    """Command line of the validation (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="", help="model directory or file (default: shipped prior)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--peaks", default="10,30,100,1000")
    p.add_argument("--background", type=float, default=2.0)
    p.add_argument("--methods", default="pkl,l2,anscombe")
    p.add_argument("--seed", type=int, default=987654)
    p.add_argument("--steps", type=int, default=0, help="diffusion steps (0: the restore default)")
    p.add_argument("--out", default="")
    p.add_argument("--pair", nargs=2, metavar=("RAW", "GT"), default=None,
                   help="score a real widefield/ground-truth TIFF pair instead of phantoms")
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian PSF σ for --pair")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="restore setting override, e.g. --set sub_iterations=3 (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared, busy CPU more threads stall)")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    settings = {}
    for item in a.set:
        key, sep, val = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(val)
        except json.JSONDecodeError:
            settings[key] = val
    if a.pair:
        res = run_pair(a.pair[0], a.pair[1], a.sigma, a.model, tuple(a.methods.split(",")), a.steps,
                       settings)
        print(json.dumps(res, indent=1))
        if a.out:
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump(res, f, indent=1)
        return 0
    res = run(a.model, a.n, a.size, tuple(float(v) for v in a.peaks.split(",")), a.background,
              tuple(a.methods.split(",")), a.seed, a.steps, settings)
    for peak, d in res["summary_psnr_ssim"].items():
        print(peak, {k: v for k, v in d.items()})
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
