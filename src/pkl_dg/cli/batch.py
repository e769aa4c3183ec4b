"""``pkl-dg batch``: restore many files, time-lapses and large planes on Dask.

Takes every flag of ``pkl-dg restore`` (the same settings schema), plus where to compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pkl_dg.cli.restore import add_settings_arguments, report_not_applied, settings_from_args


def register(subparsers) -> None:
    from pkl_dg.cli import add_threads_argument

    p = subparsers.add_parser(
        "batch", help="restore many files / time points / large planes on a Dask cluster",
        description="Restore every input (files, folders, glob patterns; TIFF, OME-TIFF, "
                    "OME-Zarr, .npy, and formats of installed bioio plugins) into OUTDIR: "
                    "one NAME.ome.tif or NAME.ome.zarr per input, float32 photons with the "
                    "input's axes and pixel size and all parameters as metadata. Runs on a "
                    "local Dask cluster (one worker per core) or on the cluster at "
                    "--scheduler. A rerun skips outputs that are complete and redoes "
                    "unfinished ones, reusing the blocks and chunks an interrupted run "
                    "finished with the same settings; an input that fails is reported (its traceback in "
                    "OUTDIR/<output>.failed.log, removed once it is restored or, with a note, "
                    "deleted) and the others go on (exit code 1 if any failed); a setting "
                    "that would fail every input (an unreadable PSF file, a too small "
                    "--chunk) stops the run before it starts (exit code 2).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns")
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUTDIR",
                   help="folder for the outputs (created if missing)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786, or "
                        "one started by dask-jobqueue); default: a local cluster, without "
                        "Dask's dashboard (for one, start `dask scheduler` and `dask worker` "
                        "yourself, with bokeh installed, and pass its address)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster (default: one per core)")
    p.add_argument("--chunk", type=int, default=1024, metavar="PX",
                   help="planes larger than this are restored in overlapping chunks of this "
                        "side, blended (2D mode; 0 = never cut; default 1024)")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=("auto", "ome-tiff", "ome-zarr"),
                   help="output format (auto: OME-Zarr for Zarr inputs, else OME-TIFF)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute outputs that are already complete")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pkl_dg.batch import run_batch, summary_table
    from pkl_dg.settings import field_specs

    settings = settings_from_args(args)
    report_not_applied(args, settings)
    given = {s.name for s in field_specs() if getattr(args, s.name, None) is not None}
    if args.chunk < 0:
        raise ValueError(f"--chunk must be ≥ 0, got {args.chunk}")
    if args.workers is not None and args.workers < 1:  # 0 silently meant one per core
        raise ValueError(f"--workers must be ≥ 1, got {args.workers} (leave it out for one "
                         "worker per core)")
    jobs = run_batch(args.inputs, args.output_dir, settings, given=given, fmt=args.fmt,
                     chunk=args.chunk, overwrite=args.overwrite, scheduler=args.scheduler,
                     workers=args.workers, threads=args.threads, progress=not args.quiet)
    print(summary_table(jobs), file=sys.stderr)
    return 1 if any(j.status == "failed" for j in jobs) else 0
