"""Batch throughput benchmark: images per minute of ``pkl-dg batch`` with 1, 2, … workers.

Writes ``images`` synthetic widefield images (procedural phantoms, Gaussian PSF σ = 2,
background 2 photons, Poisson noise at ``photons`` peak) as TIFFs, then for each worker
count starts a fresh local cluster, warms every worker up (torch imported, model loaded)
and times :func:`pkl_dg.batch.run_batch` over all images. Reports images/min, seconds per
image, cluster start-up time and each worker's peak resident memory (VmHWM).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pkl_dg.bench.common import machine_info, now_iso
from pkl_dg.settings_rules import uses_prior

SMOKE = {"size": 48, "images": 2, "workers": [1], "method": "rl", "steps": 2}


def make_inputs(folder: Path, images: int, size: int, photons: float, seed: int = 0) -> None:
    """``images`` noisy widefield TIFFs of ``size``² in ``folder`` (float32 photons).

    Procedural phantoms (:func:`pkl_dg.training.phantoms.render_phantom`, drawn from
    ``seed``) measured by :func:`pkl_dg.bench.simulate.simulate_measurement`: Gaussian PSF
    σ = 2 px, background 2 photons, ``photons`` peak, noise seed ``seed`` × 1000 + image.
    """
    import tifffile

    from pkl_dg.bench.simulate import simulate_measurement
    from pkl_dg.physics import gaussian_psf
    from pkl_dg.training.phantoms import render_phantom

    rng = np.random.default_rng(seed)
    psf = gaussian_psf(2.0)
    for i in range(images):
        y = simulate_measurement(render_phantom(rng, size), psf, background=2.0, peak=photons,
                                 seed=seed * 1000 + i)
        tifffile.imwrite(folder / f"img{i:03d}.tif", y)


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _warm_up(settings_dict: dict, threads: int) -> int:
    """Import torch and load the model in this worker; returns the pid."""
    from pkl_dg.batch.worker import _network, set_threads
    from pkl_dg.settings import RestoreSettings

    set_threads(threads)
    s = RestoreSettings.from_dict(settings_dict)
    if uses_prior(s):
        _network(s)
    return os.getpid()


def run_batch_bench(size: int = 512, images: int = 20, workers: list[int] | None = None,
                    method: str = "pkl", steps: int = 15, samples: int = 1,
                    threads: int = 1, photons: float = 100.0, smoke: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Time batches of ``images`` images at ``size``² for each worker count.

    Raises
    ------
    ValueError
        A worker count below 1 or fewer than one image.
    """
    from pkl_dg.batch import run_batch, start_cluster
    from pkl_dg.settings import RestoreSettings

    if smoke:
        size, images, workers, method, steps = (SMOKE[k] for k in
                                                ("size", "images", "workers", "method", "steps"))
    workers = workers or [1, 2]
    if min(workers) < 1 or images < 1:
        raise ValueError(f"workers must be ≥ 1 and images ≥ 1, got {workers}, {images}")
    s = RestoreSettings(method=method, steps=steps, samples=samples, rl_iterations=30,
                        psf_sigma=2.0, background=2.0)
    result = {"kind": "batch", "created": now_iso(), "machine": machine_info(),
              "size": size, "images": images, "settings": s.to_dict(),
              "threads_per_worker": threads, "photons": photons, "runs": []}
    with tempfile.TemporaryDirectory(prefix="pkl-dg-bench-batch-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        make_inputs(src, images, size, photons)
        for n in workers:
            t0 = time.perf_counter()
            cl = start_cluster(workers=n, threads=threads)
            try:
                cl.client.wait_for_workers(n)
                cl.client.run(_warm_up, s.to_dict(), threads)
                start_s = time.perf_counter() - t0
                load0 = os.getloadavg()
                t1 = time.perf_counter()
                jobs = run_batch([src], Path(tmp) / f"out{n}", s, client=cl.client,
                                 threads=threads, progress=False)
                wall = time.perf_counter() - t1
                failed = [j.message for j in jobs if j.status != "done"]
                if failed:
                    raise RuntimeError(f"batch benchmark: {len(failed)} images failed: "
                                       f"{failed[0]}")
                peaks = sorted(cl.client.run(_peak_rss_mb).values())
            finally:
                cl.close()
            row = {"workers": n, "seconds": round(wall, 2),
                   "images_per_min": round(images / wall * 60, 2),
                   "seconds_per_image": round(wall / images, 2),
                   "cluster_start_s": round(start_s, 2),
                   "peak_rss_mb_per_worker": [round(p) for p in peaks],
                   "load_average_before": [round(v, 2) for v in load0],
                   "load_average_after": [round(v, 2) for v in os.getloadavg()]}
            log(f"batch: {n} worker(s): {row['images_per_min']} images/min, "
                f"peak {max(peaks):.0f} MB per worker")
            result["runs"].append(row)
    return result


def batch_section(batch: dict) -> list[str]:
    """Markdown section of BENCHMARKS.md for a batch benchmark result."""
    s = batch["settings"]
    what = (f"{s['method'].upper()} {s['steps']} steps, {s['samples']} sample(s)"
            if uses_prior(s) else f"RL {s['rl_iterations']} iterations")
    L = ["## Batch throughput (`pkl-dg batch`)", "",
         f"{batch['images']} images of {batch['size']}² ({what}, Gaussian PSF σ = 2) restored "
         f"by `pkl-dg batch` on a local Dask cluster, {batch['threads_per_worker']} torch "
         f"thread(s) per worker; timed after the workers started and loaded the model "
         f"(start-up shown separately). Measured {batch['created']} on "
         f"{batch['machine']['cpu']} ({batch['machine']['logical_cpus']} logical CPUs).", "",
         "| workers | images/min | s per image | cluster start-up (s) | peak memory per worker "
         "(MB, VmHWM) | load average before → after |",
         "|---|---|---|---|---|---|"]
    for r in batch["runs"]:
        mem = " / ".join(str(m) for m in r["peak_rss_mb_per_worker"])
        L.append(f"| {r['workers']} | {r['images_per_min']:.2f} | {r['seconds_per_image']:.2f} | "
                 f"{r['cluster_start_s']:.1f} | {mem} | "
                 f"{r['load_average_before'][0]:.2f} → {r['load_average_after'][0]:.2f} |")
    if batch.get("note"):
        L += ["", f"Note: {batch['note']}"]
    if batch.get("command"):
        L += ["", f"Command: `{batch['command']}`"]
    return L + [""]
