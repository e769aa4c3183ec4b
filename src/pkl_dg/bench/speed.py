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
  step median instead, and marked so);
* peak resident memory of a restoration in a fresh subprocess (``ru_maxrss``; torch
  allocations are invisible to ``tracemalloc``), and its baseline after loading.

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


def restore_timing(net: torch.nn.Module, y: np.ndarray, steps: int, repeats: int,
                   full: bool) -> dict:
    """First-frame, per-step and end-to-end times of restore_iter (default settings)."""
    settings = RestoreSettings(steps=steps, background=BACKGROUND, psf_sigma=PSF_SIGMA,
                               device="cpu")
    timed = TimedNetwork(net)
    firsts, step_ms, net_ms, totals = [], [], [], []
    frames = steps if full else min(steps, 4)
    for _ in range(repeats if full else 1):
        gen = restore_iter(y, settings, denoiser=timed)
        t0 = time.perf_counter()
        prev = t0
        for i in range(frames):
            timed.seconds = 0.0
            next(gen)
            now = time.perf_counter()
            if i == 0:
                firsts.append(now - t0)
            else:
                step_ms.append((now - prev) * 1e3)
                net_ms.append(timed.seconds * 1e3)
            prev = now
        if full:
            try:
                next(gen)
            except StopIteration:
                pass
            else:
                raise RuntimeError("restore_iter yielded more frames than steps")
            totals.append(time.perf_counter() - t0)
        gen.close()
    step = float(np.median(step_ms)) if step_ms else float("nan")
    netm = float(np.median(net_ms)) if net_ms else float("nan")
    first = float(np.median(firsts))
    out = {"settings": {"method": settings.method, "steps": steps,
                        "sub_iterations": settings.sub_iterations,
                        "step_rule": settings.step_rule, "precision": settings.precision},
           "first_frame_s": first, "guided_step_ms": step, "guided_step_network_ms": netm,
           "guided_step_non_network_share": 1.0 - netm / step if step_ms else None,
           "steps_timed": len(step_ms)}
    if full:
        out["end_to_end_s"] = float(np.median(totals))
        out["end_to_end_repeats"] = len(totals)
        out["end_to_end_estimated"] = False
    else:
        out["end_to_end_s"] = first + (steps - 1) * step / 1e3
        out["end_to_end_repeats"] = 0
        out["end_to_end_estimated"] = True
    return out


def peak_memory(n: int, smoke: bool, model: str | None, frames: int = 2) -> dict:
    """Run a short restoration of an n×n image in a fresh interpreter; report ru_maxrss."""
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


def _memory_worker(n: int, frames: int, smoke: bool, model: str | None) -> dict:
    import resource

    net, _ = benchmark_network(smoke, model)
    _, y = test_image(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = RestoreSettings(background=BACKGROUND, psf_sigma=PSF_SIGMA, device="cpu")
    gen = restore_iter(y, settings, denoiser=net)
    for _ in range(frames):
        next(gen)
    gen.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": peak, "baseline_rss_mb": base, "frames": frames,
            "note": "ru_maxrss of a fresh process; baseline = after imports, network and image"}


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
        row["restore"] = restore_timing(net, y, steps, repeats, full)
        if not full:
            row["restore"]["end_to_end_note"] = (
                f"end-to-end not run above {e2e_max}² on this CPU (it would take several "
                "minutes per repeat); estimated as first frame + (steps − 1) × median step")
        log(f"  first frame {row['restore']['first_frame_s']:.2f} s, step "
            f"{row['restore']['guided_step_ms']:.0f} ms, end-to-end "
            f"{row['restore']['end_to_end_s']:.1f} s"
            f"{' (estimated)' if row['restore']['end_to_end_estimated'] else ''}")
        row["memory"] = peak_memory(n, smoke, model)
        log(f"  peak RSS {row['memory']['peak_rss_mb']:.0f} MB")
        rows.append(row)
    import os

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "kind": "speed", "format_version": 1, "smoke": smoke, "created": now_iso(),
        "machine": machine, "network": net_desc,
        "default_network_precision": str(default_cast or torch.float32),
        "repeats": repeats, "sizes": rows, "matmul": matmul,
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
