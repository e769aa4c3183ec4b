"""``pkl-dg train``: train a diffusion prior on procedural phantoms and/or your own images.

Its flags are generated from :class:`pkl_dg.training.config.TrainConfig` (default, help,
choices of each field), so the CLI never restates the config's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pkl_dg.training.config import TrainConfig

_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "float | None": float}


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
    add_config_arguments(p)
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the checkpoint of an earlier run (its --out directory)")
    add_threads_argument(p)
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


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pkl_dg.training.config.TrainConfig` field with help (its
    default, help and choices), plus ``--zoom MIN,MAX`` for ``zoom_min``/``zoom_max`` and
    ``--real-fraction`` as the other side of ``--procedural-fraction``."""
    from pkl_dg.training.config import DATA_PROCEDURAL_FRACTION, TrainConfig, cli_fields, flag_of

    frac = parser.add_mutually_exclusive_group()
    for f in cli_fields():
        meta, default = f.metadata, f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        elif isinstance(default, bool):
            kwargs.update(action="store_true", default=default)
        else:  # a tuple is given as comma-separated text (parsed by config_from_args)
            kwargs.update(default=shown, choices=meta["choices"], metavar=meta["metavar"],
                          type=str if isinstance(default, tuple) else _TYPES[f.type])
            if default is not None:
                kwargs["help"] += f" (default {shown})"
        flag = flag_of(f)
        if "type" in kwargs and not meta["choices"]:
            kwargs["metavar"] = meta["metavar"] or flag.removeprefix("--").replace("-", "_").upper()
        (frac if f.name == "procedural_fraction" else parser).add_argument(flag, **kwargs)
    frac.add_argument("--real-fraction", type=float, default=None,
                      help="fraction of patches drawn from --data (the rest are phantoms); "
                           f"default {1 - DATA_PROCEDURAL_FRACTION:g}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    zoom = defaults["zoom_min"], defaults["zoom_max"]
    parser.add_argument("--zoom", default=f"{zoom[0]:g},{zoom[1]:g}", metavar="MIN,MAX",
                        help="real patches are resampled by a log-uniform factor in [MIN, MAX] "
                             "to cover a range of pixel sizes (default "
                             f"{zoom[0]:g},{zoom[1]:g}: from {zoom[0]:g} to {zoom[1]:g} times "
                             "the native sampling)")


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    """The :class:`~pkl_dg.training.config.TrainConfig` of parsed ``pkl-dg train`` flags."""
    from pkl_dg.training.config import TrainConfig, cli_fields

    values = {f.name: _parse_mult(getattr(args, f.name)) if isinstance(f.default, tuple)
              else getattr(args, f.name) for f in cli_fields()}
    if args.real_fraction is not None:
        values["procedural_fraction"] = 1.0 - args.real_fraction
    values["zoom_min"], values["zoom_max"] = _parse_zoom(args.zoom)
    command = ("pkl-dg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
               if sys.argv and sys.argv[0].endswith("pkl-dg") else "")
    return TrainConfig(**values, command=command)


def run(args: argparse.Namespace) -> int:
    from pkl_dg.training.train import train

    if args.init and args.resume:
        raise ValueError("--init starts a new run from a model; --resume continues a checkpoint: give one")
    summary = train(config_from_args(args), resume=args.resume, progress=not args.no_progress)
    print(f"trained {summary['step']} steps, loss {summary['loss']:.4f}, "
          f"{summary['elapsed_s'] / 60:.1f} min; model written to {summary['out']}")
    return 0
