"""``pkl-dg bench gpu``: the restoration on a CUDA GPU, end to end, per size and precision.

For a machine with an accelerator (the speed issue's GPU rows); nothing here is needed to
use the plugin. Every case restores :func:`pkl_dg.bench.simulate.test_image` (or
:func:`~pkl_dg.bench.simulate.test_stack` in 3D mode) through the public
:func:`~pkl_dg.restoration.restore_iter` with ``device`` set, as a user's script would:

* one **cold** run first (the first restoration at that shape pays for the cuFFT plans,
  cuDNN's algorithm search and the OTF), then ``repeats`` timed runs, medians reported;
* the time to the first streamed frame, and end to end (the device is synchronised before
  each clock reading, so queued GPU work is counted);
* the peak GPU memory of the case (``torch.cuda.max_memory_allocated``, reset per case).

A failing case is logged and kept in the JSON with its error, so that one out-of-memory
size does not lose the others; the report shows it as failed.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

from pkl_dg.bench.common import benchmark_network, machine_info
from pkl_dg.bench.simulate import (TEST_BACKGROUND, TEST_BLOB_SIGMA, TEST_PSF_SIGMA,
                                   TEST_PSF_SIGMA_Z, test_image, test_stack)
from pkl_dg.devices import resolve_device
from pkl_dg.restoration import restore_iter
from pkl_dg.settings import RestoreSettings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_restore(y: np.ndarray, settings: RestoreSettings, net: torch.nn.Module,
                  device: torch.device) -> dict:
    """One restoration of ``y``: seconds to the first frame and to the end, frames.

    Raises
    ------
    RuntimeError
        The result has non-finite values.
    """
    _sync(device)
    t0 = time.perf_counter()
    run = restore_iter(y, settings, denoiser=net)
    first, frames = None, 0
    for _ in run:
        if first is None:
            _sync(device)
            first = time.perf_counter() - t0
        frames += 1
    _sync(device)
    total = time.perf_counter() - t0
    if not np.isfinite(run.result.image).all():
        raise RuntimeError("the restoration gave non-finite values")
    return {"first_frame_s": first, "end_to_end_s": total, "frames": frames,
            "rl_auto_iterations": run.result.metadata.get("rl_auto_iterations")}


def bench_case(y: np.ndarray, settings: RestoreSettings, net: torch.nn.Module,
               device: torch.device, repeats: int) -> dict:
    """A cold run, then ``repeats`` timed runs of one case; medians and peak GPU memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cold = timed_restore(y, settings, net, device)
    runs = [timed_restore(y, settings, net, device) for _ in range(repeats)]
    out = {"cold_s": cold["end_to_end_s"], "repeats": repeats, "frames": cold["frames"],
           "rl_auto_iterations": cold["rl_auto_iterations"]}
    for key in ("first_frame_s", "end_to_end_s"):
        out[key] = statistics.median(r[key] for r in runs) if runs else cold[key]
    out["peak_gpu_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                          if device.type == "cuda" else None)
    return out


def run_gpu(sizes: list[int], precisions: list[str], stack: tuple[int, int] | None,
            repeats: int, smoke: bool, model: str | None, device_name: str = "cuda",
            log: Callable[[str], None] = print,
            save: Callable[[dict], None] | None = None) -> dict:
    """All cases of ``pkl-dg bench gpu``.

    Parameters
    ----------
    sizes : list of int
        Square image sides (px) restored with the default PKL settings per precision, and
        with Richardson–Lucy's automatic stop.
    precisions : list of str
        Network precisions of the PKL rows ('bf16', 'fp32').
    stack : (planes, side) or None
        The 3D row: a stack restored in 3D mode with the first precision.
    repeats : int
        Timed runs per case after the cold one.
    smoke : bool
        A tiny random network (tests; the timings mean nothing).
    model : str or None
        A prior to time instead of the shipped one.
    device_name : str
        'cuda' (the point of this benchmark) or 'cpu' (tests).
    log, save : callable
        Progress lines; ``save`` receives the results so far after every case (so that a
        run stopped from outside keeps what it measured).

    Returns
    -------
    dict
        ``kind`` 'gpu', ``machine`` (with the GPU's name and memory), ``network``,
        ``rows`` (one per size × method × precision) and ``stack``.

    Raises
    ------
    ValueError
        The device is not available (:func:`pkl_dg.devices.resolve_device`).
    """
    device = resolve_device(device_name)
    t_start = time.perf_counter()
    net, net_info = benchmark_network(smoke, model)
    net = net.to(device)
    machine = machine_info()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                       cuda_version=torch.version.cuda)
    base = dict(background=TEST_BACKGROUND, psf_sigma=TEST_PSF_SIGMA, device=device.type)
    if smoke:
        base.update(steps=2, samples=2)
    # per size: the default (first precision), RL, the other precisions; the 3D row first,
    # so that a run stopped from outside at the largest size keeps the rest
    cases = [c for n in sizes for c in [(n, "pkl", precisions[0]), (n, "rl", None)]
             + [(n, "pkl", p) for p in precisions[1:]]]
    rows = []
    result = {"kind": "gpu", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "machine": machine, "network": net_info, "rows": rows,
              "stack": None, "wall_s": 0.0, "test_image_blob_sigma_px": TEST_BLOB_SIGMA,
              "settings": {k: getattr(RestoreSettings(), k) for k in EARLIER_DEFAULTS}}

    def saved() -> dict:
        result["wall_s"] = time.perf_counter() - t_start
        if save is not None:
            save(result)
        return result

    if stack is not None:
        z, n = stack
        _, y = test_stack(z, n)
        settings = RestoreSettings(**base, mode="3d", psf_sigma_z=TEST_PSF_SIGMA_Z,
                                   precision=precisions[0])
        stack_row = result["stack"] = {"shape": [z, n, n], "precision": precisions[0]}
        try:
            stack_row.update(bench_case(y, settings, net, device, min(repeats, 1)))
            log(f"3D {z}×{n}×{n}: {stack_row['end_to_end_s']:.2f} s end to end")
        except Exception as exc:
            stack_row["error"] = f"{type(exc).__name__}: {exc}"
            log(f"3D {z}×{n}×{n} FAILED: {stack_row['error']}\n{traceback.format_exc()}")
        saved()
    for n, method, precision in cases:
        _, y = test_image(n)
        settings = RestoreSettings(method=method, **base,
                                   **({"precision": precision} if precision else {}))
        row = {"size": n, "method": method, "precision": precision}
        try:
            row.update(bench_case(y, settings, net, device, repeats))
            log(f"{n}² {method} {precision or ''}: {row['end_to_end_s']:.2f} s end to end, "
                f"first frame {row['first_frame_s']:.3f} s, cold {row['cold_s']:.2f} s")
        except Exception as exc:  # keep the other cases; the report shows this one as failed
            row["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{n}² {method} {precision or ''} FAILED: {row['error']}\n{traceback.format_exc()}")
        rows.append(row)
        saved()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    machine["load_average_end"] = machine_info()["load_average_start"]
    return saved()


def _cpu_pkl_seconds(speed: dict | None) -> dict:
    """{size: (seconds, estimated)} of the default PKL restore in the CPU speed results."""
    out = {}
    for r in (speed or {}).get("sizes", []):
        rest = r.get("restore") or {}
        if rest.get("end_to_end_s") is not None:
            out[r["size"]] = (rest["end_to_end_s"], bool(rest.get("end_to_end_estimated")))
    return out


#: the default steps and samples before session 26, when GPU runs began to record theirs
EARLIER_DEFAULTS = {"steps": 10, "samples": 4}


def _not_comparable(gpu: dict, cpu_speed: dict | None, n: int) -> str | None:
    """Why the GPU and CPU default PKL rows at side ``n`` cannot be compared, or None: another
    test image (runs before :data:`~pkl_dg.bench.simulate.TEST_BLOB_SIGMA` record none: their
    blobs had σ = n/64), or other steps × samples (runs before session 26 record none: they
    used :data:`EARLIER_DEFAULTS`)."""
    def blob(recorded):
        return recorded if recorded is not None else max(1.0, n / 64)
    cpu_blob = ((cpu_speed or {}).get("test_image") or {}).get("blob_sigma_px")
    if blob(gpu.get("test_image_blob_sigma_px")) != blob(cpu_blob):
        return "another test image"
    row = next((r for r in (cpu_speed or {}).get("sizes", []) if r["size"] == n), {})
    cpu_settings = (row.get("restore") or {}).get("settings") or EARLIER_DEFAULTS
    if {k: cpu_settings.get(k) for k in EARLIER_DEFAULTS} != gpu.get("settings",
                                                                     EARLIER_DEFAULTS):
        return "other steps × samples"
    return None


def gpu_section(gpu: dict, cpu_speed: dict | None = None) -> list[str]:
    """BENCHMARKS.md's GPU section from ``pkl-dg bench gpu`` results (markdown lines); with
    the CPU speed results, the default PKL rows are compared with the CPU's."""
    m = gpu["machine"]
    cpu = _cpu_pkl_seconds(cpu_speed)
    threads = ((cpu_speed or {}).get("machine") or {}).get("torch_threads")
    run = gpu.get("settings", EARLIER_DEFAULTS)
    L = ["## GPU", "",
         f"`{gpu.get('command') or 'pkl-dg bench gpu'}` on {m.get('gpu', gpu['device'])} "
         f"({m.get('gpu_memory_gb', '?')} GB; CUDA {m.get('cuda_version')}, torch {m['torch']}, "
         f"{m['logical_cpus']} CPUs), {gpu['created']}, {gpu['wall_s'] / 60:.1f} min. "
         f"Network: {gpu['network']['source']}. Default settings of the run ({run['steps']} "
         f"steps × {run['samples']} samples); the "
         "cold run is the first at that shape (cuFFT plans, cuDNN's search), the others are "
         f"medians of {max((r.get('repeats', 0) for r in gpu['rows']), default=0)} run(s) "
         "after it.", ""]
    if gpu.get("note"):
        L += [f"Note: {gpu['note']}", ""]
    L += ["| size | method | precision | end to end | first frame | cold run | peak GPU memory "
          f"| CPU ({threads or '?'} thread(s), Speed section) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in gpu["rows"]:
        head = f"| {r['size']}² | {r['method'].upper()} | {r['precision'] or '-'} |"
        if "error" in r:
            L.append(f"{head} failed: {r['error'][:80]} | | | | |")
            continue
        mem = f"{r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None else "-"
        ref = "-"
        if r["method"] == "pkl" and r["size"] in cpu:
            sec, est = cpu[r["size"]]
            why = _not_comparable(gpu, cpu_speed, r["size"])
            ref = (f"{'~' if est else ''}{sec:.1f} s ("
                   + (f"{sec / r['end_to_end_s']:.0f}× the GPU)" if why is None else
                      f"{why}: not comparable)"))
        L.append(f"{head} {r['end_to_end_s']:.2f} s | {r['first_frame_s']:.3f} s | "
                 f"{r['cold_s']:.2f} s | {mem} | {ref} |")
    s = gpu.get("stack")
    if s:
        shape = "×".join(str(v) for v in s["shape"])
        if "error" in s:
            L.append(f"| {shape} (3D) | PKL | {s['precision']} | failed: {s['error'][:80]} | | | | |")
        else:
            mem = f"{s['peak_gpu_mb']:.0f} MB" if s.get("peak_gpu_mb") is not None else "-"
            st = (cpu_speed or {}).get("stack_3d") or {}
            ref = (f"{st['frames_s']:.0f} s ({st['frames_s'] / s['end_to_end_s']:.0f}× the GPU)"
                   if st.get("frames_s") and st.get("shape") == s["shape"] else "-")
            L.append(f"| {shape} (3D) | PKL | {s['precision']} | {s['end_to_end_s']:.2f} s | "
                     f"{s['first_frame_s']:.3f} s | {s['cold_s']:.2f} s | {mem} | {ref} |")
    L.append("")
    return L
