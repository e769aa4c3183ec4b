"""Console entry point ``pkl-dg``.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module
registers its parser and sets ``func`` (taking the parsed namespace, returning an exit
code). Importing this module must not import napari or Qt: GUI subcommands import them
inside their ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module paths of subcommands, in the order shown in --help
_SUBCOMMANDS = (
    "pkl_dg.cli.restore",
    "pkl_dg.cli.compare",
    "pkl_dg.cli.demo",
    "pkl_dg.cli.train",
    "pkl_dg.cli.bench",
)


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU thread count for this command (see :func:`apply_threads`)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice, one per core); "
                             "use 1 when other jobs share the machine: competing threads can "
                             "make a run many times slower")


def apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    from pkl_dg._version import __version__

    parser = argparse.ArgumentParser(
        prog="pkl-dg",
        description="Physics-guided diffusion deconvolution of fluorescence microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_threads(args)
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"pkl-dg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pkl-dg {args.command}: interrupted", file=sys.stderr)
        return 130


