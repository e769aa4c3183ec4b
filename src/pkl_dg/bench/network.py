"""Timing the network: one forward timer for the speed benchmark and the model card's table.

:func:`forward_ms` is the median wall time of one forward pass of a denoiser on a
1×1×n×n input at timestep 500, in fp32 or under bf16 autocast (CPU). :func:`network_timing`
adds its FLOPs (``FlopCounterMode``) and the GFLOP/s achieved against this machine's
matmul (:func:`matmul_gflops`); :class:`TimedNetwork` measures the network's share inside a
restoration.

Run as a script for the speed table of the model card (``src/pkl_dg/weights/README.md``)::

    python -m pkl_dg.bench.network [--model DIR] [--widths 32,48] [--sizes 256,512]

With ``--model`` the saved prior is timed; otherwise randomly initialised UNets of the
given widths (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from pkl_dg.bench.common import median_ms

PRECISIONS = ("fp32", "bf16")


def _input(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(0)), torch.tensor([500])


def forward_ms(net: torch.nn.Module, n: int, precision: str, repeats: int) -> float:
    """Median wall time of one forward pass on a 1×1×n×n input, in ms.

    Parameters
    ----------
    net : torch.nn.Module
        The denoiser, called as ``net(x, t)``.
    n : int
        Image side in pixels.
    precision : str
        ``"fp32"``, or ``"bf16"``: under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    repeats : int
        Timed calls (after one warm-up call); the median is returned.

    Returns
    -------
    float
        Milliseconds.

    Raises
    ------
    ValueError
        An unknown precision, or ``repeats`` < 1.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x, t = _input(n)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return net(x, t)

    with torch.inference_mode():
        ms, _ = median_ms(forward, repeats)
    return ms


def matmul_gflops(n: int, repeats: int) -> dict:
    """Measured n×n matmul throughput in fp32 and bf16 (GFLOP/s; median of ≥ 3 calls).

    Parameters
    ----------
    n : int
        Side of the square matrices.
    repeats : int
        Timed calls (at least 3 are made).

    Returns
    -------
    dict
        ``size``, ``fp32_gflops``, ``bf16_gflops``.
    """
    out = {"size": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        with torch.inference_mode():
            ms, _ = median_ms(lambda: a @ b, max(repeats, 3))
        out[f"{name}_gflops"] = 2 * n ** 3 / (ms / 1e3) / 1e9
    return out


def network_timing(net: torch.nn.Module, n: int, repeats: int, matmul: dict) -> dict:
    """Forward ms, FLOPs, GFLOP/s and fraction of matmul throughput, fp32 and bf16.

    Parameters
    ----------
    net : torch.nn.Module
        The denoiser.
    n : int
        Image side in pixels.
    repeats : int
        Timed forward passes per precision.
    matmul : dict
        :func:`matmul_gflops` of this machine.

    Returns
    -------
    dict
        ``flops`` and, per precision, ``ms``, ``gflops``, ``fraction_of_matmul``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x, t = _input(n)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x, t)
    flops = counter.get_total_flops()
    out: dict = {"ms": {}, "gflops": {}, "fraction_of_matmul": {}, "flops": int(flops)}
    for name in PRECISIONS:
        ms = forward_ms(net, n, name, repeats)
        out["ms"][name] = ms
        out["gflops"][name] = flops / (ms / 1e3) / 1e9
        out["fraction_of_matmul"][name] = out["gflops"][name] / matmul[f"{name}_gflops"]
    return out


class TimedNetwork(torch.nn.Module):
    """Wraps a denoiser and accumulates the wall time spent in it (``seconds``): the time
    during which at least one call runs (a restoration calls it from two threads at once,
    :func:`pkl_dg.threads.in_two`, and overlapping calls count once)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds = 0.0
        self._lock, self._running, self._since = threading.Lock(), 0, 0.0

    def forward(self, x, t):
        with self._lock:
            if not self._running:
                self._since = time.perf_counter()
            self._running += 1
        try:
            return self.net(x, t)
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self.seconds += time.perf_counter() - self._since


def main(argv: list[str] | None = None) -> int:
    """The model card's speed table (markdown on stdout); returns the exit code."""
    from pkl_dg.diffusion.unet import UNet, UNetConfig, count_parameters

    p = argparse.ArgumentParser(description="Forward-time benchmark of UNet priors (the speed "
                                            "table of the model card)")
    p.add_argument("--model", default=None)
    p.add_argument("--widths", default="32")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.model is not None:
        from pkl_dg.diffusion.model_io import load_model

        models = [load_model(a.model or None)[0]]
    else:
        models = [UNet(UNetConfig(width=int(w))).eval() for w in a.widths.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| width | params | size | fp32 ms | bf16 ms |")
    print("|---|---|---|---|---|")
    for m in models:
        for s in (int(v) for v in a.sizes.split(",")):
            f32, b16 = (forward_ms(m, s, prec, a.repeats) for prec in PRECISIONS)
            print(f"| {m.config.width} | {count_parameters(m) / 1e6:.2f} M | {s}² | {f32:.0f} | "
                  f"{b16:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
