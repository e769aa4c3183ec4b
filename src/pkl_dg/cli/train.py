"""``pkl-dg train``: train a diffusion prior on procedural phantoms and/or your own images."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    from pkl_dg.cli import add_threads_argument

    p = subparsers.add_parser(
        "train",
        help="train a diffusion prior (procedural phantoms and/or your own sharp images)",
        description=(
            "Train the UNet noise predictor used as the diffusion prior. Without --data it "
            "learns from procedural fluorescence-like phantoms (filaments, puncta, membranes, "
            "nuclei). With --data DIR it learns from random patches of the sharp images in "
            "DIR, mixed with phantoms (--real-fraction). Writes OUT/model.safetensors + "
            "OUT/model.json (EMA weights, usable with `pkl-dg restore --model OUT`) and a "
            "resumable checkpoint in OUT/checkpoint every --checkpoint-minutes."),
    )
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--data", default=None,
                   help="folder of sharp images to train on (searched recursively: TIFF, PNG, npy; 8/16-bit, "
                        "float; RGB/colour-LUT images reduced to one channel). Whole files are held out for "
                        "validation (--val-fraction); the split is written to OUT/split.json")
    frac = p.add_mutually_exclusive_group()
    frac.add_argument("--procedural-fraction", type=float, default=None,
                      help="fraction of patches drawn from phantoms when --data is given (default 0.25)")
    frac.add_argument("--real-fraction", type=float, default=None,
                      help="fraction of patches drawn from --data (the rest are phantoms); default 0.75")
    p.add_argument("--zoom", default="0.5,2", metavar="MIN,MAX",
                   help="real patches are resampled by a log-uniform factor in [MIN, MAX] to cover a range of "
                        "pixel sizes (default 0.5,2: half to twice the native sampling)")
    p.add_argument("--max-saturated", type=float, default=0.01,
                   help="skip real patches with more than this fraction of saturated pixels (default 0.01)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the files of each source folder (with ≥ 3 files) held out (default 0.2)")
    p.add_argument("--steps", type=int, default=10000, help="total optimisation steps (default 10000)")
    p.add_argument("--batch", type=int, default=16, help="patches per step (default 16)")
    p.add_argument("--patch", type=int, default=128, help="patch size in px, multiple of 16 (default 128)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="constant (after a 200-step warm-up), or cosine: decay to 0 at --steps, "
                        "starting where this run (or the resumed run's decay) starts")
    p.add_argument("--width", type=int, default=32, help="UNet base channels, multiple of 8 (default 32)")
    p.add_argument("--channel-mult", default="1,2,2,4",
                   help="channel multipliers per level, comma separated (default 1,2,2,4)")
    p.add_argument("--blocks", type=int, default=1, help="residual blocks per level (default 1)")
    p.add_argument("--attention", action="store_true", help="self-attention at the coarsest level")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast where the device supports it")
    p.add_argument("--init", default=None, metavar="MODEL_DIR",
                   help="start from the weights (and architecture) of a saved model, e.g. "
                        "src/pkl_dg/weights, with a fresh optimiser: fine-tuning")
    p.add_argument("--phantom-mix", default=None, metavar="KIND:W,...",
                   help="procedural structure kinds and their weights (default: "
                        "microtubules, actin, puncta, cells, mixed and large smooth blobs)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the checkpoint of an earlier run (its --out directory)")
    add_threads_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_mult(text: str) -> tuple[int, ...]:
    try:
        mult = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--channel-mult must be comma-separated integers like 1,2,2,4, got {text!r}") from None
    if not mult or min(mult) < 1:
        raise ValueError(f"--channel-mult must be positive integers, got {text!r}")
    return mult


def _parse_zoom(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--zoom must be MIN,MAX like 0.5,2, got {text!r}") from None
    return lo, hi


def run(args: argparse.Namespace) -> int:
    import torch

    from pkl_dg.training.train import TrainConfig, train

    if args.init and args.resume:
        raise ValueError("--init starts a new run from a model; --resume continues a checkpoint: give one")

    zoom = _parse_zoom(args.zoom)
    cfg = TrainConfig(
        out=args.out, data=args.data, steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
        lr_schedule=args.lr_schedule,
        width=args.width, channel_mult=_parse_mult(args.channel_mult), num_res_blocks=args.blocks,
        attention=args.attention, device=args.device, precision=args.precision, seed=args.seed,
        ema_decay=args.ema_decay, checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every,
        procedural_fraction=(1.0 - args.real_fraction if args.real_fraction is not None
                             else args.procedural_fraction), init=args.init,
        zoom_min=zoom[0], zoom_max=zoom[1], max_saturated=args.max_saturated, val_fraction=args.val_fraction,
        **({"phantom_mix": args.phantom_mix} if args.phantom_mix else {}),
        command=("pkl-dg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
                 if sys.argv and sys.argv[0].endswith("pkl-dg") else ""),
    )
    summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"trained {summary['step']} steps, loss {summary['loss']:.4f}, "
          f"{summary['elapsed_s'] / 60:.1f} min; model written to {summary['out']}")
    return 0
