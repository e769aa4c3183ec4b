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

All figures are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch

from pkl_dg.bench.common import benchmark_network, machine_info, median_ms, now_iso
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.restoration import restore_iter
from pkl_dg.richardson_lucy import richardson_lucy
from pkl_dg.settings import RestoreSettings

PSF_SIGMA = 2.0
BACKGROUND = 2.0
PEAK_PHOTONS = 100.0
RL_ITERATIONS = 10
MATMUL_SIZE = 2048
SMOKE = {"sizes": [32, 48], "repeats": 1, "steps": 3, "rl_iterations": 2, "matmul": 256,
         "e2e_max": 48}


def test_image(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(object, noisy measurement in photons) of side ``n``: dots, short lines and blobs."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    obj = np.zeros((n, n), dtype=np.float64)
    k = max(4, n * n // 400)
    yy, xx = rng.integers(0, n, size=(2, k))
    obj[yy, xx] = rng.uniform(0.5, 1.0, k)
    obj += ndimage.gaussian_filter(rng.random((n, n)), max(1.0, n / 64)) * 0.5
    obj = (obj / obj.max() * PEAK_PHOTONS).astype(np.float32)
    fm = ForwardModel(PSFConvolution(gaussian_psf(PSF_SIGMA)), BACKGROUND)
    with torch.inference_mode():
        mu = fm.mean(torch.from_numpy(obj))
    y = torch.poisson(mu, generator=torch.Generator().manual_seed(seed + 1)).numpy()
    return obj, y.astype(np.float32)


def matmul_gflops(n: int, repeats: int) -> dict:
    """Measured square-matmul throughput in fp32 and bf16."""
    out = {"size": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        with torch.inference_mode():
            ms, _ = median_ms(lambda: a @ b, max(repeats, 3))
        out[f"{name}_gflops"] = 2 * n ** 3 / (ms / 1e3) / 1e9
    return out


class TimedNetwork(torch.nn.Module):
    """Wraps a denoiser and accumulates the wall time spent in it."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds = 0.0

    def forward(self, x, t):
        t0 = time.perf_counter()
        out = self.net(x, t)
        self.seconds += time.perf_counter() - t0
        return out


def network_timing(net: torch.nn.Module, n: int, repeats: int, matmul: dict) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    out: dict = {"ms": {}, "gflops": {}, "fraction_of_matmul": {}}
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            net(x, t)
        flops = counter.get_total_flops()
        out["flops"] = int(flops)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            def fwd():
                if dtype is None:
                    return net(x, t)
                with torch.autocast("cpu", dtype=dtype):
                    return net(x, t)

            ms, _ = median_ms(fwd, repeats)
            out["ms"][name] = ms
            out["gflops"][name] = flops / (ms / 1e3) / 1e9
            out["fraction_of_matmul"][name] = out["gflops"][name] / matmul[f"{name}_gflops"]
    return out


def operator_timing(y: np.ndarray, repeats: int) -> dict:
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


def restore_timing(net: torch.nn.Module, y: np.ndarray, steps: int, repeats: int) -> dict:
    """First-frame, per-step and end-to-end times of restore_iter (default settings)."""
    settings = RestoreSettings(steps=steps, background=BACKGROUND, psf_sigma=PSF_SIGMA,
                               device="cpu")
    timed = TimedNetwork(net)
    firsts, step_ms, net_ms, totals = [], [], [], []
    for _ in range(repeats):
        gen = restore_iter(y, settings, denoiser=timed)
        t0 = time.perf_counter()
        prev = t0
        for i in range(steps):
            timed.seconds = 0.0
            next(gen)
            now = time.perf_counter()
            if i == 0:
                firsts.append(now - t0)
            else:
                step_ms.append((now - prev) * 1e3)
                net_ms.append(timed.seconds * 1e3)
            prev = now
        try:
            next(gen)
        except StopIteration:
            pass
        else:
            raise RuntimeError("restore_iter yielded more frames than steps")
        totals.append(time.perf_counter() - t0)
    step = float(np.median(step_ms)) if step_ms else float("nan")
    netm = float(np.median(net_ms)) if net_ms else float("nan")
    return {"settings": {"method": settings.method, "steps": steps, "samples": settings.samples,
                         "sub_iterations": settings.sub_iterations,
                         "step_rule": settings.step_rule, "precision": settings.precision},
            "first_frame_s": float(np.median(firsts)), "guided_step_ms": step,
            "guided_step_network_ms": netm,
            "guided_step_non_network_share": 1.0 - netm / step if step_ms else None,
            "steps_timed": len(step_ms),
            "end_to_end_s": float(np.median(totals)), "end_to_end_repeats": len(totals),
            "end_to_end_estimated": False}


def peak_memory(n: int, smoke: bool, model: str | None, frames: int = 2) -> dict:
    """Run the first ``frames`` frames of a restoration of an n×n image in a fresh
    interpreter; report its peak memory and frame times (see :func:`_memory_worker`)."""
    cmd = [sys.executable, "-m", "pkl_dg.bench.speed", "--memory-worker", str(n),
           "--frames", str(frames)]
    if smoke:
        cmd.append("--smoke")
    if model:
        cmd += ["--model", model]
    cmd += ["--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {n}×{n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _memory_worker(n: int, frames: int, smoke: bool, model: str | None) -> dict:
    """Peak resident memory of the restoration alone.

    ``ru_maxrss`` is useless here: Linux carries the parent's high-water mark over ``exec``,
    and building the test image can peak above the restoration. Instead the worker resets
    the high-water mark (``/proc/self/clear_refs``, Linux ≥ 4.0) after loading the network
    and the image, runs the frames, and reads ``VmHWM``.
    """
    import gc

    net, _ = benchmark_network(smoke, model)
    _, y = test_image(n)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError as exc:
        raise RuntimeError("peak memory is measured through /proc/self (Linux only); "
                           f"this system refused it ({exc})") from exc
    base = _proc_status_mb("VmRSS")
    settings = RestoreSettings(background=BACKGROUND, psf_sigma=PSF_SIGMA, device="cpu")
    timed = TimedNetwork(net)
    gen = restore_iter(y, settings, denoiser=timed)
    t0 = prev = time.perf_counter()
    first, step_ms, net_ms = None, [], []
    for i in range(frames):
        timed.seconds = 0.0
        next(gen)
        now = time.perf_counter()
        if i == 0:
            first = now - t0
        else:
            step_ms.append((now - prev) * 1e3)
            net_ms.append(timed.seconds * 1e3)
        prev = now
    seconds = time.perf_counter() - t0
    peak = _proc_status_mb("VmHWM")
    gen.close()
    return {"peak_rss_mb": peak, "baseline_rss_mb": base, "restore_extra_mb": peak - base,
            "frames": frames, "frames_s": seconds, "first_frame_s": first,
            "step_ms": step_ms, "step_network_ms": net_ms,
            "image_mb": y.nbytes / 2**20,
            "note": "VmHWM of a fresh process whose high-water mark was reset after loading the "
                    "network and the image (baseline = VmRSS then); default settings "
                    f"(tile_size {settings.tile_size}, {settings.samples} samples)"}


def restore_timing_from_worker(mem: dict, steps: int, e2e_max: int) -> dict:
    """Restore timing of a size too large to run end to end, from the memory worker's frames."""
    settings = RestoreSettings()
    step = float(np.median(mem["step_ms"])) if mem["step_ms"] else float("nan")
    netm = float(np.median(mem["step_network_ms"])) if mem["step_network_ms"] else float("nan")
    return {"settings": {"method": settings.method, "steps": steps, "samples": settings.samples,
                         "sub_iterations": settings.sub_iterations,
                         "step_rule": settings.step_rule, "precision": settings.precision},
            "first_frame_s": mem["first_frame_s"], "guided_step_ms": step,
            "guided_step_network_ms": netm,
            "guided_step_non_network_share": 1.0 - netm / step if mem["step_ms"] else None,
            "steps_timed": len(mem["step_ms"]),
            "end_to_end_s": mem["first_frame_s"] + (steps - 1) * step / 1e3,
            "end_to_end_repeats": 0, "end_to_end_estimated": True,
            "end_to_end_note": (f"end-to-end not run above {e2e_max}² on this CPU (it would take "
                                "many minutes); estimated as first frame + (steps − 1) × step, "
                                "timed in the peak-memory process")}


def precision_quality(net: torch.nn.Module, smoke: bool) -> dict:
    """PSNR/SSIM of PKL restorations with the network in fp32 and in bf16, same seed.

    Procedural phantoms (seed 555, not a training seed), Gaussian σ = 2 px, background 2,
    peak 30 and 1000 photons; everything else at the defaults. Reports the mean scores, the
    mean bf16 − fp32 difference and the largest pixel difference relative to the peak.
    """
    from pkl_dg import restore
    from pkl_dg.metrics import care_scores
    from pkl_dg.training.phantoms import phantom_batch
    from pkl_dg.training.validate import make_case

    size, n_img, peaks, steps = (32, 1, (30.0,), 3) if smoke else (128, 3, (30.0, 1000.0), None)
    psf = gaussian_psf(PSF_SIGMA)
    rows = []
    for k, gt in enumerate(phantom_batch(seed=555, n=n_img, size=size)):
        for peak in peaks:
            y = make_case(gt, peak, BACKGROUND, psf, seed=555 + k)
            out = {}
            for prec in ("fp32", "bf16"):
                kw = {"steps": steps} if steps else {}
                t0 = time.perf_counter()
                x = restore(y, psf=psf, method="pkl", seed=0, background=BACKGROUND, precision=prec,
                            device="cpu", denoiser=net, **kw)
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
              e2e_max: int = 1024, log=print) -> dict:
    """Run the speed benchmark and return its JSON-ready result."""
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
        full = n <= e2e_max
        row["memory"] = peak_memory(n, smoke, model, frames=2 if full else 3)
        log(f"  peak RSS {row['memory']['peak_rss_mb']:.0f} MB")
        row["restore"] = (restore_timing(net, y, steps, repeats) if full
                          else restore_timing_from_worker(row["memory"], steps, e2e_max))
        log(f"  first frame {row['restore']['first_frame_s']:.2f} s, step "
            f"{row['restore']['guided_step_ms']:.0f} ms, end-to-end "
            f"{row['restore']['end_to_end_s']:.1f} s"
            f"{' (estimated)' if row['restore']['end_to_end_estimated'] else ''}")
        rows.append(row)
    log("network precision: fp32 vs bf16 restorations ...")
    precision = precision_quality(net, smoke)
    for peak, v in precision["by_peak"].items():
        log(f"  {peak} photons: PSNR fp32 {v['fp32_psnr']:.2f} bf16 {v['bf16_psnr']:.2f} dB, "
            f"max pixel diff {100 * v['max_rel_pixel_diff']:.2f} % of peak")
    import os

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "kind": "speed", "format_version": 1, "smoke": smoke, "created": now_iso(),
        "machine": machine, "network": net_desc,
        "default_network_precision": str(default_cast or torch.float32),
        "repeats": repeats, "sizes": rows, "matmul": matmul, "precision_quality": precision,
        "test_image": {"psf": f"gaussian sigma={PSF_SIGMA} px", "peak_photons": PEAK_PHOTONS,
                       "background": BACKGROUND},
        "end_to_end_max_size": e2e_max,
        "wall_s": time.perf_counter() - t_start,
    }


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="internal: peak-memory worker of pkl-dg bench speed")
    p.add_argument("--memory-worker", type=int, required=True)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(_memory_worker(a.memory_worker, a.frames, a.smoke, a.model)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
