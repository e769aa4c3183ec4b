"""``pkl-dg compare``: run several methods on one image; metrics table and side-by-side PNG."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from pkl_dg.cli import add_threads_argument
from pkl_dg.cli.restore import add_settings_arguments, flag_for, given_settings, settings_from_args
from pkl_dg.settings import IMAGE_FIELDS, RestoreSettings, field_specs
from pkl_dg.settings_rules import applies, applies_text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare methods on one 2D image (CSV table, PNG panel)",
        description="Restore one image with several methods (same settings and seed); "
                    "score them against a ground truth when given; write a CSV table and "
                    "a labelled side-by-side PNG.")
    p.add_argument("input", type=Path, help="input image, 2D (TIFF, OME-TIFF, .npy, or any "
                   "format a bioio plugin reads)")
    p.add_argument("--gt", type=Path, help="ground-truth image for PSNR/SSIM/NRMSE/FRC")
    p.add_argument("--methods", default="rl,l2,anscombe,pkl",
                   help="comma-separated methods (rl, l2, anscombe, pkl, none)")
    p.add_argument("--csv", type=Path, help="write the metrics table here")
    p.add_argument("--png", type=Path, help="write the side-by-side figure here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true",
                   help="no per-method lines (time, scores); warnings and errors still print")
    add_settings_arguments(p)
    add_threads_argument(p)
    p.set_defaults(func=run)


def report_not_applied(args: argparse.Namespace, settings: RestoreSettings,
                       methods: list[str]) -> list[str]:
    """Warn (stderr) about every flag given that has no effect on the comparison.

    A setting has an effect when it applies (:func:`pkl_dg.settings.applies`) to at least
    one of the compared methods; ``--method`` never has one (``--methods`` chooses them).

    Parameters
    ----------
    args
        The parsed ``pkl-dg compare`` flags.
    settings
        The settings every method runs with (its ``method`` replaced by each of ``methods``).
    methods
        The compared methods.

    Returns
    -------
    list of str
        The names of the settings reported, in schema order.
    """
    runs = [settings.replace(method=m) for m in methods]
    specs = {s.name: s for s in field_specs()}
    ignored = [n for n in given_settings(args) if n == "method" or (
        n not in IMAGE_FIELDS and not any(applies(n, r) for r in runs))]
    for name in ignored:
        if name == "method":
            why = f"--methods chooses the methods (here {', '.join(methods)})"
        else:
            keys = dict.fromkeys(k for alt in specs[name].applies_when for k in alt)
            here = ", ".join(f"{k} {'/'.join(dict.fromkeys(str(getattr(r, k)) for r in runs))}"
                             for k in keys)
            why = f"it applies with {applies_text(name)} (here {here})"
        print(f"pkl-dg compare: warning: {flag_for(name)} is ignored: {why}", file=sys.stderr)
    return ignored


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pkl_dg.cli.restore import check_not_inputs, check_output_folders
    from pkl_dg.compare import (compare_iter, csv_context, metrics_table, parse_methods,
                                render_panel, write_csv)
    from pkl_dg.imageio import read_image
    from pkl_dg.inputs import physical_overrides
    from pkl_dg.io import open_image
    from pkl_dg.psf_source import describe_psf
    from pkl_dg.settings import METHOD_LABELS

    if not (args.csv or args.png):
        raise ValueError("nothing to write: give --csv FILE and/or --png FILE")
    outputs = [p for p in (args.csv, args.png) if p is not None]
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise ValueError(f"--csv and --png name the same file {args.csv}: give two names")
    check_not_inputs(outputs, [p for p in (args.input, args.gt) if p is not None]
                     + ([Path(args.psf_path)] if args.psf_path else []))
    for out in (args.csv, args.png):
        if out is not None and out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    check_output_folders([p for p in (args.csv, args.png) if p is not None])
    if args.csv is not None and args.gt is None:
        raise ValueError("--csv needs --gt: metrics are computed against a ground truth")
    methods = parse_methods(args.methods)
    settings = settings_from_args(args)
    report_not_applied(args, settings, methods)
    source = open_image(args.input)
    image = source.numpy()
    if np.ndim(image) != 2:  # before any method runs (its scores and panel are 2D)
        raise ValueError(f"{args.input.name} is {' × '.join(map(str, np.shape(image)))} "
                         f"({source.axes}), and compare takes one 2D image: save one plane of "
                         "it, or restore the stack with pkl-dg restore")
    # the file's pixel size (an Airy PSF's width in pixels, FRC in nm), unless given
    given = set(given_settings(args))
    over = physical_overrides(source, given, settings)
    settings = settings.replace(**over)
    # the FRC in nm wherever the pixel size is known, not only for an Airy PSF
    px = settings.pixel_size_nm if "pixel_size_nm" in given | set(over) else None

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)
    gt = read_image(args.gt, "ground truth") if args.gt is not None else None
    if gt is not None and gt.shape != image.shape:
        raise ValueError(f"ground truth {gt.shape} and input {image.shape} differ in shape")
    comparison = compare_iter(image, methods, settings)
    # a method runs from the end of the one before to its own last frame (an automatic RL
    # count ends before its announced total, so "index == total" missed it)
    seconds: dict[str, float] = {}
    current, began = None, time.perf_counter()
    last = began
    for method, _rec in comparison:
        now = time.perf_counter()
        if method != current:
            if current is not None:
                say(f"{current}: done in {seconds[current]:.1f} s")
                began = last
            current = method
        seconds[method], last = now - began, now
    if current is not None:
        say(f"{current}: done in {seconds[current]:.1f} s")
    results = {m: r.image for m, r in comparison.result.results.items()}
    rows = None
    if gt is not None:
        rows = metrics_table(results, gt, px, seconds,
                             measurement=np.asarray(image, dtype=np.float32))
        for r in rows:
            say(f"{r['method']:>18}  {r['psnr_db']:6.2f} dB  SSIM {r['ssim']:.3f}  "
                f"FRC {frc_text(r)}")
        if rows and "scored_region" in rows[0]:
            say(f"scored on {rows[0]['scored_region']}")
        if args.csv:
            write_csv(rows, args.csv, csv_context(args.input.name, args.gt.name,
                                                  comparison.result.results))
    if args.png:
        panel = {"Input": np.asarray(image, dtype=np.float32)}
        panel.update({METHOD_LABELS[m]: v for m, v in results.items()})
        if gt is not None:
            panel["Ground truth"] = np.asarray(gt, dtype=np.float32)
        # every method ran with the same PSF
        info = next(iter(comparison.result.results.values())).metadata["psf"]
        render_panel(panel, args.png, rows,
                     title=f"{args.input.name} · {describe_psf(info)}")
    return 0


def frc_text(row: dict) -> str:
    """A metrics row's FRC resolution as the summary line says it: px, and nm where the
    pixel size is known; no crossing at all (``inf``) as words."""
    if not math.isfinite(row["frc_px"]):
        return "none (the images do not correlate at any spatial frequency)"
    nm = row.get("frc_nm")
    return f"{row['frc_px']:.2f} px" + (f" ({nm:.0f} nm)" if nm else "")
