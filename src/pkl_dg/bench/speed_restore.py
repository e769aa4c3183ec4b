"""``pkl-dg bench speed``: a restoration timed frame by frame, and its peak memory.

* :func:`restore_timing`: time to the first streamed frame of
  :func:`~pkl_dg.restoration.restore_iter` (model already loaded, new operator: cold OTF),
  the median guided step and the network's share of it (:class:`TimedNetwork`), and the
  end-to-end time at the default number of steps; :func:`real_restore_timing` the same
  for real dev images as a user's file holds them;
* :func:`peak_memory`: peak resident memory of the first frames of a restoration in a
  fresh interpreter (``VmHWM`` after a reset of the high-water mark; torch allocations are
  invisible to ``tracemalloc``) and its baseline after loading;
* :func:`restore_timing_from_worker`: for sizes too large to restore end to end, the
  estimate from the first frame and the step median of the peak-memory process's frames.

The test image is :func:`pkl_dg.bench.simulate.test_image`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pkl_dg.bench.common import benchmark_network
from pkl_dg.bench.network import TimedNetwork
from pkl_dg.bench.simulate import (TEST_BACKGROUND, TEST_PSF_SIGMA, TEST_PSF_SIGMA_Z, test_image,
                                   test_stack)
from pkl_dg.restoration import restore_iter
from pkl_dg.settings import RestoreSettings


def _frame_times(frames: Iterator, count: int | None, timed: TimedNetwork
                 ) -> tuple[float, list, list, int]:
    """(first frame s, ms between later frames, network ms within each, frames in the run)
    of ``count`` frames (None: all the run streams)."""
    t0 = prev = time.perf_counter()
    first, step_ms, net_ms, total = 0.0, [], [], 0
    i = 0
    while count is None or i < count:
        timed.seconds = 0.0
        rec = next(frames, None)
        if rec is None:
            break
        now = time.perf_counter()
        if i == 0:
            first, total = now - t0, rec.total
        else:
            step_ms.append((now - prev) * 1e3)
            net_ms.append(timed.seconds * 1e3)
        prev = now
        i += 1
    return first, step_ms, net_ms, total


def _summary(settings: RestoreSettings, steps: int, first_s: float, step_ms: list,
             net_ms: list) -> dict:
    step = float(np.median(step_ms)) if step_ms else float("nan")
    netm = float(np.median(net_ms)) if net_ms else float("nan")
    return {"settings": {"method": settings.method, "steps": steps, "samples": settings.samples,
                         "sub_iterations": settings.sub_iterations,
                         "step_rule": settings.step_rule, "precision": settings.precision},
            "first_frame_s": first_s, "guided_step_ms": step, "guided_step_network_ms": netm,
            "guided_step_non_network_share": 1.0 - netm / step if step_ms else None,
            "steps_timed": len(step_ms)}


def _timed_runs(net: torch.nn.Module, y: np.ndarray, settings: RestoreSettings, repeats: int,
                psf: np.ndarray | None = None) -> dict:
    """``repeats`` restorations of ``y`` streamed to the end: medians of the first frame and
    the end to end time, the step and network medians over all runs."""
    timed = TimedNetwork(net)
    firsts, step_ms, net_ms, totals = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen = restore_iter(y, settings, psf=psf, denoiser=timed)
        first, steps_ms, nets_ms, total = _frame_times(gen, None, timed)
        if len(steps_ms) + 1 != total:  # steps × sample groups (one group up to 1024²)
            raise RuntimeError(f"restore_iter streamed {len(steps_ms) + 1} of {total} frames")
        totals.append(time.perf_counter() - t0)
        firsts.append(first)
        step_ms += steps_ms
        net_ms += nets_ms
    return {**_summary(settings, settings.steps, float(np.median(firsts)), step_ms, net_ms),
            "end_to_end_s": float(np.median(totals)), "end_to_end_repeats": len(totals),
            "end_to_end_estimated": False, "threads": settings.threads}


def restore_timing(net: torch.nn.Module, y: np.ndarray, steps: int, repeats: int) -> dict:
    """First-frame, per-step and end-to-end times of restore_iter (default settings, the
    process's torch thread count).

    Parameters
    ----------
    net : torch.nn.Module
        The loaded denoiser.
    y : ndarray
        The measurement (photons).
    steps : int
        Diffusion steps.
    repeats : int
        Restorations timed; medians are reported.

    Returns
    -------
    dict
        The settings used, ``first_frame_s``, ``guided_step_ms``,
        ``guided_step_network_ms``, ``guided_step_non_network_share``, ``steps_timed``,
        ``end_to_end_s``, ``end_to_end_repeats`` and ``threads``;
        ``end_to_end_estimated`` is False.

    Raises
    ------
    RuntimeError
        ``restore_iter`` streamed another number of frames than it announced.
    """
    settings = RestoreSettings(steps=steps, background=TEST_BACKGROUND,
                               psf_sigma=TEST_PSF_SIGMA, device="cpu",
                               threads=torch.get_num_threads())
    return _timed_runs(net, y, settings, repeats)


#: the real dev images (DESIGN §4) of the speed table's real rows, by their dev-set name
REAL_IMAGES = ("BioSR F-actin, σ 2", "W2S 012_2")


def real_restore_timing(net: torch.nn.Module, root: Path, repeats: int, log=print) -> list:
    """Default restorations of real dev images as a user's file holds them (no calibration
    given, the dev set's PSF), timed like :func:`restore_timing`.

    Parameters
    ----------
    net : torch.nn.Module
        The loaded denoiser.
    root : Path
        The public test data (``shared/realdata``).
    repeats : int
        Restorations timed per image; medians are reported.

    Returns
    -------
    list of dict
        Per image of :data:`REAL_IMAGES`: ``name``, ``shape`` and the keys of
        :func:`restore_timing`.

    Raises
    ------
    FileNotFoundError
        The data are not under ``root``.
    """
    from pkl_dg.bench.realdata import dev_inputs

    rows = []
    for d in dev_inputs(root):
        if d["name"] not in REAL_IMAGES:
            continue
        settings = RestoreSettings(device="cpu", threads=torch.get_num_threads())
        row = {"name": d["name"], "shape": list(d["image"].shape),
               **_timed_runs(net, d["image"], settings, repeats, psf=d["psf"])}
        log(f"  {d['name']}: first frame {row['first_frame_s']:.2f} s, end to end "
            f"{row['end_to_end_s']:.1f} s")
        rows.append(row)
    return rows


def restore_timing_from_worker(mem: dict, steps: int, e2e_max: int) -> dict:
    """Restore timing of a size too large to run end to end, from the memory worker's frames.

    Parameters
    ----------
    mem : dict
        :func:`peak_memory` of that size (at least 2 frames).
    steps : int
        Diffusion steps of a full restoration.
    e2e_max : int
        The largest size restored end to end (for the note).

    Returns
    -------
    dict
        As :func:`restore_timing`, with ``end_to_end_s`` = first frame + (frames − 1) ×
        step (frames = steps × the sample groups a large image runs one after the other),
        ``end_to_end_estimated`` True and an ``end_to_end_note``.
    """
    out = _summary(RestoreSettings(), steps, mem["first_frame_s"], mem["step_ms"],
                   mem["step_network_ms"])
    frames = mem.get("run_frames", steps)
    return {**out, "end_to_end_s": mem["first_frame_s"] + (frames - 1) * out["guided_step_ms"] / 1e3,
            "run_frames": frames, "end_to_end_repeats": 0, "end_to_end_estimated": True,
            "end_to_end_note": (f"end-to-end not run above {e2e_max}² on this CPU (it would take "
                                f"many minutes); estimated as first frame + ({frames} frames − 1)"
                                " × step, timed in the peak-memory process (frames = steps × "
                                "sample groups)")}


def restore_timing_run_once(mem: dict, steps: int) -> dict:
    """Restore timing of a size restored once to the end in the peak-memory process.

    Parameters
    ----------
    mem : dict
        :func:`peak_memory` of that size with ``frames=0`` (the whole run).
    steps : int
        Diffusion steps of a full restoration.

    Returns
    -------
    dict
        As :func:`restore_timing`, from that one run: ``end_to_end_s`` its wall time (call to
        last frame), ``end_to_end_repeats`` 1, ``end_to_end_estimated`` False.
    """
    out = _summary(RestoreSettings(), steps, mem["first_frame_s"], mem["step_ms"],
                   mem["step_network_ms"])
    return {**out, "end_to_end_s": mem["frames_s"], "run_frames": mem["run_frames"],
            "end_to_end_repeats": 1, "end_to_end_estimated": False,
            "end_to_end_note": "restored once to the end, in the fresh process that measures "
                               "its peak memory (the whole run's peak)"}


def peak_memory(n: int, smoke: bool, model: str | None, frames: int = 2) -> dict:
    """Peak memory and frame times of the first ``frames`` frames (0: the whole run) of a
    restoration of an n×n test image, run in a fresh interpreter (see
    :func:`_memory_worker`).

    Raises
    ------
    RuntimeError
        The worker process failed (its stderr is in the message).
    """
    return _run_worker(["--memory-worker", str(n), "--frames", str(frames)], smoke, model,
                       f"memory worker for {n}×{n}", timeout=1800 if frames else 7200)


def _run_worker(args: list[str], smoke: bool, model: str | None, what: str,
                timeout: float) -> dict:
    """Run this module's worker in a fresh interpreter with ``args``; its JSON result.

    Raises
    ------
    RuntimeError
        The worker process failed (its stderr is in the message).
    """
    cmd = [sys.executable, "-m", "pkl_dg.bench.speed_restore", *args]
    if smoke:
        cmd.append("--smoke")
    if model:
        cmd += ["--model", model]
    cmd += ["--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def proc_status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, …) in MB.

    Raises
    ------
    RuntimeError
        The file has no such field.
    """
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def stack_restore(z: int, n: int, smoke: bool, model: str | None) -> dict:
    """A z×n×n test stack restored to the end in 3D mode (3D Gaussian PSF, default
    settings otherwise) in a fresh interpreter: end-to-end seconds, first frame and peak
    memory (see :func:`_memory_worker`).

    Raises
    ------
    RuntimeError
        The worker process failed (its stderr is in the message).
    """
    return _run_worker(["--memory-worker", str(n), "--stack", str(z)], smoke, model,
                       f"3D worker for {z}×{n}×{n}", timeout=7200)


def _memory_worker(n: int, frames: int | None, smoke: bool, model: str | None,
                   stack: int = 0) -> dict:
    """Peak resident memory of the restoration alone (``stack`` > 0: a stack of that many
    planes in 3D mode, run to the end).

    ``ru_maxrss`` is useless here: Linux carries the parent's high-water mark over ``exec``,
    and building the test image can peak above the restoration. Instead the worker resets
    the high-water mark (``/proc/self/clear_refs``, Linux ≥ 4.0) after loading the network
    and the image, runs the frames, and reads ``VmHWM``.
    """
    import gc

    net, _ = benchmark_network(smoke, model)
    _, y = test_stack(stack, n) if stack else test_image(n)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError as exc:
        raise RuntimeError("peak memory is measured through /proc/self (Linux only); "
                           f"this system refused it ({exc})") from exc
    base = proc_status_mb("VmRSS")
    settings = RestoreSettings(background=TEST_BACKGROUND, psf_sigma=TEST_PSF_SIGMA, device="cpu",
                               threads=torch.get_num_threads(),
                               **({"mode": "3d", "psf_sigma_z": TEST_PSF_SIGMA_Z} if stack
                                  else {}))
    timed = TimedNetwork(net)
    t0 = time.perf_counter()
    gen = restore_iter(y, settings, denoiser=timed)
    to_end = stack or not frames
    first, step_ms, net_ms, run_frames = _frame_times(gen, None if to_end else frames, timed)
    if stack:
        if not np.isfinite(gen.result.image).all():
            raise RuntimeError("the 3D test restoration gave non-finite values")
    seconds = time.perf_counter() - t0
    peak = proc_status_mb("VmHWM")
    tiles = (f"; tiles of at most {gen.result.metadata['tile_size']} px"
             if to_end and "tile_size" in gen.result.metadata else "")
    gen.close()
    return {"shape": list(y.shape), "mode": settings.mode,
            "peak_rss_mb": peak, "baseline_rss_mb": base, "restore_extra_mb": peak - base,
            "frames": run_frames if to_end else frames, "run_frames": run_frames,
            "frames_s": seconds,
            "first_frame_s": first,
            "step_ms": step_ms, "step_network_ms": net_ms,
            "image_mb": y.nbytes / 2**20,
            "note": "VmHWM of a fresh process whose high-water mark was reset after loading the "
                    "network and the image (baseline = VmRSS then); default settings "
                    f"(tile_size {settings.tile_size}, {settings.samples} samples{tiles})"}


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="internal: peak-memory worker of pkl-dg bench speed")
    p.add_argument("--memory-worker", type=int, required=True)
    p.add_argument("--frames", type=int, default=2, help="frames to run; 0: the whole run")
    p.add_argument("--stack", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(_memory_worker(a.memory_worker, a.frames, a.smoke, a.model, a.stack)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
