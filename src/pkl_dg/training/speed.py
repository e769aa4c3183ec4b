"""Forward-time benchmark of UNet priors (the speed table of the model card).

Run: ``python -m pkl_dg.training.speed [--model DIR] [--widths 32,48] [--sizes 256,512]``.
With ``--model`` the saved prior is timed; otherwise randomly initialised UNets of the
given widths (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from pkl_dg.diffusion.unet import UNet, UNetConfig, count_parameters


def time_forward(model: torch.nn.Module, size: int, bf16: bool, repeats: int = 5) -> float:
    """Median wall time (ms) of one forward pass on a 1×1×size×size input."""
    x = torch.randn(1, 1, size, size)
    t = torch.tensor([500])
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x, t)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
            f32 = time_forward(m, s, False, a.repeats)
            b16 = time_forward(m, s, True, a.repeats)
            print(f"| {m.config.width} | {count_parameters(m) / 1e6:.2f} M | {s}² | {f32:.0f} | {b16:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
