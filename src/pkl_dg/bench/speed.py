"""``pkl-dg bench speed``: where the time of a restoration goes, per image size.

Per size (square images, Gaussian PSF σ = 2 px, ≈100 photons peak, background 2):

* network forward ms in fp32 and bf16 (autocast), its FLOPs (``FlopCounterMode``), the
  GFLOP/s it achieves and that as a fraction of this machine's measured matmul GFLOP/s;
* one guided step (default settings: PKL, Poisson step, 10 sub-iterations, default
  precision) and the share of it not spent in the network (a timing wrapper around the
  network inside the same runs);
* forward model A then Aᵀ with a cold OTF cache (a new operator each time) and a warm one;
* one Richardson–Lucy iteration, ours (torch, float32) against
  ``skimage.restoration.richardson_lucy`` on the same image, PSF and iteration count,
  interleaved in the same process; the ratio is skimage / ours;
* time to the first streamed frame of :func:`~pkl_dg.restoration.restore_iter` (model
  already loaded, new operator: cold OTF), end-to-end restore seconds at the default
  number of steps (sizes above ``--e2e-max`` are estimated from the first frame and the
  step median of the peak-memory process's 3 frames instead, and marked so);
* peak resident memory of a restoration in a fresh subprocess (``VmHWM`` after a reset of
  the high-water mark; torch allocations are invisible to ``tracemalloc``), and its baseline
  after loading;
* the quality cost of running the network in bf16: PKL restorations of procedural phantoms
  with the network in fp32 and in bf16, same seed, PSNR/SSIM of each.

All figures are medians over ``--repeats`` runs. The network timings are in
:mod:`pkl_dg.bench.network`, the restore timing and peak memory in
:mod:`pkl_dg.bench.speed_restore`, the Richardson–Lucy tables (``rl`` part) in
:mod:`pkl_dg.bench.speed_rl`; the test image is :func:`pkl_dg.bench.simulate.test_image`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from pkl_dg.bench.common import benchmark_network, machine_info, median_ms, now_iso
from pkl_dg.bench.network import matmul_gflops, network_timing
from pkl_dg.bench.simulate import TEST_BACKGROUND as BACKGROUND
from pkl_dg.bench.simulate import TEST_BLOB_SIGMA
from pkl_dg.bench.simulate import TEST_PEAK_PHOTONS as PEAK_PHOTONS
from pkl_dg.bench.simulate import TEST_PSF_SIGMA as PSF_SIGMA
from pkl_dg.bench.simulate import simulate_measurement, test_image
from pkl_dg.bench.speed_restore import (peak_memory, real_restore_timing, restore_timing,
                                        restore_timing_from_worker, restore_timing_run_once,
                                        stack_restore)
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.richardson_lucy import richardson_lucy
from pkl_dg.settings import RestoreSettings

RL_ITERATIONS = 10
MATMUL_SIZE = 2048
SMOKE = {"sizes": [32, 48], "repeats": 1, "steps": 3, "rl_iterations": 2, "matmul": 256,
         "e2e_max": 48, "stack": (18, 32)}
#: the 3D row: planes and side of the test stack (:func:`~pkl_dg.bench.simulate.test_stack`)
STACK = (32, 512)


def operator_timing(y: np.ndarray, repeats: int) -> dict:
    """A then Aᵀ on ``y``, with a new operator each time (cold OTF) and with one (warm)."""
    psf = gaussian_psf(PSF_SIGMA)
    x = torch.from_numpy(y)

    def cold():
        op = PSFConvolution(psf)
        op.A_adjoint(op.A(x))

    warm_op = PSFConvolution(psf)
    cold_ms, _ = median_ms(cold, repeats, warmup=1)
    warm_ms, _ = median_ms(lambda: warm_op.A_adjoint(warm_op.A(x)), repeats, warmup=1)
    return {"cold_ms": cold_ms, "warm_ms": warm_ms,
            "warm_cache": {"hits": warm_op.cache.hits, "misses": warm_op.cache.misses}}


def rl_timing(y: np.ndarray, iterations: int, repeats: int) -> dict:
    """Ours vs skimage: same image, PSF and iteration count, alternating in one process."""
    from skimage.restoration import richardson_lucy as sk_rl

    psf = gaussian_psf(PSF_SIGMA)
    fm = ForwardModel(PSFConvolution(psf), BACKGROUND)
    yt = torch.from_numpy(y)
    ours, theirs = [], []

    def run_ours():
        with torch.inference_mode():
            richardson_lucy(yt, fm, iterations)

    def run_sk():
        sk_rl(y, psf, num_iter=iterations, clip=False)

    run_ours()
    run_sk()
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_ours()
        ours.append((time.perf_counter() - t0) * 1e3 / iterations)
        t0 = time.perf_counter()
        run_sk()
        theirs.append((time.perf_counter() - t0) * 1e3 / iterations)
    o, s = float(np.median(ours)), float(np.median(theirs))
    return {"iterations": iterations, "ours_ms": o, "skimage_ms": s, "skimage_over_ours": s / o,
            "note": "per iteration; ours: torch float32, linear convolution with reflect "
                    "padding and background; skimage: scipy.signal.convolve, zero padding"}


def precision_quality(net: torch.nn.Module, smoke: bool) -> dict:
    """PSNR/SSIM of PKL restorations with the network in fp32 and in bf16, same seed.

    Procedural phantoms (seed 555, not a training seed), Gaussian σ = 2 px, background 2,
    peak 30 and 1000 photons; everything else at the defaults. Reports the mean scores, the
    mean bf16 − fp32 difference and the largest pixel difference relative to the peak.
    """
    from pkl_dg import restore
    from pkl_dg.metrics import care_scores
    from pkl_dg.training.phantoms import phantom_batch

    size, n_img, peaks, steps = (32, 1, (30.0,), 3) if smoke else (128, 3, (30.0, 1000.0), None)
    psf = gaussian_psf(PSF_SIGMA)
    rows = []
    for k, gt in enumerate(phantom_batch(seed=555, n=n_img, size=size)):
        for peak in peaks:
            y = simulate_measurement(gt, psf, background=BACKGROUND, peak=peak, seed=555 + k)
            out = {}
            for prec in ("fp32", "bf16"):
                kw = {"steps": steps} if steps else {}
                t0 = time.perf_counter()
                x = restore(y, psf=psf, method="pkl", seed=0, background=BACKGROUND, precision=prec,
                            device="cpu", denoiser=net, threads=torch.get_num_threads(), **kw)
                out[prec] = (x, care_scores(x, gt), time.perf_counter() - t0)
            diff = float(np.abs(out["bf16"][0] - out["fp32"][0]).max() / max(out["fp32"][0].max(), 1e-12))
            rows.append({"image": k, "peak_photons": peak, "max_rel_pixel_diff": diff,
                         **{f"{p}_{m}": out[p][1][m] for p in ("fp32", "bf16") for m in ("psnr", "ssim")},
                         **{f"{p}_s": out[p][2] for p in ("fp32", "bf16")}})
    summary = {}
    for peak in peaks:
        sel = [r for r in rows if r["peak_photons"] == peak]
        summary[str(int(peak))] = {
            key: float(np.mean([r[key] for r in sel]))
            for key in ("fp32_psnr", "bf16_psnr", "fp32_ssim", "bf16_ssim", "fp32_s", "bf16_s",
                        "max_rel_pixel_diff")}
        summary[str(int(peak))]["psnr_diff"] = summary[str(int(peak))]["bf16_psnr"] - summary[str(int(peak))]["fp32_psnr"]
        summary[str(int(peak))]["ssim_diff"] = summary[str(int(peak))]["bf16_ssim"] - summary[str(int(peak))]["fp32_ssim"]
    return {"images": n_img, "size": size, "phantom_seed": 555, "peaks": list(peaks),
            "method": "pkl, default settings" + (f", {steps} steps" if steps else ""),
            "per_case": rows, "by_peak": summary}


def run_speed(sizes: list[int], repeats: int, smoke: bool, model: str | None = None,
              e2e_max: int = 1024, stack: tuple[int, int] | None = STACK,
              realdata: str | None = None, log=print, once_max: int = 0) -> dict:
    """Run the speed benchmark and return its JSON-ready result (sizes up to ``e2e_max``
    restored end to end ``repeats`` times; larger ones up to ``once_max`` once to the end in
    the peak-memory process, whose peak then covers the whole run; larger still estimated
    from that process's first frames; ``stack``: (planes, side)
    of the 3D row, restored once to the end in a fresh process; None leaves it out;
    ``realdata``: the public test data for the real-image rows, default
    :func:`~pkl_dg.bench.quality.default_realdata`; skipped, with the reason, without them
    or in smoke mode)."""
    t_start = time.perf_counter()
    machine = machine_info()
    steps = SMOKE["steps"] if smoke else RestoreSettings().steps
    rl_iters = SMOKE["rl_iterations"] if smoke else RL_ITERATIONS
    if smoke:
        e2e_max = min(e2e_max, SMOKE["e2e_max"])
    net, net_desc = benchmark_network(smoke, model)
    log(f"network: {net_desc['source']} ({net_desc['parameters']} parameters)")
    matmul = matmul_gflops(SMOKE["matmul"] if smoke else MATMUL_SIZE, repeats)
    log(f"matmul: fp32 {matmul['fp32_gflops']:.1f} GFLOP/s, bf16 {matmul['bf16_gflops']:.1f}")
    from pkl_dg.devices import autocast_dtype

    default_cast = autocast_dtype(RestoreSettings().precision, torch.device("cpu"))
    rows = []
    for n in sizes:
        log(f"size {n}×{n} ...")
        _, y = test_image(n)
        row: dict = {"size": n}
        row["network"] = network_timing(net, n, repeats, matmul)
        log(f"  network fp32 {row['network']['ms']['fp32']:.1f} ms, "
            f"bf16 {row['network']['ms']['bf16']:.1f} ms")
        row["forward_adjoint"] = operator_timing(y, repeats)
        row["rl_iteration"] = rl_timing(y, rl_iters, repeats)
        log(f"  RL/iter ours {row['rl_iteration']['ours_ms']:.2f} ms, skimage "
            f"{row['rl_iteration']['skimage_ms']:.2f} ms")
        full, once = n <= e2e_max, e2e_max < n <= once_max
        row["memory"] = peak_memory(n, smoke, model, frames=2 if full else 0 if once else 3)
        log(f"  peak RSS {row['memory']['peak_rss_mb']:.0f} MB")
        row["restore"] = (restore_timing(net, y, steps, repeats) if full
                          else restore_timing_run_once(row["memory"], steps) if once
                          else restore_timing_from_worker(row["memory"], steps, e2e_max))
        log(f"  first frame {row['restore']['first_frame_s']:.2f} s, step "
            f"{row['restore']['guided_step_ms']:.0f} ms, end-to-end "
            f"{row['restore']['end_to_end_s']:.1f} s"
            f"{' (estimated)' if row['restore']['end_to_end_estimated'] else ''}")
        rows.append(row)
    real: dict = {"skipped": "smoke run"}
    if not smoke:
        from pkl_dg.bench.quality import default_realdata

        log("real dev images, default settings ...")
        try:
            real = {"rows": real_restore_timing(
                net, Path(realdata) if realdata else default_realdata(), repeats, log=log)}
        except FileNotFoundError as exc:
            real = {"skipped": f"{type(exc).__name__}: {exc}"}
            log(f"  skipped: {exc}")
    stack_row = None
    if stack:
        z, n = SMOKE["stack"] if smoke else stack
        log(f"3D stack {z}×{n}×{n} (3D mode, to the end) ...")
        stack_row = stack_restore(z, n, smoke, model)
        log(f"  {stack_row['frames_s']:.1f} s end to end, first frame "
            f"{stack_row['first_frame_s']:.2f} s, peak RSS {stack_row['peak_rss_mb']:.0f} MB")
    log("network precision: fp32 vs bf16 restorations ...")
    precision = precision_quality(net, smoke)
    for peak, v in precision["by_peak"].items():
        log(f"  {peak} photons: PSNR fp32 {v['fp32_psnr']:.2f} bf16 {v['bf16_psnr']:.2f} dB, "
            f"max pixel diff {100 * v['max_rel_pixel_diff']:.2f} % of peak")
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "kind": "speed", "format_version": 1, "smoke": smoke, "created": now_iso(),
        "machine": machine, "network": net_desc,
        "default_network_precision": str(default_cast or torch.float32),
        "repeats": repeats, "sizes": rows, "real_images": real, "stack_3d": stack_row, "matmul": matmul,
        "precision_quality": precision,
        "test_image": {"psf": f"gaussian sigma={PSF_SIGMA} px", "peak_photons": PEAK_PHOTONS,
                       "background": BACKGROUND,
                       "blob_sigma_px": TEST_BLOB_SIGMA},
        "end_to_end_max_size": e2e_max, "run_once_max_size": max(once_max, e2e_max),
        "wall_s": time.perf_counter() - t_start,
    }

