"""``pkl-dg bench speed``, Richardson–Lucy part: our RL against the FFT floor and the peers,
and the time to the best result on real data.

Per size (the speed benchmark's test image: Gaussian PSF σ = 2 px, ≈100 photons peak,
background 2; N iterations per run, at least the asked number and enough for
:data:`MIN_RUN_S` of floor time, :func:`timed_iterations`), one repeat runs each of our
variants once, in this order, then the peers
run their repeats (after ours: running a peer can slow the process's later FFTs), and the
table gives the medians over repeats (per iteration, ms):

* *floor* (median of single iterations): 4 real FFTs (``rfftn``/``irfftn`` on our operator's padded smooth grid, OTF and
  its conjugate cached, every buffer preallocated) plus the 4 element-wise operations RL
  cannot avoid (2 OTF products, y/μ, x·ratio);
* *raw loop*: :func:`~pkl_dg.richardson_lucy.rl_iterates` without misfit readout (median
  interval between iterates);
* *restore*: ``restore(image, method="rl", rl_iterations=N, psf_sigma=2)`` as a user calls
  it (background estimated, new operator; the misfit, computed only when read, is not).
  Its iteration time is the median interval between consecutive streamed frames; its setup
  is the rest of its wall time (total − N × iteration: PSF, OTF, background, Aᵀ1);
  *restore/floor* is the median over repeats of the per-repeat ratio;
* *accelerated*: the same call with ``rl_acceleration="biggs-andrews"``;
* peers on the same image and PSF, per iteration (total / N): scikit-image
  ``richardson_lucy(clip=False)`` (``scipy.signal.convolve``, zero padding), RedLionfish's
  CPU path (``scipy.fft``, circular) and sdeconv's ``SRichardsonLucy`` (torch complex FFT,
  circular). A peer that is not installed (``pip install -e .[bench]``; sdeconv with
  ``pip install --no-deps sdeconv``, see pyproject.toml) is skipped with the reason.

Time to the best result (:func:`time_to_best`): the BioSR widefield→SIM pair, Gaussian PSF
σ = 2 px, PSNR by the CARE protocol against the SIM image at every iteration (cap 300) for
our plain and accelerated RL and scikit-image's plain RL (on the background-subtracted data,
as it has no background term). The target is the lowest of the three best PSNRs, so that all
reach it; each method's time is the wall time of the call a user makes for that many
iterations (median of the repeats).
"""

from __future__ import annotations

import importlib
import math
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.richardson_lucy import rl_iterates

PSF_SIGMA = 2.0
#: a size runs more than the asked iterations where they take under MIN_RUN_S of floor time
#: (9 intervals of a 30 ms run at 512² moved ±20 % between repeats), at most MAX_…
MIN_RUN_S, MAX_TIMED_ITERATIONS = 0.25, 100
PEER_NAMES = ("skimage", "redlionfish", "sdeconv")
PEER_LABELS = {"skimage": "scikit-image (clip=False)", "redlionfish": "RedLionfish (CPU)",
               "sdeconv": "sdeconv"}


def floor_iteration(conv: PSFConvolution, shape: tuple[int, ...]) -> Callable[[], None]:
    """One RL iteration's irreducible work on our padded grid (see the module docstring)."""
    fs = conv.padded_shape(*shape)
    cpu = torch.device("cpu")
    otf, otf_c = conv.otf(fs, torch.float32, cpu), conv.otf_conj(fs, torch.float32, cpu)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(fs, generator=g) + 0.5, torch.rand(fs, generator=g) + 1.0
    spec = torch.empty(otf.shape, dtype=otf.dtype)
    full = torch.empty(fs)

    def run() -> None:
        torch.fft.rfftn(x, out=spec)
        spec.mul_(otf)
        torch.fft.irfftn(spec, s=fs, out=full)
        torch.div(y, full, out=full)
        torch.fft.rfftn(full, out=spec)
        spec.mul_(otf_c)
        torch.fft.irfftn(spec, s=fs, out=full)
        x.mul_(full)

    return run


# ---- peers -------------------------------------------------------------------------------
def _skimage() -> Callable:
    from skimage.restoration import richardson_lucy

    return lambda y, psf, n: richardson_lucy(y, psf, num_iter=n, clip=False)


def _redlionfish() -> Callable:
    from RedLionfishDeconv.RLDeconvolve import doRLDeconvolutionFromNpArrays

    return lambda y, psf, n: doRLDeconvolutionFromNpArrays(
        y[None], psf[None].astype(np.float32), niter=n, method="cpu")[0]


def _sdeconv() -> Callable:
    try:
        mod = importlib.import_module("sdeconv.deconv.richardson_lucy")
    except ImportError as exc:
        if "torchvision" not in str(exc):
            raise
        # sdeconv.deconv's __init__ imports its neural-network filters, which need
        # torchvision; the RL module does not: load it without that __init__
        import sdeconv

        for name in [m for m in sys.modules if m.startswith("sdeconv.deconv")]:
            del sys.modules[name]
        pkg = types.ModuleType("sdeconv.deconv")
        pkg.__path__ = [str(Path(sdeconv.__file__).parent / "deconv")]
        sys.modules["sdeconv.deconv"] = pkg
        mod = importlib.import_module("sdeconv.deconv.richardson_lucy")
    cls = mod.SRichardsonLucy
    resize = importlib.import_module("sdeconv.deconv._utils").resize_psf_2d

    def run(y, psf, n):  # sdeconv wants the PSF at the image's size (its own helper)
        with torch.inference_mode():
            yt = torch.from_numpy(y)
            return cls(resize(yt, torch.from_numpy(psf.astype(np.float32))), niter=n)(yt)
    return run


def load_peers(names=PEER_NAMES) -> tuple[dict[str, Callable], dict[str, str]]:
    """Import the peer RL implementations that are installed.

    A peer that is not installed, or whose installed version lacks the function used
    (``ImportError``; ``AttributeError`` for sdeconv's modules, looked up by name), is
    skipped; the reason goes into the results and the benchmark's log. RedLionfish handles
    a missing OpenCL platform inside its own import.

    Parameters
    ----------
    names : iterable of str
        Peers to load (from :data:`PEER_NAMES`).

    Returns
    -------
    tuple of dict
        (peer → callable ``fn(y, psf, iterations)``, peer → why it was skipped).
    """
    makers = {"skimage": _skimage, "redlionfish": _redlionfish, "sdeconv": _sdeconv}
    ok, skipped = {}, {}
    for name in names:
        try:
            ok[name] = makers[name]()
        except (ImportError, AttributeError) as exc:
            how = ("pip install --no-deps sdeconv" if name == "sdeconv"
                   else "pip install -e .[bench]")
            skipped[name] = (f"not installed or not importable ({type(exc).__name__}: "
                             f"{str(exc)[:120]}); install with {how}")
    return ok, skipped


# ---- per-size table ------------------------------------------------------------------------
def _restore_run(y: np.ndarray, n: int, acceleration: str) -> tuple[float, float, list[float]]:
    """(total s, time to the first frame s, ms between consecutive frames)."""
    from pkl_dg.restoration import restore_iter

    stamps: list[float] = []
    t0 = time.perf_counter()
    restore_iter(y, method="rl", rl_iterations=n, psf_sigma=PSF_SIGMA,
                 rl_acceleration=acceleration, device="cpu",
                 threads=torch.get_num_threads()
                 ).finish(lambda rec: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return total, stamps[0] - t0, list(np.diff(stamps) * 1e3)


def timed_iterations(floor: Callable[[], None], iterations: int) -> int:
    """``iterations``, or more where they would run under :data:`MIN_RUN_S` of floor time
    (estimated from 3 floor iterations after one warm-up), at most
    :data:`MAX_TIMED_ITERATIONS`."""
    floor()
    t0 = time.perf_counter()
    for _ in range(3):
        floor()
    per = max((time.perf_counter() - t0) / 3, 1e-9)
    return max(iterations, min(MAX_TIMED_ITERATIONS, math.ceil(MIN_RUN_S / per)))


def rl_speed_row(y: np.ndarray, iterations: int, repeats: int,
                 peers: dict[str, Callable]) -> dict:
    """All RL variants on one image, interleaved per repeat (see the module docstring).

    Ours and the floor: the median of the single iterations' times within a repeat (for
    restore: of the intervals between consecutive frames, so one-time work counts as
    setup, not per iteration); peers: total / N. Then
    the median over repeats.
    """
    if iterations < 3:
        raise ValueError("the RL speed table needs at least 3 iterations")
    psf = gaussian_psf(PSF_SIGMA)
    conv = PSFConvolution(psf)
    yt = torch.from_numpy(y)
    fm = ForwardModel(conv, 2.0)
    floor = floor_iteration(conv, y.shape)
    rows: dict[str, list[float]] = {k: [] for k in (
        "floor_ms", "raw_ms", "restore_ms", "restore_total_ms", "restore_setup_s",
        "accelerated_ms", "restore_over_floor", *[f"{p}_ms" for p in peers])}
    iterations = timed_iterations(floor, iterations)

    samples: dict[str, list[float]] = {"floor": [], "raw": [], "restore": []}
    ratios: dict[str, list[float]] = {}

    def floor_ms() -> float:
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            floor()
            times.append((time.perf_counter() - t0) * 1e3)
        samples["floor"].append(float(np.median(times)))
        return float(np.median(times))

    def raw_ms() -> float:
        stamps = []
        with torch.inference_mode():
            for _ in rl_iterates(yt, fm, iterations):
                stamps.append(time.perf_counter())
        samples["raw"].append(float(np.median(np.diff(stamps))) * 1e3)
        return float(np.median(np.diff(stamps))) * 1e3

    floor()
    raw_ms()
    for _ in range(repeats):
        f = floor_ms()
        rows["floor_ms"].append(f)
        rows["raw_ms"].append(raw_ms())
        total, first, intervals = _restore_run(y, iterations, "none")
        samples["restore"].append(float(np.median(intervals)))
        per_iter = float(np.median(intervals))
        rows["restore_ms"].append(per_iter)
        rows["restore_total_ms"].append(total * 1e3 / iterations)
        rows["restore_setup_s"].append(max(total - iterations * per_iter / 1e3, 0.0))
        rows["restore_over_floor"].append(per_iter / f)
        rows["accelerated_ms"].append(float(np.median(
            _restore_run(y, iterations, "biggs-andrews")[2])))
    # the peers after all of ours: one sdeconv call left this process's later FFTs slower
    # (our tiled 2048² RL iteration 39 → 60 ms, 2 threads), so interleaving them would
    # time ours in a state no user's process is in
    for k in range(repeats):
        for name, fn in peers.items():
            t0 = time.perf_counter()
            fn(y, psf, iterations)
            rows[f"{name}_ms"].append((time.perf_counter() - t0) * 1e3 / iterations)
            ratios.setdefault(name, []).append(rows[f"{name}_ms"][-1] / rows["restore_ms"][k])
    out = {k: float(np.median(v)) for k, v in rows.items()}
    out["fft_shape"] = list(conv.padded_shape(*y.shape))
    out["iterations"] = iterations
    # best case: the fastest repeat of each (the one least disturbed by other load; single
    # intervals would not do: a frame whose misfit is read out computes the next
    # iteration's A early, so the interval after it is half an iteration)
    out.update({f"{k}_min_ms": float(min(v)) for k, v in samples.items()})
    out["restore_over_floor_min"] = out["restore_min_ms"] / out["floor_min_ms"]
    for name in peers:  # per repeat (same load for both), then the median
        out[f"{name}_over_restore"] = float(np.median(ratios[name]))
    return out


def run_rl_speed(sizes: list[int], iterations: int, repeats: int, log=print,
                 image_fn: Callable[[int], np.ndarray] | None = None) -> dict:
    """The RL table for every size; JSON-ready."""
    import os

    from pkl_dg.bench.common import now_iso

    if image_fn is None:
        from pkl_dg.bench.simulate import test_image

        def image_fn(n: int) -> np.ndarray:
            return test_image(n)[1]
    peers, skipped = load_peers()
    for name, why in skipped.items():
        log(f"RL speed: {name} skipped: {why}")
    load_start = list(os.getloadavg())
    rows = []
    for n in sizes:
        row = {"size": n, **rl_speed_row(image_fn(n), iterations, repeats, peers)}
        log(f"RL {n}²: floor {row['floor_ms']:.2f} ms, restore {row['restore_ms']:.2f} ms "
            f"({row['restore_over_floor']:.2f}× floor), raw {row['raw_ms']:.2f}, accelerated "
            f"{row['accelerated_ms']:.2f}, " + ", ".join(
                f"{p} {row[f'{p}_ms']:.2f}" for p in peers) + f" (load {os.getloadavg()[0]:.2f})")
        rows.append(row)
    return {"created": now_iso(), "iterations": iterations, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "peers": list(peers),
            "skipped_peers": skipped, "versions": _peer_versions(peers), "sizes": rows,
            "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
            "psf": f"gaussian sigma={PSF_SIGMA} px", "logical_cpus": os.cpu_count()}


def _peer_versions(peers) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"skimage": "scikit-image", "redlionfish": "redlionfish", "sdeconv": "sdeconv"}
    out = {}
    for p in peers:
        try:
            out[p] = version(dist[p])
        except PackageNotFoundError:
            out[p] = "?"
    return out


# ---- time to the best result on real data --------------------------------------------------
def skimage_iterates(image: np.ndarray, psf: np.ndarray, cap: int):
    """scikit-image's ``richardson_lucy`` loop (0.26, clip=False), yielding every iterate;
    checked against the library call in :func:`time_to_best`."""
    from scipy.signal import convolve

    image = image.astype(np.float32)
    kernel = psf.astype(np.float32)
    mirror = np.flip(kernel)
    im = np.full(image.shape, 0.5, dtype=np.float32)
    for _ in range(cap):
        conv = convolve(im, kernel, mode="same") + 1e-12
        im *= convolve(image / conv, mirror, mode="same")
        yield im


def _first_reaching(psnrs: list[float], target: float) -> int:
    return int(np.nonzero(np.asarray(psnrs) >= target)[0][0]) + 1


def time_to_best(realdata: str | Path, cap: int = 300, repeats: int = 3, log=print) -> dict:
    """Iterations and wall time for ours (plain, accelerated) and scikit-image to reach the
    same PSNR on the BioSR pair (see the module docstring). Raises FileNotFoundError
    without the data."""
    import tifffile
    from skimage.restoration import richardson_lucy as sk_rl

    from pkl_dg.bench.protocol import psnr
    from pkl_dg.bench.quality import BIOSR_GT, BIOSR_RAW
    from pkl_dg.metrics import normalize_percentile
    from pkl_dg.restoration import estimate_background, restore

    root = Path(realdata)
    raw = tifffile.imread(root / BIOSR_RAW).astype(np.float32)
    g = normalize_percentile(tifffile.imread(root / BIOSR_GT).astype(np.float64))
    psf = gaussian_psf(PSF_SIGMA)
    conv = PSFConvolution(psf)
    y = torch.from_numpy(raw)
    background = estimate_background(y, conv)
    fm = ForwardModel(conv, background)
    sk_input = np.clip(raw - background, 0, None)
    with torch.inference_mode():
        curves = {"plain": [psnr(it.x.numpy(), g) for it in rl_iterates(y, fm, cap)],
                  "accelerated": [psnr(it.x.numpy(), g)
                                  for it in rl_iterates(y, fm, cap, accelerate=True)]}
    curves["skimage"] = [psnr(x, g) for x in skimage_iterates(sk_input, psf, cap)]
    check = float(np.abs(list(skimage_iterates(sk_input, psf, 5))[-1]
                         - sk_rl(sk_input, psf, num_iter=5, clip=False)).max())
    target = min(max(c) for c in curves.values())
    k = {m: _first_reaching(c, target) for m, c in curves.items()}
    log(f"time to best: target PSNR {target:.3f} dB; iterations " +
        ", ".join(f"{m} {v}" for m, v in k.items()))
    calls = {
        "plain": lambda: restore(raw, method="rl", rl_iterations=k["plain"], psf_sigma=PSF_SIGMA,
                                 device="cpu", threads=torch.get_num_threads()),
        "accelerated": lambda: restore(raw, method="rl", rl_iterations=k["accelerated"],
                                       psf_sigma=PSF_SIGMA, rl_acceleration="biggs-andrews",
                                       device="cpu", threads=torch.get_num_threads()),
        "skimage": lambda: sk_rl(sk_input, psf, num_iter=k["skimage"], clip=False),
    }
    times: dict[str, list[float]] = {m: [] for m in calls}
    outputs = {}
    for _ in range(repeats):
        for m, fn in calls.items():
            t0 = time.perf_counter()
            outputs[m] = fn()
            times[m].append(time.perf_counter() - t0)
    med = {m: float(np.median(v)) for m, v in times.items()}
    rows = {m: {"best_psnr": float(max(c)), "best_iteration": int(np.argmax(c)) + 1,
                "iterations_to_target": k[m], "seconds_to_target": med[m],
                "psnr_of_timed_call": psnr(np.asarray(outputs[m]), g),
                "skimage_over_this": med["skimage"] / med[m]} for m, c in curves.items()}
    return {"data": f"BioSR F-actin pair ({BIOSR_RAW} → {BIOSR_GT}), {raw.shape[0]}×"
                    f"{raw.shape[1]}", "psf": f"gaussian sigma={PSF_SIGMA} px",
            "background_photons": background, "cap": cap, "repeats": repeats,
            "target_psnr": target, "methods": rows,
            "skimage_replica_max_abs_diff_at_5": check,
            "note": "scikit-image gets the data minus the estimated background (clipped at 0): "
                    "it has no background term; ours model the background"}


def run_rl_part(sizes: list[int], iterations: int, repeats: int, realdata: str | None = None,
                smoke: bool = False, log=print) -> dict:
    """The ``rl`` part of the speed results: the per-size table and the time to the best
    result on the BioSR pair (skipped, with the reason, without the data or in smoke mode)."""
    from pkl_dg.bench.quality import default_realdata

    part = {"table": run_rl_speed(sizes, iterations, repeats, log=log)}
    root = Path(realdata) if realdata else default_realdata()
    if smoke:
        part["time_to_best"] = {"skipped": "smoke run"}
    else:
        try:
            part["time_to_best"] = time_to_best(root, repeats=repeats, log=log)
        except (FileNotFoundError, ImportError) as exc:
            part["time_to_best"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    return part
