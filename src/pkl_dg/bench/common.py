"""Shared pieces of the benchmarks: timing, machine description, the network used."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from pkl_dg.diffusion.unet import UNet, UNetConfig, count_parameters

#: tiny network of the smoke modes (random weights: timings only, no meaningful output)
SMOKE_UNET = UNetConfig(width=8, channel_mult=(1, 2), groups=4)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """What ran the benchmark: CPU, cores, memory, library versions, load."""
    import numpy
    import scipy
    import skimage

    from pkl_dg._version import __version__
    from pkl_dg.devices import cpu_supports_bf16

    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "cpu_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit_image": skimage.__version__,
        "pkl_dg": __version__,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def benchmark_network(smoke: bool, model_path: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The network timed by the speed benchmark and its description.

    Smoke: a tiny random UNet. Otherwise the prior at ``model_path`` or the shipped prior;
    when no shipped prior exists, the default :class:`UNetConfig` with random weights
    (timing does not depend on weight values), and the description says so.
    """
    from pkl_dg.diffusion.model_io import default_model_path, load_model

    if smoke:
        torch.manual_seed(0)
        net = UNet(SMOKE_UNET).eval()
        return net, {"source": "smoke: tiny random UNet", "config": SMOKE_UNET.to_dict(),
                     "parameters": count_parameters(net)}
    if model_path:
        net, meta = load_model(model_path)
        return net, {"source": f"model {model_path}", "config": meta["architecture"]["config"],
                     "parameters": count_parameters(net)}
    try:
        net, meta = load_model(None)
    except FileNotFoundError:
        torch.manual_seed(0)
        net = UNet(UNetConfig()).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net, {"source": f"default UNetConfig, random weights (no shipped prior at "
                               f"{default_model_path()})",
                     "config": net.config.to_dict(), "parameters": count_parameters(net)}
    return net, {"source": "shipped prior (pkl_dg/weights)", "config": meta["architecture"]["config"],
                 "parameters": count_parameters(net), "name": meta.get("name", "")}


def quality_denoiser(smoke: bool, model: str | None = None) -> torch.nn.Module | None:
    """The network a quality benchmark restores with: a tiny random UNet for a smoke run,
    the prior at ``model``, or None (``restore`` loads the shipped prior)."""
    if smoke:
        torch.manual_seed(0)
        return UNet(SMOKE_UNET).eval()
    if model:
        from pkl_dg.diffusion.model_io import load_model

        return load_model(model)[0]
    return None


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values
