"""``pkl-dg bench {speed,quality,report}``: run the benchmarks and write BENCHMARKS.md.

Regenerate everything (from the repository root)::

    pkl-dg bench speed --json benchmarks/speed.json
    pkl-dg bench quality --json benchmarks/quality.json
    pkl-dg bench report --quality benchmarks/quality.json --speed benchmarks/speed.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

from pkl_dg.bench.common import parse_int_list
from pkl_dg.cli import add_threads_argument


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def strict_json(value):
    """Standard JSON has no inf/NaN: they become null (an FRC of null means ∞: unresolved)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _write_json(path: str, data: dict) -> None:
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise ValueError(f"folder {out.parent} does not exist: create it or choose another "
                         "--json path")
    prog = Path(sys.argv[0])  # `pkl-dg …` or `python -m pkl_dg.cli …`
    by_cli = prog.name == "pkl-dg" or prog.parts[-3:] == ("pkl_dg", "cli", "__main__.py")
    data["command"] = "pkl-dg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if by_cli else None
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(strict_json(data), indent=1, allow_nan=False) + "\n",
                   encoding="utf-8")
    tmp.replace(out)
    _log(f"wrote {out}")


def _speed(args: argparse.Namespace) -> int:
    from pkl_dg.bench.speed import SMOKE, run_speed

    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {args.repeats}")
    sizes = parse_int_list(args.sizes, "--sizes") if args.sizes else (
        SMOKE["sizes"] if args.smoke else [256, 512, 1024, 2048])
    if min(sizes) < 32:
        raise ValueError(f"sizes must be at least 32 pixels (the PSF must fit), got {sizes}")
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    if args.parts == "rl":
        return _speed_rl_only(args, repeats)
    result = run_speed(sizes, repeats, args.smoke, args.model, args.e2e_max,
                       stack=_stack_arg(args.stack), realdata=args.realdata, log=_log,
                       once_max=args.once_max)
    result["note"] = args.note
    result["rl"] = _rl_part(args, repeats)
    _write_json(args.json, result)
    return 0


def _rl_part(args: argparse.Namespace, repeats: int) -> dict:
    from pkl_dg.bench.speed_rl import run_rl_part

    sizes = parse_int_list(args.rl_sizes, "--rl-sizes") if args.rl_sizes else (
        [32, 48] if args.smoke else [512, 2048, 4096])
    iterations = args.rl_iterations or (3 if args.smoke else 10)
    part = run_rl_part(sizes, iterations, repeats, args.realdata, args.smoke, log=_log)
    part["note"] = args.note
    part["command"] = "pkl-dg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return part


def _existing_results(path: str, kind: str, missing: str) -> dict:
    """The results JSON at ``path``, which must exist (else ``missing`` says what to run) and
    hold results of ``kind``; raises ``ValueError`` otherwise."""
    out = Path(path)
    if not out.is_file():
        raise ValueError(f"{out} does not exist: {missing}")
    data = json.loads(out.read_text(encoding="utf-8"))
    if data.get("kind") != kind:
        raise ValueError(f"{out} holds {data.get('kind')!r} results, not {kind} results")
    return data


def _stack_arg(text: str) -> tuple[int, int] | None:
    """``--stack PLANES,SIDE`` (or 'none')."""
    if text.strip().lower() == "none":
        return None
    values = parse_int_list(text, "--stack")
    if len(values) != 2 or values[1] < 32:
        raise ValueError(f"--stack takes PLANES,SIDE (side ≥ 32; e.g. 32,512) or 'none', "
                         f"got {text!r}")
    return values[0], values[1]


def _speed_rl_only(args: argparse.Namespace, repeats: int) -> int:
    """--parts rl: rerun only the Richardson–Lucy part and replace it in an existing JSON."""
    out = Path(args.json)
    data = _existing_results(args.json, "speed", "--parts rl replaces the 'rl' part of an "
                             "existing speed JSON: run the full `pkl-dg bench speed` first")
    data["rl"] = _rl_part(args, repeats)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(strict_json(data), indent=1, allow_nan=False) + "\n",
                   encoding="utf-8")
    tmp.replace(out)
    _log(f"updated the rl part of {out}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from pkl_dg.bench.quality import run_quality

    if args.section == "settings":
        return _settings_grid(args)
    if args.section == "real":
        from pkl_dg.bench.realdata import run_realdata_bench

        result = run_realdata_bench(args.realdata, smoke=args.smoke, model=args.model, log=_log)
        result["note"] = args.note
        _write_json(args.json, result)
        return 0

    photons = parse_int_list(args.photons, "--photons") if args.photons else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    result = run_quality(realdata=args.realdata, smoke=args.smoke, photons=photons,
                         seeds=args.seeds, methods=methods, model=args.model,
                         reduced=args.reduced, log=_log)
    result["note"] = args.note
    _write_json(args.json, result)
    return 0


def _settings_grid(args: argparse.Namespace) -> int:
    """Add the steps × samples grid to an existing real-data JSON (``--json``)."""
    from pkl_dg.bench.common import now_iso, quality_denoiser
    from pkl_dg.bench.quality import default_realdata
    from pkl_dg.bench.settings_grid import run_settings_grid

    data = _existing_results(args.json, "realdata", "run `pkl-dg bench quality --section "
                             f"real --json {args.json}` first (the grid is stored beside the "
                             "real section)")
    root = Path(args.realdata) if args.realdata else default_realdata()
    t0 = time.perf_counter()
    part = run_settings_grid(root, smoke=args.smoke,
                             denoiser=quality_denoiser(args.smoke, args.model), log=_log)
    data["settings_grid"] = {**part, "created": now_iso(), "note": args.note,
                             "wall_s": time.perf_counter() - t0}
    _write_json(args.json, data)
    return 0


def _batch(args: argparse.Namespace) -> int:
    from pkl_dg.bench.batch import run_batch_bench

    workers = parse_int_list(args.workers, "--workers")
    result = run_batch_bench(size=args.size, images=args.images, workers=workers,
                             method=args.method, steps=args.steps, samples=args.samples,
                             threads=args.threads or 1, smoke=args.smoke, log=_log)
    result["note"] = args.note
    _write_json(args.json, result)
    return 0


def _load(args: argparse.Namespace) -> int:
    from pkl_dg.bench.load import run_load

    if args.repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {args.repeats}")
    only = [c.strip() for c in args.cases.split(",")] if args.cases else None
    result = run_load(threads=args.threads or 0, repeats=args.repeats, smoke=args.smoke,
                      log=_log, only=only)
    result["note"] = args.note
    for r in result["rows"]:
        r["note"], r["threads_requested"] = args.note, args.threads or 0
    if only and Path(args.json).is_file():  # replace those rows (case, threads), keep others
        old = json.loads(Path(args.json).read_text(encoding="utf-8"))
        if old.get("kind") != "load":
            raise ValueError(f"{args.json} holds {old.get('kind')!r} results, not load ones")
        new_keys = {(r["case"], r["threads"]) for r in result["rows"]}
        kept = [r for r in old["rows"] if (r["case"], r["threads"]) not in new_keys]
        for r in kept:
            r.setdefault("repeats", old.get("repeats", 1))
            r.setdefault("created", old.get("created"))
            r.setdefault("note", old.get("note"))
        result["rows"] = kept + result["rows"]
        result["note"] = None  # each row keeps its own
    _write_json(args.json, result)
    return 0


def _gpu(args: argparse.Namespace) -> int:
    from pkl_dg.bench.gpu import run_gpu

    if args.repeats < 0:
        raise ValueError(f"--repeats must be ≥ 0, got {args.repeats}")
    sizes = parse_int_list(args.sizes, "--sizes") if args.sizes else (
        [32, 48] if args.smoke else [512, 1024, 2048, 4096])
    if min(sizes) < 32:
        raise ValueError(f"sizes must be at least 32 pixels (the PSF must fit), got {sizes}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("bf16", "fp32")]
    if bad or not precisions:
        raise ValueError(f"--precisions takes bf16 and/or fp32, got {args.precisions!r}")
    stack = _stack_arg(args.stack if args.stack is not None else ("18,32" if args.smoke
                                                                   else "32,512"))
    def save(result: dict) -> None:
        _write_json(args.json, {**result, "note": args.note})

    run_gpu(sizes, precisions, stack, args.repeats, args.smoke, args.model,
            device_name=args.device, log=_log, save=save)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pkl_dg.bench.report import write_report

    out = write_report(quality_path=args.quality, speed_path=args.speed, out=args.out,
                       plot=args.plot, batch_path=args.batch, load_path=args.load,
                       realdata_path=args.realdata, gpu_path=args.gpu)
    _log(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run the speed / quality benchmarks, write "
                              "BENCHMARKS.md", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench_command", metavar="{speed,quality,batch,load,gpu,report}")
    sub.required = True

    s = sub.add_parser("speed", help="time the network, guided steps, physics, RL, restore")
    s.add_argument("--json", required=True, help="output JSON file")
    s.add_argument("--sizes", default=None, help="comma-separated square sizes "
                   "(default 256,512,1024,2048; smoke 32,48)")
    s.add_argument("--repeats", type=int, default=None, help="repeats per figure; medians "
                   "are reported (default 3; smoke 1)")
    s.add_argument("--e2e-max", type=int, default=1024, help="largest size restored end to "
                   "end, --repeats times (default 1024)")
    s.add_argument("--once-max", type=int, default=4096, help="larger sizes up to this one "
                   "are restored once to the end, in the process that measures their peak "
                   "memory (4096²: about 6 min on 2 CPU cores); larger still are estimated "
                   "from their first frames (default 4096; 0: estimate all above --e2e-max)")
    s.add_argument("--stack", default="32,512", help="the 3D row: PLANES,SIDE of a test stack "
                   "restored to the end in 3D mode; 'none' leaves it out (default 32,512; "
                   "smoke 18,32)")
    s.add_argument("--model", default=None, help="time this prior instead of the shipped one")
    s.add_argument("--smoke", action="store_true", help="tiny sizes, few steps, tiny random "
                   "network (for tests)")
    s.add_argument("--parts", choices=("all", "rl"), default="all", help="'rl': rerun only "
                   "the Richardson–Lucy tables (ours vs the FFT floor and the peers; time to "
                   "the best result on the BioSR pair) and replace them in the existing --json")
    s.add_argument("--rl-sizes", default=None, help="sizes of the RL table (default "
                   "512,2048,4096; smoke 32,48)")
    s.add_argument("--rl-iterations", type=int, default=None, help="least RL iterations per "
                   "timed run (default 10; smoke 3); a size where they would take under "
                   "0.25 s runs more, up to 100")
    s.add_argument("--realdata", default=None, help="folder of the public test data for the "
                   "real-image rows and the time-to-best table (default: ../shared/realdata "
                   "beside the repository)")
    add_threads_argument(s)
    s.add_argument("--note", default=None, help="free text stored with the results (e.g. "
                   "other load on the machine)")
    s.set_defaults(func=_speed)

    q = sub.add_parser("quality", help="PSNR/SSIM/FRC of every method on synthetic and "
                       "real data")
    q.add_argument("--json", required=True, help="output JSON file")
    q.add_argument("--photons", default=None, help="peak photon levels "
                   "(default 10,30,100,1000)")
    q.add_argument("--seeds", type=int, default=None, help="noise seeds per case (default 3)")
    q.add_argument("--methods", default=None, help="subset of widefield,rl_best,rl30,l2,"
                   "anscombe,pkl,none (default all)")
    q.add_argument("--model", default=None, help="evaluate this prior instead of the shipped one")
    q.add_argument("--realdata", default=None, help="folder of the public test data "
                   "(default: ../shared/realdata beside the repository)")
    q.add_argument("--reduced", action="store_true", help="fewer crops and seeds (for a "
                   "time-limited run; stated in the report)")
    q.add_argument("--smoke", action="store_true", help="one tiny crop, one photon level, "
                   "few steps, tiny random network (for tests)")
    add_threads_argument(q)
    q.add_argument("--note", default=None, help="free text stored with the results")
    q.add_argument("--section", choices=("synthetic", "real", "settings"),
                   default="synthetic",
                   help="'synthetic' (default): known objects blurred and noised here, every "
                        "method; 'real': the real-data dev set given as a user would (no "
                        "calibration), RL auto / RL 30 / RL oracle / PKL, to "
                        "benchmarks/realdata.json; 'settings': PKL at a grid of steps × "
                        "samples on part of that set, added to the --json real-data file")
    q.set_defaults(func=_quality)

    b = sub.add_parser("batch", help="images/min of pkl-dg batch with 1, 2, … workers")
    b.add_argument("--json", required=True, help="output JSON file")
    b.add_argument("--size", type=int, default=512, help="image side (default 512)")
    b.add_argument("--images", type=int, default=20, help="images per batch (default 20)")
    b.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    b.add_argument("--method", default="pkl", help="restoration method (default pkl)")
    b.add_argument("--steps", type=int, default=15, help="diffusion steps (default 15)")
    b.add_argument("--samples", type=int, default=1, help="posterior samples (default 1)")
    b.add_argument("--smoke", action="store_true", help="two tiny RL images, one worker "
                   "(for tests)")
    add_threads_argument(b)  # torch threads per worker (default 1)
    b.add_argument("--note", default=None, help="free text stored with the results (e.g. "
                   "other load on the machine)")
    b.set_defaults(func=_batch)

    ld = sub.add_parser("load", help="restore time idle and beside one busy process "
                        "(default PKL at 512², RL at 2048²)")
    ld.add_argument("--json", required=True, help="output JSON file")
    ld.add_argument("--repeats", type=int, default=1, help="runs per condition; the median "
                    "is reported (default 1)")
    ld.add_argument("--smoke", action="store_true", help="tiny images and network (tests)")
    ld.add_argument("--cases", default=None, help="comma-separated cases to run (pkl, rl; "
                    "default both); with an existing --json their rows are replaced")
    add_threads_argument(ld)
    ld.add_argument("--note", default=None, help="free text stored with the results")
    ld.set_defaults(func=_load)

    g = sub.add_parser("gpu", help="restore end to end on a CUDA GPU: 512²–4096², bf16 and "
                       "fp32, and a 3D stack")
    g.add_argument("--json", required=True, help="output JSON file")
    g.add_argument("--sizes", default=None, help="comma-separated square sizes (default "
                   "512,1024,2048,4096; smoke 32,48)")
    g.add_argument("--precisions", default="bf16,fp32", help="network precisions of the PKL "
                   "rows (default bf16,fp32)")
    g.add_argument("--stack", default=None, help="the 3D row: PLANES,SIDE, or 'none' "
                   "(default 32,512; smoke 18,32)")
    g.add_argument("--repeats", type=int, default=3, help="timed runs after the cold one; "
                   "medians are reported (default 3)")
    g.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda (default); "
                   "cpu only to test the benchmark itself")
    g.add_argument("--model", default=None, help="time this prior instead of the shipped one")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps × 2 samples, "
                   "tiny random network (for tests)")
    g.add_argument("--note", default=None, help="free text stored with the results")
    g.set_defaults(func=_gpu)

    r = sub.add_parser("report", help="regenerate BENCHMARKS.md and the plot from the JSON")
    r.add_argument("--quality", required=True, help="quality JSON")
    r.add_argument("--speed", required=True, help="speed JSON")
    r.add_argument("--batch", default=None, help="batch JSON (optional: adds the batch "
                   "throughput section)")
    r.add_argument("--load", default=None, help="load JSON (optional: adds the under-load "
                   "section)")
    r.add_argument("--realdata", default=None, help="real-data JSON (from bench quality "
                   "--section real), rendered as its own section")
    r.add_argument("--gpu", default=None, help="GPU JSON (from bench gpu), rendered as its "
                   "own section")
    r.add_argument("--out", default="BENCHMARKS.md", help="markdown file (default "
                   "BENCHMARKS.md)")
    r.add_argument("--plot", default="benchmarks/quality_psnr.png", help="PSNR-vs-photons "
                   "PNG (default benchmarks/quality_psnr.png)")
    r.set_defaults(func=_report)
