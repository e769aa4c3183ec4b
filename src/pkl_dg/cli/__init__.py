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
import warnings

# module paths of subcommands, in the order shown in --help
_SUBCOMMANDS = (
    "pkl_dg.cli.restore",
    "pkl_dg.cli.batch",
    "pkl_dg.cli.compare",
    "pkl_dg.cli.demo",
    "pkl_dg.cli.train",
    "pkl_dg.cli.bench",
)


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for this command, the settings' ``threads`` field
    (its help and default; see :mod:`pkl_dg.threads`)."""
    from pkl_dg.settings import field_specs

    spec = next(s for s in field_specs() if s.name == "threads")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"{spec.help} (default: {spec.default}, automatic)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` (or the settings' default) before the
    command runs."""
    from pkl_dg.settings import RestoreSettings
    from pkl_dg.threads import apply_threads as apply

    threads = getattr(args, "threads", None)
    apply(RestoreSettings().threads if threads is None else threads)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its errors said in one line with a pointer to ``--help``: the
    usage of a command with many flags (restore's runs to 20 lines) buried the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists its "
                     "options)\n")


def build_parser() -> argparse.ArgumentParser:
    from pkl_dg._version import __version__

    parser = _Parser(
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
    shown, formatted = warnings.showwarning, warnings.formatwarning
    # a warning reads as the command's own line, as its errors and notes do, not as Python's
    # "path/to/module.py:66: CategoryWarning: … <source line>"
    warnings.formatwarning = lambda message, category, *_args, **_kw: (
        f"pkl-dg {args.command}: warning: {message}\n")
    if _warnings_printed():  # through tqdm, which clears a progress bar and draws it again
        # below (a warning given mid-run was glued to the bar)
        warnings.showwarning = lambda message, *_a, **_k: _say_warning(args.command, message)
    try:
        apply_threads(args)
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"pkl-dg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pkl-dg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning, warnings.formatwarning = shown, formatted


def _warnings_printed() -> bool:
    """Whether warnings are printed as Python prints them, not recorded by a caller
    (``warnings.catch_warnings(record=True)``, pytest), whose record must stay whole."""
    return (warnings.showwarning is getattr(warnings, "_showwarning_orig", None)
            and getattr(warnings._showwarnmsg_impl, "__module__", "") == "warnings")


def _say_warning(command: str, message: Warning | str) -> None:
    from tqdm import tqdm

    tqdm.write(f"pkl-dg {command}: warning: {message}", file=sys.stderr)


